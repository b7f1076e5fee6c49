"""The ``case_info`` table of the SQLite case store (:class:`~device.store.base.CaseInfo`):
written with the case in its one commit, read, replaced, and searched by reference."""
from __future__ import annotations

import sqlite3

from device.exc import NotFoundError
from device.store.base import MAX_REFERENCE, CaseInfo, check_case_id, check_info
from device.store.db import Database, text
from device.store.studies import insert_study


def insert_info(conn: sqlite3.Connection, case_id: str, info: CaseInfo | None) -> None:
    """Inside the case's own transaction: no second commit for it."""
    if info is not None and any((info.reference, info.note, info.file_name)):
        conn.execute("INSERT INTO case_info VALUES (?, ?, ?, ?)",
                     (case_id, info.reference, info.note, info.file_name))
    if info is not None:
        insert_study(conn, case_id, info.study)


def reference_filter(reference: str) -> tuple[str, tuple]:
    """SQL for "the reference contains ``reference``" (case-insensitive, ``%`` and ``_``
    taken literally), and its parameter; always true for ""."""
    text(reference, "reference", MAX_REFERENCE, allow_empty=True)
    if not reference.strip():
        return "1", ()
    pattern = reference.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return ("id IN (SELECT case_id FROM case_info WHERE reference LIKE ? ESCAPE '\\')",
            (f"%{pattern}%",))


class CaseInfoQueries:
    """The store's :meth:`get_info` and :meth:`set_info` (a mixin of SQLiteCaseStore)."""

    _db: Database

    def get_info(self, case_id: str) -> CaseInfo:
        rows = self._db.read("SELECT c.id, i.reference, i.note, i.file_name FROM cases c "
                             "LEFT JOIN case_info i ON i.case_id = c.id WHERE c.id = ?",
                             (check_case_id(case_id),))
        if not rows:
            raise NotFoundError("no such case")
        return CaseInfo(*(value or "" for value in tuple(rows[0])[1:]))

    def set_info(self, case_id: str, reference: str, note: str) -> CaseInfo:
        info = check_info(CaseInfo(reference, note))
        with self._db.tx() as conn:
            if not conn.execute("SELECT 1 FROM cases WHERE id = ?",
                                (check_case_id(case_id),)).fetchone():
                raise NotFoundError("no such case")
            conn.execute("INSERT INTO case_info (case_id, reference, note) VALUES (?, ?, ?) "
                         "ON CONFLICT (case_id) DO UPDATE SET reference = excluded.reference, "
                         "note = excluded.note", (case_id, info.reference, info.note))
        return self.get_info(case_id)
