"""The ``case_values`` table of the SQLite case store: a DICOM slice's stored values (a
16-bit PNG, written in the case's own commit) for the viewer's window/level; the stored
image is windowed to 8 bits, as the model saw it."""
from __future__ import annotations

import sqlite3

from device.exc import InputError
from device.store.base import check_case_id
from device.store.db import Database

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def insert_raw(conn: sqlite3.Connection, case_id: str, raw: tuple[bytes, int] | None) -> None:
    """Inside the case's own transaction."""
    if raw is None:
        return
    png, offset = raw
    if not isinstance(png, bytes) or png[:8] != _PNG_MAGIC or type(offset) is not int:
        raise InputError("raw values must be (PNG bytes, integer offset)")
    conn.execute("INSERT INTO case_values VALUES (?, ?, ?)", (case_id, offset, png))


class RawValueQueries:
    """The store's :meth:`raw_values` (a mixin of SQLiteCaseStore)."""

    _db: Database

    def raw_values(self, case_id: str) -> tuple[bytes, int] | None:
        """The case's stored DICOM values (16-bit PNG) and their offset, or None."""
        rows = self._db.read("SELECT png, offset FROM case_values WHERE case_id = ?",
                             (check_case_id(case_id),))
        return (bytes(rows[0][0]), int(rows[0][1])) if rows else None
