"""SQLite part of the coordinator store for its simple records: bundles, the audit
trail, dashboard admins and their sessions.

A mixin of :class:`~coordinator.store.sqlite.SQLiteCoordinatorStore` (which provides
``self._db``), kept apart so that neither module grows past a screenful of concerns.
"""
from __future__ import annotations

import csv
import logging
import sqlite3
import time
from typing import Any, TextIO

from coordinator.exc import ConflictError, InputError, NotFoundError
from coordinator.store.base import (
    AUDIT_FIELDS, MAX_LIST_LIMIT, Admin, AuditEvent, BundleRecord, check_name,
)
from coordinator.store.db import Database, from_json, now_iso, number, text, to_json

log = logging.getLogger(__name__)


def _bundle(row: sqlite3.Row) -> BundleRecord:
    return BundleRecord(version=row["version"], parent_version=row["parent_version"],
                        created_at=row["created_at"], path=row["path"],
                        metrics=from_json(row["metrics"]), published=bool(row["published"]),
                        reason=row["reason"])


def _event(row: sqlite3.Row) -> AuditEvent:
    return AuditEvent(id=row["id"], at=row["at"], kind=row["kind"],
                      device_id=row["device_id"], detail=from_json(row["detail"]))


class RecordsMixin:
    """Bundles, audit events, admins and login failures on ``self._db``."""

    _db: Database

    # --- bundles ----------------------------------------------------------------------

    def add_bundle(self, version: int, parent_version: int | None, path: str,
                   metrics: dict[str, Any], published: bool, reason: str) -> BundleRecord:
        version = number(version, "version", 0, integer=True)
        parent = None if parent_version is None \
            else number(parent_version, "parent_version", 0, version - 1, integer=True)
        if not isinstance(published, bool):
            raise InputError("published must be a bool")
        values = (version, parent, now_iso(), text(path, "path", 4096),
                  to_json(metrics, "metrics"), int(published),
                  text(reason, "reason", allow_empty=True))
        with self._db.tx() as conn:
            latest = conn.execute("SELECT MAX(version) FROM bundles").fetchone()[0]
            if latest is not None and version <= latest:
                raise ConflictError(f"bundle versions must increase (latest is {latest})")
            conn.execute("INSERT INTO bundles (version, parent_version, created_at, path, "
                         "metrics, published, reason) VALUES (?, ?, ?, ?, ?, ?, ?)", values)
            row = conn.execute("SELECT * FROM bundles WHERE version = ?",
                               (version,)).fetchone()
        log.info("recorded bundle v%s (%s)", version,
                 "published" if published else "withheld")
        return _bundle(row)

    def latest_bundle(self) -> BundleRecord | None:
        rows = self._db.read("SELECT * FROM bundles WHERE published = 1 "
                             "ORDER BY version DESC LIMIT 1")
        return _bundle(rows[0]) if rows else None

    def get_bundle(self, version: int) -> BundleRecord:
        if isinstance(version, bool) or not isinstance(version, int):
            raise NotFoundError("no such bundle")
        rows = self._db.read("SELECT * FROM bundles WHERE version = ?", (version,))
        if not rows:
            raise NotFoundError("no such bundle")
        return _bundle(rows[0])

    def list_bundles(self) -> list[BundleRecord]:
        return [_bundle(row) for row in
                self._db.read("SELECT * FROM bundles ORDER BY version DESC")]

    # --- audit ------------------------------------------------------------------------

    def audit(self, kind: str, device_id: str | None, detail: dict[str, Any]) -> None:
        check_name(kind, "audit kind")
        if device_id is not None:
            check_name(device_id, "device id")
        with self._db.tx() as conn:
            conn.execute("INSERT INTO audit (at, kind, device_id, detail) VALUES "
                         "(?, ?, ?, ?)", (now_iso(), kind, device_id,
                                          to_json(detail, "detail")))

    def audit_events(self, limit: int = 500, kind: str | None = None) -> list[AuditEvent]:
        limit = number(limit, "limit", 1, MAX_LIST_LIMIT, integer=True)
        if kind is None:
            rows = self._db.read("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._db.read("SELECT * FROM audit WHERE kind = ? ORDER BY id DESC "
                                 "LIMIT ?", (check_name(kind, "audit kind"), limit))
        return [_event(row) for row in rows]

    def export_audit_csv(self, fh: TextIO) -> int:
        rows = self._db.read(f"SELECT {', '.join(AUDIT_FIELDS)} FROM audit ORDER BY id")
        writer = csv.writer(fh)
        writer.writerow(AUDIT_FIELDS)
        for row in rows:  # detail stays the stored canonical JSON text
            writer.writerow(["" if row[name] is None else row[name]
                             for name in AUDIT_FIELDS])
        return len(rows)

    # --- dashboard admins and their sessions ------------------------------------------

    def add_admin(self, name: str, password_hash: str) -> None:
        check_name(name, "admin name")
        text(password_hash, "password hash")
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM admins WHERE name = ?", (name,)).fetchone():
                raise ConflictError("an admin with that name already exists")
            conn.execute("INSERT INTO admins (name, password_hash, created_at) "
                         "VALUES (?, ?, ?)", (name, password_hash, now_iso()))
        log.info("added admin %s", name)

    def get_admin(self, name: str) -> Admin | None:
        if not isinstance(name, str):
            return None
        rows = self._db.read("SELECT * FROM admins WHERE name = ?", (name,))
        return Admin(rows[0]["name"], rows[0]["password_hash"], rows[0]["created_at"]) \
            if rows else None

    def count_admins(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM admins")[0][0])

    def set_admin_password(self, name: str, password_hash: str) -> None:
        text(password_hash, "password hash")
        with self._db.tx() as conn:
            if conn.execute("UPDATE admins SET password_hash = ? WHERE name = ?",
                            (password_hash, name)).rowcount == 0:
                raise NotFoundError(f"no such admin: {name!r:.80}")
            conn.execute("DELETE FROM web_sessions WHERE admin = ?", (name,))

    def add_session(self, sid_hash: str, admin: str, expires_at: float) -> None:
        text(sid_hash, "session hash", 64)
        with self._db.tx() as conn:
            conn.execute("DELETE FROM web_sessions WHERE expires_at < ?", (time.time(),))
            conn.execute("INSERT INTO web_sessions (sid_hash, admin, expires_at) "
                         "VALUES (?, ?, ?)", (sid_hash, admin, float(expires_at)))

    def session_admin(self, sid_hash: str, now: float) -> str | None:
        rows = self._db.read("SELECT admin FROM web_sessions WHERE sid_hash = ? AND "
                             "expires_at > ?", (sid_hash, now))
        return rows[0][0] if rows else None

    def end_session(self, sid_hash: str) -> None:
        with self._db.tx() as conn:
            conn.execute("DELETE FROM web_sessions WHERE sid_hash = ?", (sid_hash,))
