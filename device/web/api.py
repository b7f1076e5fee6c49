"""JSON API for scripts and PACS integration: ``POST /api/v1/predictions`` (one slice)
and ``POST /api/v1/series`` (a series as one .zip)."""
from __future__ import annotations

import hashlib
import re
import secrets
import time

from flask import Blueprint, abort, jsonify, request, url_for
from flask_limiter import Limiter

from device.exc import InputError, UnsupportedTypeError, UnusableImageError
from device.federation import Federation, FederationStatus
from device.imaging import archive
from device.store.base import Case, DuplicateKey, IdempotencyKey
from device.web import services
from device.web.auth import current_user, token_user
from device.web.upload import analyse_one, case_info, read_upload, study_summaries

bp = Blueprint("api", __name__, url_prefix="/api/v1")
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def limit(limiter: Limiter, rate: str) -> None:
    """Throttle the API per token (per address without one); ``rate`` "" for none."""
    if rate:
        limiter.limit(rate, key_func=_caller)(bp)


def _caller() -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return "token|" + hashlib.sha256(header[7:].strip().encode()).hexdigest()[:32]
    return f"address|{request.remote_addr}"


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
    svc = services()
    data = read_upload(images[0], svc.settings.max_upload_bytes)
    key = _idempotency_key(data)
    if key is not None and (replay := _replay(key)) is not None:
        return replay
    info = case_info(images[0].filename or "")
    try:
        case = svc.analyser.analyse(data, "api", key, info)
    except DuplicateKey:  # the same key sent twice at once: the first one stored it
        return _replay(key) or abort(409, "Idempotency-Key in use; retry")
    latency_ms = round((time.perf_counter() - start) * 1000, 2)
    return jsonify(_prediction(case, latency_ms, info.reference)), 201


@bp.route("/series", methods=["POST"])
def series():
    """Each slice of a .zip (field ``archive``) as a case: one line per slice, with its
    prediction or why it has none, in the archive's order, and the studies its slices
    went to (:func:`device.web.upload.study_summaries`; ``summary``: the study, if one).
    A bound reached part way ends the list with a line naming it (the slices before it
    are kept)."""
    parts = request.files.getlist("archive")
    if len(parts) != 1:
        raise InputError("multipart field 'archive' (one .zip of the series) is required")
    reference = case_info("").reference  # a bad reference or note: 400 before any slice
    data = read_upload(parts[0], services().settings.max_upload_bytes)
    if not archive.is_zip(data):
        raise UnsupportedTypeError("'archive' must be a .zip of the series' slices")
    results: list[dict] = []
    group = secrets.token_hex(16)
    try:
        for member, body in archive.members(data, services().settings.max_upload_bytes):
            analyse_one(member, body, member, results, source="api", archive=group)
    except InputError as exc:
        if not results:
            raise
        results.append({"name": parts[0].filename or "archive", "error": str(exc),
                        "status": exc.status})
    lines = [{"name": r["name"], **_prediction(r["case"], r["case"].latency_ms, reference)}
             if "case" in r else {k: r[k] for k in ("name", "error", "status")}
             for r in results]
    studies = study_summaries(results)
    for study in studies:
        study["url"] = url_for("studies.detail", study_id=study["id"], _external=True)
        study["most_suspicious"] = [{"case_id": c.id, "probability": round(c.probability, 6)}
                                    for c in study["most_suspicious"]]
    cases = sum("case_id" in line for line in lines)
    return jsonify(results=lines, cases=cases, refused=len(lines) - cases, studies=studies,
                   summary=studies[0] if len(studies) == 1 else None)


def _prediction(case: Case, latency_ms: float, reference: str) -> dict:
    return {
        "case_id": case.id, "reference": reference,
        "probability": round(case.probability, 6),
        "label": "tumour" if case.predicted_label else "no_tumour",
        "threshold": case.threshold, "uncertain": case.uncertain,
        "model_version": case.model_version, "latency_ms": latency_ms,
        "head": services().store.head_of(case.id) or "global",
        "heatmap_url": url_for("cases.heatmap", case_id=case.id, _external=True),
    }


def _idempotency_key(data: bytes) -> IdempotencyKey | None:
    """The request's ``Idempotency-Key`` (1-255 printable ASCII characters), or None."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise InputError("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return IdempotencyKey(current_user(), value, hashlib.sha256(data).hexdigest())


def _replay(key: IdempotencyKey):
    """The answer of the case this key created (201 again, marked as a replay), None if
    the key is new; 422 if it came with another image."""
    found = services().store.case_for_key(key.user, key.key)
    if found is None:
        return None
    case, request_sha256 = found
    if request_sha256 != key.request_sha256:
        raise UnusableImageError("Idempotency-Key already used for another image")
    response = jsonify(_prediction(case, case.latency_ms,
                                   services().store.get_info(case.id).reference))
    response.headers["Idempotent-Replayed"] = "true"
    return response, 201


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
                   last_training=now.last_training, last_sync=now.last_sync)


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
