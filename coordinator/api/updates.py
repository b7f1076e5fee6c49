"""``POST /api/v1/updates``: a device's head update (multipart ``weights`` + ``meta``)."""
from __future__ import annotations

import json

from flask import Blueprint, g, jsonify, request

from coordinator.api import services
from coordinator.api.auth import device_required
from coordinator.exc import InputError, RejectedError

bp = Blueprint("updates", __name__, url_prefix="/api/v1")


@bp.route("/updates", methods=["POST"])
@device_required
def post_update():
    svc = services()
    device = g.device
    try:
        if "weights" not in request.files or "meta" not in request.form:
            raise InputError("multipart fields 'weights' (npz) and 'meta' (JSON) are required")
        try:
            meta = json.loads(request.form["meta"])
        except json.JSONDecodeError as exc:
            raise InputError(f"meta is not JSON: {exc.msg}") from None
        if not isinstance(meta, dict):
            raise InputError("meta must be a JSON object")
        payload = request.files["weights"].read()
        receipt = svc.rounds.submit(device.id, meta, payload)
    except (InputError, RejectedError) as exc:
        svc.telemetry.updates.labels("refused").inc()
        svc.store.audit("update_refused", device.id,
                        {"reason": getattr(exc, "reason", None) or "malformed",
                         "message": str(exc)[:300]})
        raise
    svc.store.touch_device(device.id, meta.get("base_version"))
    svc.telemetry.updates.labels("duplicate" if receipt.duplicate else "accepted").inc()
    if not receipt.duplicate:
        svc.telemetry.bytes_received.inc(len(payload))
    return jsonify(update_id=receipt.update_id, round=receipt.round_id,
                   duplicate=receipt.duplicate, round_closed=receipt.round_closed), \
        200 if receipt.duplicate else 202


REPORT_KINDS = ("bundle_refused", "bundle_installed", "rollback")


@bp.route("/reports", methods=["POST"])
@device_required
def post_report():
    """A device reports what it did with a bundle (refusals feed the audit log)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("kind") not in REPORT_KINDS:
        raise InputError(f"JSON body with kind in {', '.join(REPORT_KINDS)} required")
    detail = {"version": body.get("version"), "reason": str(body.get("reason", ""))[:500]}
    services().store.audit(body["kind"], g.device.id, detail)
    if body["kind"] != "bundle_refused" and isinstance(body.get("version"), int):
        services().store.touch_device(g.device.id, body["version"])
    return jsonify(recorded=True), 201
