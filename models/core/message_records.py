"""Layout of the records a round message carries under the Flower transport.

Shared by the coordinator's ServerApp and the appliance's ClientApp; plain dicts of
Flower ``ConfigRecord`` values (int, float, str, bytes), so this module needs no Flower.

coordinator -> device (``train`` and ``evaluate`` messages)
    ``bundle``: ``{"version": int, "file:<name>": bytes, ...}`` -- the latest signed
    bundle (manifest, signature and every listed file), without files when the
    coordinator knows the device already has that version.
device -> coordinator (the reply)
    ``status``: ``{"device_id": str, "model_version": int, "reports": JSON list,
    "sync": JSON}``; ``update`` (only when the device sends one): ``{"payload": bytes,
    "meta": JSON}``, exactly the HTTP transport's ``weights`` and ``meta``; ``metrics``:
    numbers only (example count, local accuracies).
"""
from __future__ import annotations

import json
from typing import Any

BUNDLE, STATUS, UPDATE, METRICS = "bundle", "status", "update", "metrics"
_FILE = "file:"


def bundle_record(version: int, files: dict[str, bytes]) -> dict[str, Any]:
    return {"version": int(version), **{_FILE + name: data for name, data in files.items()}}


def read_bundle_record(record: Any) -> tuple[int | None, dict[str, bytes]]:
    """``(version, files)``; a record without a valid version gives ``(None, {})``."""
    if not hasattr(record, "items"):
        return None, {}
    version = record.get("version")
    if type(version) is not int:
        return None, {}
    files = {k[len(_FILE):]: v for k, v in record.items()
             if isinstance(k, str) and k.startswith(_FILE) and isinstance(v, bytes)}
    return version, files


def status_record(device_id: str, model_version: int, reports: list[dict],
                  sync: dict) -> dict[str, Any]:
    return {"device_id": device_id, "model_version": int(model_version),
            "reports": json.dumps(reports), "sync": json.dumps(sync, default=str)}


def read_status_record(record: Any) -> dict[str, Any]:
    """The status fields, with reports and sync decoded; ValueError if malformed."""
    if not hasattr(record, "get"):
        raise ValueError("reply has no status record")
    device_id, version = record.get("device_id"), record.get("model_version")
    if not isinstance(device_id, str) or not device_id or type(version) is not int:
        raise ValueError("status record needs device_id (str) and model_version (int)")
    try:
        reports, sync = json.loads(record.get("reports", "[]")), json.loads(
            record.get("sync", "{}"))
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"status record is not JSON: {exc}") from None
    if not isinstance(reports, list) or not isinstance(sync, dict):
        raise ValueError("status reports must be a list and sync an object")
    return {"device_id": device_id, "model_version": version, "reports": reports,
            "sync": sync}
