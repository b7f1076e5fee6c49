"""What the coordinator does with a device's update or report, whatever the transport.

The HTTP API (:mod:`coordinator.api.updates`) and the Flower ServerApp
(:mod:`coordinator.flower_server`) both call these, so validation, the audit log and
the counters are the same for both.
"""
from __future__ import annotations

import json

from coordinator.bundles import MAX_VERSION, BundleRegistry
from coordinator.exc import ConflictError, InputError, RejectedError
from coordinator.rounds import Receipt, RoundManager
from coordinator.store.base import CoordinatorStore
from coordinator.telemetry import Telemetry

REPORT_KINDS = ("bundle_refused", "bundle_installed", "rollback", "training_skipped")


def receive_update(device_id: str, meta_text: str | None, payload: bytes | None, *,
                   rounds: RoundManager, store: CoordinatorStore, telemetry: Telemetry
                   ) -> Receipt:
    """Validate and keep one head update (``meta`` JSON text, npz ``payload``) of an
    authenticated device.

    Raises :class:`InputError` / :class:`RejectedError` / :class:`ConflictError` (a
    second update from the device in the round, or another device's update id), each
    audited as ``update_refused`` with the reason.
    """
    try:
        if meta_text is None or payload is None:
            raise InputError("an update needs 'weights' (npz) and 'meta' (JSON)")
        try:
            meta = json.loads(meta_text)
        except (ValueError, RecursionError) as exc:  # also a 5,000-digit or deep nesting
            raise InputError(f"meta is not JSON: {getattr(exc, 'msg', type(exc).__name__)}"
                             ) from None
        if not isinstance(meta, dict):
            raise InputError("meta must be a JSON object")
        receipt = rounds.submit(device_id, meta, payload)
    except (InputError, RejectedError, ConflictError) as exc:
        telemetry.updates.labels("refused").inc()
        reason = "conflict" if isinstance(exc, ConflictError) else "malformed"
        store.audit("update_refused", device_id,
                    {"reason": getattr(exc, "reason", None) or reason,
                     "message": str(exc)[:300]})
        raise
    store.touch_device(device_id, meta.get("base_version"))
    telemetry.updates.labels("duplicate" if receipt.duplicate else "accepted").inc()
    if not receipt.duplicate:
        telemetry.bytes_received.inc(len(payload))
    return receipt


def receive_report(device_id: str, body: object, *, bundles: BundleRegistry,
                   store: CoordinatorStore) -> None:
    """A device says what it did with a bundle (refusals feed the audit log), or why it
    did not train on its version (too few confirmed cases, one class only)."""
    if not isinstance(body, dict) or body.get("kind") not in REPORT_KINDS:
        raise InputError(f"a report needs kind in {', '.join(REPORT_KINDS)}")
    version = body.get("version")
    if version is not None and not (type(version) is int and 0 <= version <= MAX_VERSION):
        raise InputError("a report's version must be a bundle version (int) or null")
    # What a device says it now runs must exist; a refusal is audited whatever it names
    # (a bundle that was not ours is worth an audit line).
    if body["kind"] != "bundle_refused" and version is not None \
            and bundles.get(version) is None:
        raise InputError(f"a device cannot run bundle version {version}: this coordinator "
                         "never published it")
    detail = {"version": version, "reason": str(body.get("reason", ""))[:500]}
    store.audit(body["kind"], device_id, detail)
    if body["kind"] != "bundle_refused" and version is not None:
        store.touch_device(device_id, version)
