"""SQLite implementation of the coordinator store: ``state_dir/coordinator.db`` (WAL) and
update payloads as ``state_dir/updates/<update_id>.npz``.

Crash safety of :meth:`SQLiteCoordinatorStore.add_update`: inside one IMMEDIATE
transaction (SQLite's write lock, so no other writer can interleave), the payload is
written to a temp file, fsynced, renamed to ``<update_id>.npz`` and the directory
fsynced *before* the row is inserted and committed. A crash can therefore leave a file
without a row, never a row without a file; :meth:`SQLiteCoordinatorStore.recover` (run
at every start) deletes such files and leftover temp files. A coordinator killed
mid-round thus resumes with exactly the updates it acknowledged.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

from coordinator.exc import AuthError, ConflictError, InputError, NotFoundError, StoreError
from coordinator.store.base import (
    CLOSED_STATUSES, UPDATE_ID, CoordinatorStore, Device, Round, Update, check_name,
    check_update_id, known_device_id,
)
from coordinator.store.db import Database, from_json, now_iso, number, text, to_json
from coordinator.store.records import RecordsMixin
from models.core.files import fsync_dir, write_atomic
from models.core.sqlitedb import sweep_dir

log = logging.getLogger(__name__)

DB_NAME = "coordinator.db"
UPDATES_DIR = "updates"
MAX_ROUNDS_LIMIT = 10_000
MAX_REASON_CHARS = 4096
_OWNED_FILE = re.compile(r"[0-9a-f]{32}\.npz")  # the only payload names we create
_UPDATE_COLUMNS = ("id, round_id, device_id, base_version, examples, norm, metrics, "
                   "received_at, bytes, meta")


def _device(row: sqlite3.Row) -> Device:
    return Device(row["id"], row["enrolled_at"], row["revoked_at"], row["last_seen_at"],
                  row["model_version"])


def _round(row: sqlite3.Row) -> Round:
    return Round(id=row["id"], opened_at=row["opened_at"], closed_at=row["closed_at"],
                 status=row["status"], base_version=row["base_version"],
                 n_updates=row["n_updates"], bytes_received=row["bytes_received"],
                 published_version=row["published_version"], reason=row["reason"],
                 metrics=from_json(row["metrics"]), epsilon=row["epsilon"])


def _update(row: sqlite3.Row) -> Update:
    return Update(id=row["id"], round_id=row["round_id"], device_id=row["device_id"],
                  base_version=row["base_version"], examples=row["examples"],
                  norm=row["norm"], metrics=from_json(row["metrics"]),
                  received_at=row["received_at"], bytes=row["bytes"],
                  meta=from_json(row["meta"]))


def _round_id(value: Any) -> int:
    """A malformed round id cannot name a round: NotFoundError, like an unknown one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NotFoundError("no such round")
    return value


def _npz(payload: Any) -> bytes:
    # .npz is a zip archive; decoding and validating the arrays is aggregation's job.
    if not isinstance(payload, (bytes, bytearray, memoryview)) \
            or not bytes(payload[:2]) == b"PK":
        raise InputError("payload must be .npz bytes")
    return bytes(payload)


