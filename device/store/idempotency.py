"""The ``idempotency_keys`` table of the SQLite case store: a key sent with a prediction
request, claimed in its case's own commit, answers a repeated request with that case."""
from __future__ import annotations

import sqlite3
import time

from device.store.base import KEY_TTL_S, Case, DuplicateKey, IdempotencyKey
from device.store.db import CASE_FIELDS, Database, case_from_row, text


def claim_key(conn: sqlite3.Connection, key: IdempotencyKey, case_id: str) -> None:
    """Record ``key`` for the new case in its transaction; DuplicateKey if it is taken
    (the caller's savepoint then rolls the case back). Keys past their day go."""
    now = time.time()
    conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - KEY_TTL_S,))
    found = conn.execute("SELECT case_id FROM idempotency_keys WHERE user = ? AND key = ?",
                         (key.user, key.key)).fetchone()
    if found is not None:
        raise DuplicateKey(found[0])
    conn.execute("INSERT INTO idempotency_keys (user, key, request_sha256, case_id, "
                 "created_at) VALUES (?, ?, ?, ?, ?)",
                 (text(key.user, "user", 256), text(key.key, "idempotency key", 255),
                  key.request_sha256, case_id, now))


class IdempotencyQueries:
    """The store's :meth:`case_for_key` (a mixin of SQLiteCaseStore)."""

    _db: Database

    def case_for_key(self, user: str, key: str) -> tuple[Case, str] | None:
        rows = self._db.read(
            f"SELECT {', '.join('c.' + f for f in CASE_FIELDS)}, k.request_sha256 FROM "
            "idempotency_keys k JOIN cases c ON c.id = k.case_id WHERE k.user = ? AND "
            "k.key = ? AND k.created_at >= ?", (user, key, time.time() - KEY_TTL_S))
        return (case_from_row(rows[0]), rows[0]["request_sha256"]) if rows else None
