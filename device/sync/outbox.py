"""A persistent outbox of head updates waiting for the coordinator.

Layout (``data_dir/outbox/``)::

    <update_id>.npz     the payload, exactly the bytes that will be sent
    <update_id>.json    {"meta", "attempts", "next_attempt_at", "created_ns"}
    refused/            entries the coordinator refused, with the reason, for the admin

Each file is written with :func:`models.core.files.write_atomic` (temp file, fsync,
rename, folder fsync); the JSON goes last, so an entry exists only once both files are
complete. After a crash or power loss,
:meth:`Outbox.recover` (run at construction) deletes ``.tmp`` files, payloads without
their JSON and JSON without its payload.

Update ids are chosen by the caller (``uuid4().hex``) and kept across retries: the
coordinator answers a repeated id with ``duplicate: true``, so resending after a lost
answer cannot count an update twice.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.sync.link import CoordinatorLink, CoordinatorUnavailable, UpdateRefused
from models.core.crash_points import crash_point
from models.core.files import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

UPDATE_ID = re.compile(r"^[0-9a-f]{32}$")
JITTER = 0.2     # a delay is drawn in [(1 - JITTER) * d, d]: devices spread, cap holds


@dataclass(frozen=True)
class Entry:
    """One pending (or refused) update."""

    update_id: str
    meta: dict
    payload_path: Path
    attempts: int
    next_attempt_at: float
    created_ns: int = 0
    refusal: dict | None = None      # {"status", "error", "reason", "at"} once refused


@dataclass(frozen=True)
class FlushResult:
    """Counts of one :meth:`Outbox.flush`: sent (accepted or duplicate), refused (moved
    to ``refused/``), deferred (still pending: coordinator down or not due yet)."""

    sent: int = 0
    refused: int = 0
    deferred: int = 0


class Outbox:
    """Updates on disk until the coordinator has them.

    Parameters
    ----------
    data_dir
        The appliance's data folder; the outbox lives in ``data_dir/outbox``.
    backoff_base, backoff_max
        After the n-th failed attempt an entry waits ``min(base * 2**n, max)`` seconds
        (minus up to 20 % jitter).
    seed
        Seed of the jitter's RNG (tests); ``None`` draws one from the OS so that devices
        coming back after an outage do not all retry at the same second.
    """

    def __init__(self, data_dir: Path, backoff_base: float = 5.0, backoff_max: float = 900.0,
                 seed: int | None = None) -> None:
        self.path = Path(data_dir) / "outbox"
        self.refused_path = self.path / "refused"
        self.refused_path.mkdir(parents=True, exist_ok=True)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = random.Random(seed)
        self._lock = threading.RLock()         # files and the RNG
        self._flush_lock = threading.Lock()    # one flush at a time; put() is not blocked
        self._last_ns = 0
        self.recover()

    # -- writing ----------------------------------------------------------------------

    def put(self, update_id: str, payload: bytes, meta: dict) -> Entry:
        """Store an update durably; it is sent by the next :meth:`flush`.

        ``meta`` gets ``update_id`` if it lacks it. Raises ``ValueError`` for an id that
        is not 32 lowercase hex characters, disagrees with ``meta`` or is already queued.
        """
        if not UPDATE_ID.match(update_id or ""):
            raise ValueError("update_id must be 32 lowercase hex characters (uuid4().hex)")
        if meta.get("update_id", update_id) != update_id:
            raise ValueError("meta.update_id differs from update_id")
        meta = {**meta, "update_id": update_id}
        with self._lock:
            npz, record = self._files(update_id)
            if record.exists():
                raise ValueError(f"update {update_id} is already in the outbox")
            created = max(time.time_ns(), self._last_ns + 1)   # strict order of puts
            self._last_ns = created
            write_atomic(npz, payload)
            state = {"meta": meta, "attempts": 0, "next_attempt_at": 0.0,
                     "created_ns": created}
            write_atomic(record, json.dumps(state).encode())   # last: the entry exists
        logger.info("update %s queued (%d bytes)", update_id, len(payload))
        return Entry(update_id, meta, npz, 0, 0.0, created)

    # -- reading ----------------------------------------------------------------------

    def pending(self) -> list[Entry]:
        """Complete entries, oldest first."""
        with self._lock:
            return self._read_dir(self.path)

    def refused(self) -> list[Entry]:
        """Entries the coordinator refused (kept for the administrator), oldest first."""
        with self._lock:
            return self._read_dir(self.refused_path)

    def __len__(self) -> int:
        return len(self.pending())

    # -- sending ----------------------------------------------------------------------

    def flush(self, client: CoordinatorLink, now: float | None = None, force: bool = False
              ) -> FlushResult:
        """Send due entries in order through ``client`` (either transport).

        Accepted or duplicate: deleted. :class:`UpdateRefused`: moved to ``refused/``,
        never retried. :class:`CoordinatorUnavailable`: the entry's ``attempts`` grows,
        it waits its backoff, and this flush stops (the coordinator is down). An entry
        not yet due also stops the flush, so updates always leave in the order queued (a
        wait longer than ``backoff_max`` is the clock's doing: the entry is due).
        ``force`` (a sync a person asked for) ignores the backoff once.
        """
        now = time.time() if now is None else now
        sent = refused = 0
        with self._flush_lock:
            entries = self.pending()
            for i, entry in enumerate(entries):
                # A wait longer than the longest backoff: the clock went back, send now.
                if now < entry.next_attempt_at <= now + self.backoff_max and not force:
                    return FlushResult(sent, refused, len(entries) - i)
                try:
                    answer = client.post_update(entry.payload_path.read_bytes(), entry.meta)
                except UpdateRefused as exc:
                    self._refuse(entry, exc, now)
                    refused += 1
                    continue
                except CoordinatorUnavailable as exc:
                    self._defer(entry, now)
                    logger.info("coordinator unavailable (%s); %d update(s) wait",
                                exc, len(entries) - i)
                    return FlushResult(sent, refused, len(entries) - i)
                crash_point("outbox.acknowledged")
                self._delete(entry)
                sent += 1
                logger.info("update %s delivered (round %s%s)", entry.update_id,
                            answer.get("round"),
                            ", duplicate" if answer.get("duplicate") else "")
        return FlushResult(sent, refused, 0)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts (jittered, capped)."""
        delay = min(self.backoff_base * 2.0 ** min(attempts, 40), self.backoff_max)
        with self._lock:
            return delay * (1.0 - JITTER * self._rng.random())

    # -- crash recovery ---------------------------------------------------------------

    def recover(self) -> int:
        """Remove what a crash can leave: ``.tmp`` files, payloads without JSON, JSON
        without payload, unreadable JSON. Returns the number of files removed."""
        removed = 0
        with self._lock:
            for folder in (self.path, self.refused_path):
                for tmp in folder.glob("*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
            for npz in self.path.glob("*.npz"):
                if not npz.with_suffix(".json").exists():
                    logger.warning("outbox: dropping %s (written without its metadata)",
                                   npz.name)
                    npz.unlink(missing_ok=True)
                    removed += 1
            for record in self.path.glob("*.json"):
                npz = record.with_suffix(".npz")
                if not npz.exists() or _load(record) is None:
                    logger.warning("outbox: dropping %s (payload missing or unreadable)",
                                   record.name)
                    record.unlink(missing_ok=True)
                    npz.unlink(missing_ok=True)
                    removed += 1
            if removed:
                fsync_dir(self.path)
        return removed

    # -- internals --------------------------------------------------------------------

    def _files(self, update_id: str, folder: Path | None = None) -> tuple[Path, Path]:
        folder = folder or self.path
        return folder / f"{update_id}.npz", folder / f"{update_id}.json"

    def _read_dir(self, folder: Path) -> list[Entry]:
        entries = []
        for record in folder.glob("*.json"):
            npz = record.with_suffix(".npz")
            state = _load(record)
            if state is None or not npz.exists() or not UPDATE_ID.match(record.stem):
                continue
            entries.append(Entry(record.stem, state.get("meta", {}), npz,
                                 int(state.get("attempts", 0)),
                                 float(state.get("next_attempt_at", 0.0)),
                                 int(state.get("created_ns", 0)), state.get("refusal")))
        return sorted(entries, key=lambda e: (e.created_ns, e.update_id))

    def _state(self, entry: Entry, **changes: object) -> dict:
        return {"meta": entry.meta, "attempts": entry.attempts,
                "next_attempt_at": entry.next_attempt_at, "created_ns": entry.created_ns,
                **changes}

    def _defer(self, entry: Entry, now: float) -> None:
        attempts = entry.attempts + 1
        state = self._state(entry, attempts=attempts, next_attempt_at=now + self.backoff(attempts))
        with self._lock:
            write_atomic(self._files(entry.update_id)[1], json.dumps(state).encode())

    def _refuse(self, entry: Entry, exc: UpdateRefused, now: float) -> None:
        # Order matters for a crash: the refused record first (the entry is still
        # complete in the outbox, a retry is refused again), then the payload (the
        # outbox's JSON alone is dropped by recover()), then the outbox's JSON.
        refusal = {"status": exc.status, "error": exc.error, "reason": exc.reason, "at": now}
        npz, record = self._files(entry.update_id, self.refused_path)
        with self._lock:
            write_atomic(record, json.dumps(self._state(entry, refusal=refusal)).encode())
            os.replace(entry.payload_path, npz)
            self._files(entry.update_id)[1].unlink(missing_ok=True)
            fsync_dir(self.refused_path)
            fsync_dir(self.path)
        logger.warning("update %s refused by the coordinator (%d %s); kept in %s",
                       entry.update_id, exc.status, exc.reason, self.refused_path)

    def _delete(self, entry: Entry) -> None:
        npz, record = self._files(entry.update_id)
        with self._lock:
            record.unlink(missing_ok=True)    # JSON first: a lone payload is recovered
            npz.unlink(missing_ok=True)
            fsync_dir(self.path)


def _load(record: Path) -> dict | None:
    try:
        state = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("meta"), dict) else None