class SQLiteCoordinatorStore(RecordsMixin, CoordinatorStore):
    """The coordinator's state in ``state_dir`` (created 0700 if missing).

    Opening runs :meth:`recover`. Bundles, audit and admins live in
    :class:`~coordinator.store.records.RecordsMixin`.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._db = Database(self.state_dir / DB_NAME)
        self._closed = False
        try:
            self.updates_dir = self.state_dir / UPDATES_DIR
            self.updates_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.recover()
        except BaseException:
            self.close()
            raise

    # --- devices ----------------------------------------------------------------------

    def _device_row(self, conn: sqlite3.Connection, device_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise NotFoundError("no such device")
        return row

    def enroll(self, device_id: str, token_hash: str) -> Device:
        check_name(device_id, "device id")
        text(token_hash, "token hash")
        with self._db.tx() as conn:
            row = conn.execute("SELECT revoked_at FROM devices WHERE id = ?",
                               (device_id,)).fetchone()
            if row is not None and row["revoked_at"] is None:
                raise ConflictError("an active device with that id is already enrolled")
            if conn.execute("SELECT 1 FROM devices WHERE token_hash = ? AND id <> ?",
                            (token_hash, device_id)).fetchone():
                raise ConflictError("that token hash belongs to another device")
            if row is None:
                conn.execute("INSERT INTO devices (id, token_hash, enrolled_at) "
                             "VALUES (?, ?, ?)", (device_id, token_hash, now_iso()))
            else:
                conn.execute("UPDATE devices SET token_hash = ?, enrolled_at = ?, "
                             "revoked_at = NULL WHERE id = ?",
                             (token_hash, now_iso(), device_id))
            device = _device(self._device_row(conn, device_id))
        log.info("%s device %s", "re-enrolled" if row is not None else "enrolled", device_id)
        return device

    def revoke(self, device_id: str) -> Device:
        known_device_id(device_id)
        with self._db.tx() as conn:
            if self._device_row(conn, device_id)["revoked_at"] is None:
                conn.execute("UPDATE devices SET revoked_at = ? WHERE id = ?",
                             (now_iso(), device_id))
            device = _device(self._device_row(conn, device_id))
        log.info("revoked device %s", device_id)
        return device

    def device_by_token(self, token_hash: str) -> Device | None:
        if not isinstance(token_hash, str) or not token_hash:
            return None
        rows = self._db.read("SELECT * FROM devices WHERE token_hash = ? "
                             "AND revoked_at IS NULL", (token_hash,))
        return _device(rows[0]) if rows else None

    def get_device(self, device_id: str) -> Device:
        rows = self._db.read("SELECT * FROM devices WHERE id = ?",
                             (known_device_id(device_id),))
        if not rows:
            raise NotFoundError("no such device")
        return _device(rows[0])

    def list_devices(self) -> list[Device]:
        return [_device(row) for row in self._db.read("SELECT * FROM devices ORDER BY id")]

    def touch_device(self, device_id: str, model_version: int | None = None) -> None:
        known_device_id(device_id)
        version = None if model_version is None \
            else number(model_version, "model_version", 0, integer=True)
        with self._db.tx() as conn:
            if conn.execute("UPDATE devices SET last_seen_at = ?, "
                            "model_version = COALESCE(?, model_version) WHERE id = ?",
                            (now_iso(), version, device_id)).rowcount == 0:
                raise NotFoundError("no such device")

    # --- rounds -----------------------------------------------------------------------

    def _round_row(self, conn: sqlite3.Connection, round_id: Any) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM rounds WHERE id = ?",
                           (_round_id(round_id),)).fetchone()
        if row is None:
            raise NotFoundError("no such round")
        return row

    def open_round(self, base_version: int) -> Round:
        base = number(base_version, "base_version", 0, integer=True)
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM rounds WHERE status = 'open'").fetchone():
                raise ConflictError("a round is already open")
            cur = conn.execute("INSERT INTO rounds (opened_at, status, base_version) "
                               "VALUES (?, 'open', ?)", (now_iso(), base))
            rnd = _round(self._round_row(conn, cur.lastrowid))
        log.info("opened round %s on base version %s", rnd.id, base)
        return rnd

    def current_round(self) -> Round | None:
        rows = self._db.read("SELECT * FROM rounds WHERE status = 'open'")
        return _round(rows[0]) if rows else None

    def get_round(self, round_id: int) -> Round:
        rows = self._db.read("SELECT * FROM rounds WHERE id = ?", (_round_id(round_id),))
        if not rows:
            raise NotFoundError("no such round")
        return _round(rows[0])

    def list_rounds(self, limit: int = 100) -> list[Round]:
        limit = number(limit, "limit", 1, MAX_ROUNDS_LIMIT, integer=True)
        return [_round(row) for row in
                self._db.read("SELECT * FROM rounds ORDER BY id DESC LIMIT ?", (limit,))]

    def close_round(self, round_id: int, status: str, reason: str) -> Round:
        if status not in CLOSED_STATUSES:
            raise InputError(f"status must be one of {', '.join(CLOSED_STATUSES)}")
        text(reason, "reason", MAX_REASON_CHARS)
        with self._db.tx() as conn:
            if self._round_row(conn, round_id)["status"] != "open":
                raise ConflictError("round is not open")
            conn.execute("UPDATE rounds SET status = ?, closed_at = ?, reason = ? "
                         "WHERE id = ?", (status, now_iso(), reason, round_id))
            rnd = _round(self._round_row(conn, round_id))
        log.info("round %s %s (%s updates): %s", rnd.id, status, rnd.n_updates, reason)
        return rnd

    def record_outcome(self, round_id: int, published_version: int | None,
                       metrics: dict[str, Any], reason: str,
                       epsilon: float | None = None) -> Round:
        version = None if published_version is None \
            else number(published_version, "published_version", 0, integer=True)
        eps = None if epsilon is None else number(epsilon, "epsilon", 0)
        values = (version, to_json(metrics, "metrics"),
                  text(reason, "reason", MAX_REASON_CHARS), eps)
        with self._db.tx() as conn:
            if self._round_row(conn, round_id)["status"] == "open":
                raise ConflictError("close the round before recording its outcome")
            conn.execute("UPDATE rounds SET published_version = ?, metrics = ?, "
                         "reason = ?, epsilon = ? WHERE id = ?", (*values, round_id))
            rnd = _round(self._round_row(conn, round_id))
        log.info("round %s outcome: published version %s (%s)", rnd.id, version, reason)
        return rnd

    # --- updates ----------------------------------------------------------------------

    def add_update(self, update_id: str, round_id: int, device_id: str, base_version: int,
                   examples: int, norm: float, metrics: dict[str, Any], payload: bytes,
                   meta: dict[str, Any]) -> tuple[Update, bool]:
        check_update_id(update_id)
        known_device_id(device_id)
        data = _npz(payload)
        metrics_json, meta_json = to_json(metrics, "metrics"), to_json(meta, "meta")
        update = Update(
            id=update_id, round_id=_round_id(round_id), device_id=device_id,
            base_version=number(base_version, "base_version", 0, integer=True),
            examples=number(examples, "examples", 0, integer=True),
            norm=number(norm, "norm", 0), metrics=from_json(metrics_json),
            received_at=now_iso(), bytes=len(data), meta=from_json(meta_json))
        path = self.updates_dir / f"{update_id}.npz"
        written = False
        try:
            with self._db.tx() as conn:
                existing = conn.execute(f"SELECT {_UPDATE_COLUMNS} FROM updates "
                                        "WHERE id = ?", (update_id,)).fetchone()
                if existing is not None:  # a retry: answer as the first time
                    if existing["device_id"] != device_id:
                        raise ConflictError("update id is already used by another device")
                    return _update(existing), False
                self._check_can_add(conn, update)
                written = True  # from here on the file may exist and is ours to remove
                try:
                    write_atomic(path, data)
                except OSError as exc:
                    raise StoreError(f"cannot write update payload: {exc.strerror}") from exc
                conn.execute(
                    f"INSERT INTO updates ({_UPDATE_COLUMNS}, sha256) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (update.id, update.round_id, update.device_id, update.base_version,
                     update.examples, update.norm, metrics_json, update.received_at,
                     update.bytes, meta_json,
                     hashlib.sha256(data).hexdigest()))
                conn.execute("UPDATE rounds SET n_updates = n_updates + 1, "
                             "bytes_received = bytes_received + ? WHERE id = ?",
                             (update.bytes, update.round_id))
        except BaseException:
            if written:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
        log.info("stored update %s from device %s in round %s (%s bytes)",
                 update_id, device_id, update.round_id, update.bytes)
        return update, True

    def _check_can_add(self, conn: sqlite3.Connection, update: Update) -> None:
        if self._device_row(conn, update.device_id)["revoked_at"] is not None:
            raise AuthError("device is revoked")
        if self._round_row(conn, update.round_id)["status"] != "open":
            raise ConflictError("round is not open")
        if conn.execute("SELECT 1 FROM updates WHERE round_id = ? AND device_id = ?",
                        (update.round_id, update.device_id)).fetchone():
            raise ConflictError("one update per device per round")

    def get_update(self, update_id: str) -> Update:
        if not isinstance(update_id, str) or not UPDATE_ID.fullmatch(update_id):
            raise NotFoundError("no such update")
        rows = self._db.read(f"SELECT {_UPDATE_COLUMNS} FROM updates WHERE id = ?",
                             (update_id,))
        if not rows:
            raise NotFoundError("no such update")
        return _update(rows[0])

    def updates_for_round(self, round_id: int) -> list[Update]:
        self.get_round(round_id)
        rows = self._db.read(f"SELECT {_UPDATE_COLUMNS} FROM updates WHERE round_id = ? "
                             "ORDER BY received_at, rowid", (round_id,))
        return [_update(row) for row in rows]

    def load_payload(self, update: Update) -> bytes:
        rows = self._db.read("SELECT bytes, sha256, payload_deleted FROM updates "
                             "WHERE id = ?", (check_update_id(update.id),))
        if not rows:
            raise NotFoundError("no such update")
        if rows[0]["payload_deleted"]:
            raise NotFoundError("the update's payload was deleted")
        try:
            data = (self.updates_dir / f"{update.id}.npz").read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read update payload: {exc.strerror}") from exc
        if len(data) != rows[0]["bytes"] \
                or hashlib.sha256(data).hexdigest() != rows[0]["sha256"]:
            raise StoreError("update payload is corrupt (size or SHA-256 mismatch)")
        return data

    def carry_over(self, from_round: int, to_round: int) -> int:
        if _round_id(from_round) == _round_id(to_round):
            raise InputError("cannot carry a round's updates over into itself")
        with self._db.tx() as conn:
            self._round_row(conn, from_round)
            if self._round_row(conn, to_round)["status"] != "open":
                raise ConflictError("updates can only be carried into the open round")
            moved = conn.execute(
                "UPDATE updates SET round_id = ? WHERE round_id = ? AND payload_deleted = 0 "
                "AND device_id NOT IN (SELECT device_id FROM updates WHERE round_id = ?)",
                (to_round, from_round, to_round)).rowcount
            for rid in (from_round, to_round):  # counters follow the updates they count
                conn.execute(
                    "UPDATE rounds SET n_updates = (SELECT COUNT(*) FROM updates "
                    "WHERE round_id = :r), bytes_received = (SELECT COALESCE(SUM(bytes), 0) "
                    "FROM updates WHERE round_id = :r) WHERE id = :r", {"r": rid})
        log.info("carried %s update(s) from round %s to round %s", moved, from_round, to_round)
        return moved

    def delete_payloads(self, round_id: int) -> int:
        with self._db.tx() as conn:  # rows first: a crash now leaves only orphan files
            if self._round_row(conn, round_id)["status"] == "open":
                raise ConflictError("the round is still open")
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM updates WHERE round_id = ? AND payload_deleted = 0",
                (round_id,))]
            conn.execute("UPDATE updates SET payload_deleted = 1 WHERE round_id = ?",
                         (round_id,))
        removed = 0
        for update_id in ids:
            try:
                (self.updates_dir / f"{update_id}.npz").unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:  # recover() removes it at the next start
                log.warning("update %s: cannot remove payload: %s", update_id, exc.strerror)
        if removed:
            fsync_dir(self.updates_dir)
        log.info("deleted %s payload file(s) of round %s", removed, round_id)
        return removed

    # --- lifecycle --------------------------------------------------------------------

    def recover(self) -> int:
        # Inside a write transaction: no add_update (of this or another process) is
        # between its file write and its commit while the directory is scanned.
        with self._db.tx() as conn:
            referenced = {f"{row[0]}.npz" for row in conn.execute(
                "SELECT id FROM updates WHERE payload_deleted = 0")}
            return sweep_dir(self.updates_dir, referenced, _OWNED_FILE, "update payload")

    def ping(self) -> bool:
        return self._db.ping()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()
