"""The Flower transport of the :class:`~device.sync.link.CoordinatorLink`.

:class:`MessageLink` answers the link's four calls from the bundle one round message
carried and collects what goes back in the reply, so the same Federation code (outbox,
verification, local gate, swap) runs under either transport. Nothing here imports
Flower.

Byte counters count what the records carry (payload, meta and report JSON up; bundle
files down), like the HTTP client counts bodies: framing is excluded.
"""
from __future__ import annotations

import json
from pathlib import Path

from device.sync.link import CoordinatorUnavailable, UnsafeDownload
from models.core.bundle import MANIFEST
from models.core.files import write_atomic


class MessageLink:
    """One round's exchange: the offered bundle in, updates and reports out.

    Parameters
    ----------
    version : int or None
        The coordinator's latest bundle version (None: it did not say).
    files : dict
        ``{file name: bytes}`` of that bundle; empty when the coordinator knows this
        device already has it.
    max_updates : int
        Updates one reply may carry: 1 for ``train`` (the coordinator takes one per
        device per round), 0 for ``evaluate``; the others wait in the outbox. An update
        placed in a reply counts as delivered: a reply lost in transit loses it (the
        next round trains again), and the coordinator's refusals are in its audit log.
    """

    def __init__(self, version: int | None, files: dict[str, bytes] | None = None,
                 max_updates: int = 1) -> None:
        self.version, self.files = version, dict(files or {})
        self.max_updates = max_updates
        self.updates: list[tuple[bytes, dict]] = []
        self.reports: list[dict] = []
        self.bytes_up = 0
        self.bytes_down = sum(map(len, self.files.values()))  # carried, used or not

    def post_update(self, payload: bytes, meta: dict) -> dict:
        if len(self.updates) >= self.max_updates:
            raise CoordinatorUnavailable(f"a reply carries {self.max_updates} update(s); "
                                         "the others wait for the next round")
        self.updates.append((payload, meta))
        self.bytes_up += len(payload) + len(json.dumps(meta))
        return {"update_id": meta.get("update_id"), "round": None, "duplicate": False}

    def latest(self, model_version: int | None = None) -> dict:
        """What ``GET /api/v1/bundles/latest`` would say; files named by themselves.

        Without files nothing is offered (the coordinator believes this device has the
        latest; it learns otherwise from the reply's ``model_version`` and sends them
        next time): the version in service is answered, so nothing is refused. The
        message may carry only the files that changed since the version in service,
        with the manifest: every file the manifest lists is offered, and the updater
        copies the unchanged ones from the bundle in service (then verifies the whole)."""
        if not self.files:
            return {"version": model_version, "files": {}}
        manifest = _listing(self.files.get(MANIFEST, b""))
        if manifest is None:  # nothing to read the other files from: offer what came
            return {"version": self.version, "files": {name: name for name in self.files}}
        names = dict.fromkeys([*self.files, *manifest["files"]])
        return {"version": self.version, "files": {name: name for name in names},
                "manifest": manifest}

    def download(self, name: str, dest: Path, max_bytes: int) -> int:
        data = self.files.get(name)
        if data is None:
            raise UnsafeDownload(f"the message carries no file {name!r}", "origin")
        if len(data) > max_bytes:
            raise UnsafeDownload(f"file of {len(data)} bytes exceeds {max_bytes}", "size")
        write_atomic(dest, data)
        return len(data)

    def report(self, kind: str, version: int | None, reason: str = "") -> dict:
        body = {"kind": kind, "version": version, "reason": reason}
        self.reports.append(body)
        self.bytes_up += len(json.dumps(body))
        return {"recorded": True}


def _listing(data: bytes) -> dict | None:
    """A carried manifest that lists its files, or None."""
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and isinstance(
        manifest.get("files"), dict) else None
