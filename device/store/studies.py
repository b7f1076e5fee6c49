"""The ``studies`` and ``study_slices`` tables of the SQLite case store: which study each
slice belongs to (written in the case's own commit), a study with its slices, the list
of studies, and the clinician's label for a whole study.

How a study's label and its slices' labels are kept in step: "no tumour in this study"
labels each of its unlabelled slices "no tumour" (refused while a slice is labelled
tumour); a slice labelled tumour makes a study labelled "no tumour" a tumour study; a
slice added to a study labelled "no tumour" takes that label away (nobody has read it
yet). A slice relabelled from tumour to none leaves a tumour study as it is: the
clinician labels the study again.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from device.exc import ConflictError, NotFoundError
from device.store.base import STUDY_ID, Case, StudyRef, check_label, check_name
from device.store.db import CASE_FIELDS, Database, case_from_row
from models.core.sqlitedb import now_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    """A study and its slices: series by series (in the order they came), each by
    instance number, then upload; each slice's instance number and series (1, 2, ...)."""

    id: str
    created_at: str
    grouped_by: str
    label: int | None
    labelled_by: str | None
    labelled_at: str | None
    cases: list[Case]
    instances: list[int | None]
    series_of: list[int]

    @property
    def series(self) -> int:
        return max(self.series_of, default=0)

    def slices(self) -> list[tuple[Case, int | None, int]]:
        """(case, instance number, series) of each slice, in slice order."""
        return list(zip(self.cases, self.instances, self.series_of))


@dataclass(frozen=True)
class StudyRow:
    """One line of the study list."""

    id: str
    created_at: str
    slices: int
    suspected: int
    top_probability: float
    label: int | None


def check_study_id(study_id: object) -> str:
    if not isinstance(study_id, str) or not STUDY_ID.fullmatch(study_id):
        raise NotFoundError("no such study")
    return study_id


def insert_study(conn: sqlite3.Connection, case_id: str, ref: StudyRef | None) -> None:
    """Inside the case's own transaction: the study (if new) and the slice's place in it."""
    if ref is None:
        return
    conn.execute("INSERT OR IGNORE INTO studies (id, created_at, grouped_by) VALUES (?, ?, ?)",
                 (ref.id, now_iso(), ref.grouped_by))
    conn.execute("UPDATE studies SET label = NULL, labelled_by = NULL, labelled_at = NULL "
                 "WHERE id = ? AND label = 0", (ref.id,))
    conn.execute("INSERT INTO study_slices VALUES (?, ?, ?, ?)",
                 (case_id, ref.id, ref.series_hash, ref.instance))


def tumour_label_reaches_study(conn: sqlite3.Connection, case_id: str, user: str) -> None:
    """Inside a slice's labelling: a tumour in a slice is a tumour in its study."""
    if conn.execute("UPDATE studies SET label = 1, labelled_by = ?, labelled_at = ? "
                    "WHERE label = 0 AND id = (SELECT study_id FROM study_slices "
                    "WHERE case_id = ?)", (user, now_iso(), case_id)).rowcount:
        log.info("case %s labelled tumour: its study is now a tumour study", case_id)


