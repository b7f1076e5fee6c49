"""The ``case_heads`` table of the SQLite case store: which of this clinic's own heads
(:mod:`device.personal`) made a case's prediction, written in the case's own commit."""
from __future__ import annotations

import re
import sqlite3

from device.exc import InputError
from device.store.base import check_case_id
from device.store.db import Database

_HEAD_ID = re.compile(r"[0-9a-f]{12}")


def insert_head(conn: sqlite3.Connection, case_id: str, head: str | None) -> None:
    """Inside the case's own transaction; nothing for the bundle's head (None)."""
    if head is None:
        return
    if not isinstance(head, str) or not _HEAD_ID.fullmatch(head):
        raise InputError("head must be the 12-hex id of a clinic's own head")
    conn.execute("INSERT INTO case_heads VALUES (?, ?)", (case_id, head))


class HeadQueries:
    """The store's :meth:`head_of` (a mixin of SQLiteCaseStore)."""

    _db: Database

    def head_of(self, case_id: str) -> str | None:
        """The id of the clinic's own head that made the case, None for the bundle's."""
        rows = self._db.read("SELECT head FROM case_heads WHERE case_id = ?",
                             (check_case_id(case_id),))
        return rows[0][0] if rows else None
