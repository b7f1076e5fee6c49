"""Bundles for devices, rounds, health and metrics."""
from __future__ import annotations

import base64
import time

from flask import Blueprint, Response, g, jsonify, request, send_file, url_for
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.api import services
from coordinator.api.auth import device_required
from coordinator.bundles import MAX_VERSION
from coordinator.exc import NotFoundError
from models.core.bundle import MANIFEST, SIGNATURE

bp = Blueprint("bundles", __name__)
STARTED = time.time()


@bp.route("/api/v1/bundles/latest")
@device_required
def latest():
    svc = services()
    bundle = svc.bundles.latest()
    # What the device says it runs, for the dashboard: a value that is no version is
    # ignored rather than refused, so it never keeps a device from its update.
    version = request.headers.get("X-Model-Version", type=int)
    svc.store.touch_device(g.device.id, version if version is not None
                           and 0 <= version <= MAX_VERSION else None)
    files = [MANIFEST, SIGNATURE, *bundle.manifest["files"]]
    return jsonify(version=bundle.version, manifest=bundle.manifest,
                   signature=base64.b64encode((bundle.path / SIGNATURE).read_bytes()).decode(),
                   files={name: url_for("bundles.file", version=bundle.version, name=name,
                                        _external=True) for name in files})


@bp.route("/api/v1/bundles/<int:version>/<name>")
@device_required
def file(version: int, name: str):
    bundle = services().bundles.get(version)
    if bundle is None or name not in (MANIFEST, SIGNATURE, *bundle.manifest["files"]):
        raise NotFoundError("no such bundle file")
    return send_file(bundle.path / name, mimetype="application/octet-stream",
                     as_attachment=True, download_name=name)


@bp.route("/api/v1/rounds")
@device_required
def rounds():
    return jsonify(rounds=[_round(r) for r in services().store.list_rounds()])


def _round(r) -> dict:
    return {"round": r.id, "status": r.status, "opened_at": r.opened_at,
            "closed_at": r.closed_at, "base_version": r.base_version, "updates": r.n_updates,
            "bytes_received": r.bytes_received, "published_version": r.published_version,
            "reason": r.reason, "epsilon": r.epsilon}


@bp.route("/healthz")
def healthz():
    svc = services()
    ok = svc.store.ping()
    return jsonify(status="ok" if ok else "degraded", store_ok=ok,
                   latest_version=svc.bundles.latest().version,
                   uptime_s=round(time.time() - STARTED, 1)), 200 if ok else 503


@bp.route("/metrics")
def metrics():
    svc = services()
    svc.telemetry.latest_version.set(svc.bundles.latest().version)
    return Response(generate_latest(svc.telemetry.registry), mimetype=CONTENT_TYPE_LATEST)
