"""``POST /api/v1/updates``: a device's head update (multipart ``weights`` + ``meta``)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from coordinator.api import services
from coordinator.api.auth import device_required
from coordinator.intake import receive_report, receive_update

bp = Blueprint("updates", __name__, url_prefix="/api/v1")


@bp.route("/updates", methods=["POST"])
@device_required
def post_update():
    weights = request.files.get("weights")
    svc = services()
    receipt = receive_update(g.device.id, request.form.get("meta"),
                             weights.read() if weights is not None else None,
                             rounds=svc.rounds, store=svc.store, telemetry=svc.telemetry)
    return jsonify(update_id=receipt.update_id, round=receipt.round_id,
                   duplicate=receipt.duplicate, round_closed=receipt.round_closed), \
        200 if receipt.duplicate else 202


@bp.route("/reports", methods=["POST"])
@device_required
def post_report():
    """A device reports what it did with a bundle (refusals feed the audit log)."""
    svc = services()
    receive_report(g.device.id, request.get_json(silent=True), bundles=svc.bundles,
                   store=svc.store)
    return jsonify(recorded=True), 201