class StudyQueries:
    """The store's study methods (a mixin of SQLiteCaseStore)."""

    _db: Database

    def study_of(self, case_id: str) -> str | None:
        rows = self._db.read("SELECT study_id FROM study_slices WHERE case_id = ?", (case_id,))
        return rows[0][0] if rows else None

    def gate_keys(self, case_ids: list[str]) -> list[str]:
        """What decides each case's side of the local gate (:mod:`device.gate`): its
        study's id, else its image's SHA-256; a case deleted meanwhile, its own id."""
        keys: dict[str, str] = {}
        for start in range(0, len(case_ids), 500):  # SQLite's bound-parameter limit
            chunk = case_ids[start:start + 500]
            keys.update(self._db.read(
                "SELECT c.id, COALESCE(s.study_id, c.image_sha256) FROM cases c LEFT JOIN "
                f"study_slices s ON s.case_id = c.id WHERE c.id IN "
                f"({', '.join('?' * len(chunk))})", tuple(chunk)))
        return [keys.get(i, i) for i in case_ids]

    def study(self, study_id: str) -> Study:
        rows = self._db.read("SELECT * FROM studies WHERE id = ?", (check_study_id(study_id),))
        if not rows:
            raise NotFoundError("no such study")
        slices = self._db.read(
            f"SELECT {', '.join(CASE_FIELDS)}, s.instance AS instance, "
            "s.series_hash AS series_hash FROM cases c JOIN study_slices s "
            "ON s.case_id = c.id WHERE s.study_id = ? ORDER BY (SELECT MIN(c2.created_at) "
            "FROM study_slices s2 JOIN cases c2 ON c2.id = s2.case_id WHERE s2.study_id = "
            "s.study_id AND s2.series_hash = s.series_hash), s.series_hash, "
            "s.instance IS NULL, s.instance, c.created_at, c.id", (study_id,))
        if not slices:  # each deleted
            raise NotFoundError("this study has no slices left")
        row = rows[0]
        series = list(dict.fromkeys(r["series_hash"] for r in slices))  # in slice order
        return Study(row["id"], row["created_at"], row["grouped_by"], row["label"],
                     row["labelled_by"], row["labelled_at"],
                     [case_from_row(r) for r in slices], [r["instance"] for r in slices],
                     [series.index(r["series_hash"]) + 1 for r in slices])

    def study_references(self, study_id: str) -> list[str]:
        """The clinic's references given to the study's slices (on this appliance only)."""
        return [r[0] for r in self._db.read(
            "SELECT DISTINCT reference FROM case_info WHERE reference <> '' AND case_id IN "
            "(SELECT case_id FROM study_slices WHERE study_id = ?) ORDER BY reference",
            (check_study_id(study_id),))]

    def list_studies(self, limit: int = 50, offset: int = 0) -> list[StudyRow]:
        """Studies with at least one slice, newest first."""
        rows = self._db.read(
            "SELECT st.id, st.created_at, COUNT(*), SUM(c.predicted_label), "
            "MAX(c.probability), st.label FROM studies st "
            "JOIN study_slices s ON s.study_id = st.id JOIN cases c ON c.id = s.case_id "
            "GROUP BY st.id ORDER BY st.created_at DESC, st.id LIMIT ? OFFSET ?",
            (max(1, min(int(limit), 200)), max(0, min(int(offset), 10**6))))
        return [StudyRow(*tuple(r)) for r in rows]

    def count_studies(self) -> int:
        return int(self._db.read("SELECT COUNT(DISTINCT study_id) FROM study_slices")[0][0])

    def label_study(self, study_id: str, label: int, user: str) -> Study:
        """Record the clinician's label for the whole study; "no tumour" (0) also labels
        each unlabelled slice "no tumour". ConflictError (409) if a slice is labelled
        tumour and the study "no tumour": nothing is changed."""
        label, user = check_label(label), check_name(user, "user")
        with self._db.tx() as conn:
            if not conn.execute("SELECT 1 FROM studies WHERE id = ?",
                                (check_study_id(study_id),)).fetchone():
                raise NotFoundError("no such study")
            ids = "SELECT case_id FROM study_slices WHERE study_id = ?"
            if label == 0:
                tumour = conn.execute(f"SELECT COUNT(*) FROM cases WHERE id IN ({ids}) "
                                      "AND confirmed_label = 1", (study_id,)).fetchone()[0]
                if tumour:
                    raise ConflictError(
                        f"{tumour} slice(s) of this study are labelled tumour: label them "
                        "again first, or label the study tumour")
                conn.execute(f"UPDATE cases SET confirmed_label = 0, confirmed_by = ?, "
                             f"confirmed_at = ? WHERE id IN ({ids}) AND confirmed_label "
                             "IS NULL", (user, now_iso(), study_id))
            conn.execute("UPDATE studies SET label = ?, labelled_by = ?, labelled_at = ? "
                         "WHERE id = ?", (label, user, now_iso(), study_id))
        log.info("study %s labelled %d", study_id, label)
        return self.study(study_id)
