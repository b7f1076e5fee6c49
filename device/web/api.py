"""JSON API for scripts and PACS integration: ``POST /api/v1/predictions``."""
from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify, request, url_for

from device.exc import InputError
from device.federation import Federation, FederationStatus
from device.web import services
from device.web.auth import current_user, token_user

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _auth_and_limit() -> None:
    token_user(required=True)
    # One image per request: cap the body before Flask parses the multipart form.
    request.max_content_length = services().settings.max_upload_bytes + 64 * 1024


@bp.route("/predictions", methods=["POST"])
def predictions():
    start = time.perf_counter()
    images = request.files.getlist("image")
    if not images:
        raise InputError("multipart field 'image' is required")
    if len(images) > 1:  # scoring the first would silently drop the others
        raise InputError("one image per request: send each slice in its own request")
    case = services().analyser.analyse(images[0].read(), "api")
    return jsonify({
        "case_id": case.id, "probability": round(case.probability, 6),
        "label": "tumour" if case.predicted_label else "no_tumour",
        "threshold": case.threshold, "uncertain": case.uncertain,
        "model_version": case.model_version,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "heatmap_url": url_for("cases.heatmap", case_id=case.id, _external=True),
    }), 201


@bp.route("/cases/<case_id>/label", methods=["POST"])
def label(case_id: str):
    """Confirm or correct a case's label from a script (the same path as the browser)."""
    body = request.get_json(silent=True)
    value = body.get("label") if isinstance(body, dict) else None
    # By type, not by ==: true == 1 and 1.0 == 1 in Python, yet neither is a label.
    if type(value) not in (int, str) or value not in (0, 1, "tumour", "no_tumour"):
        raise InputError('JSON {"label": 0|1|"tumour"|"no_tumour"} required')
    numeric = 1 if value in (1, "tumour") else 0
    case = services().store.confirm(case_id, numeric, current_user())
    return jsonify(case_id=case.id, status=case.status, confirmed_label=numeric)


def _federation() -> Federation:
    fed = services().federation
    if fed is None:
        raise InputError("no coordinator configured on this appliance")
    return fed


@bp.route("/federation", methods=["GET"])
def federation_status():
    svc = services()
    now = svc.federation.overview() if svc.federation else FederationStatus(
        pending=0, refused=0, bytes_up=0, bytes_down=0)
    return jsonify(configured=svc.federation is not None,
                   model_version=svc.slot.current.version, outbox=now.pending,
                   bytes_up=now.bytes_up, bytes_down=now.bytes_down,
                   last_training=now.last_training)


@bp.route("/federation/train", methods=["POST"])
def federation_train():
    """Train the head now and queue the update (admin tokens only)."""
    _require_admin()
    return jsonify(_federation().train_now())


@bp.route("/federation/sync", methods=["POST"])
def federation_sync():
    """Send queued updates and take a newer bundle now (admin tokens only)."""
    _require_admin()
    return jsonify(_federation().sync_now())


def _require_admin() -> None:
    user = services().accounts.get_user(current_user())
    if user is None or user.role != "admin":
        abort(403, "administrators only")
