"""JSON API for scripts and PACS integration: ``POST /api/v1/predictions``."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, request, url_for

from device.analysis import analyse
from device.exc import InputError
from device.web import services
from device.web.auth import token_user

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _auth_and_limit() -> None:
    token_user(required=True)
    # One image per request: cap the body before Flask parses the multipart form.
    request.max_content_length = services().settings.max_upload_bytes + 64 * 1024


@bp.route("/predictions", methods=["POST"])
def predictions():
    start = time.perf_counter()
    if "image" not in request.files:
        raise InputError("multipart field 'image' is required")
    case = analyse(services(), request.files["image"].read(), "api")
    return jsonify({
        "case_id": case.id, "probability": round(case.probability, 6),
        "label": "tumour" if case.predicted_label else "no_tumour",
        "threshold": case.threshold, "uncertain": case.uncertain,
        "model_version": case.model_version,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "heatmap_url": url_for("cases.heatmap", case_id=case.id, _external=True),
    }), 201
