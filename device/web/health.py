"""``/healthz`` (JSON, no patient data) and ``/metrics`` (Prometheus text)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from device.web import services

bp = Blueprint("health", __name__)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts else None


@bp.route("/healthz")
def healthz():
    svc = services()
    store_ok = svc.store.ping()
    tel = svc.telemetry
    body = {"status": "ok" if store_ok else "degraded",
            "model_version": svc.slot.current.version,
            "uptime_s": round(tel.uptime(), 1), "store_ok": store_ok,
            "state": svc.status.state.name.lower(),
            "last_sync": _iso(tel.last_sync_at), "last_error": tel.last_error,
            "last_error_at": _iso(tel.last_error_at)}
    return jsonify(body), 200 if store_ok else 503


@bp.route("/metrics")
def metrics():
    svc = services()
    svc.telemetry.model_version.set(svc.slot.current.version)
    return Response(generate_latest(svc.telemetry.registry), mimetype=CONTENT_TYPE_LATEST)
