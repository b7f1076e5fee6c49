"""SQLite implementation of the case store: rows in the appliance database, images on
local disk only.

Crash safety of :meth:`SQLiteCaseStore.add_case` with one fsync: the image (and heat map)
files are written first, without fsync; then the row, the embedding and a copy of the
files' bytes commit in one transaction, shared with other uploads committing at the same
moment (:mod:`device.store.commit`). The copies are dropped once the files are fsynced
in the background, and written back at start if a power cut came first
(:mod:`device.store.journal`). A crash can therefore leave a file without a row, never a
row without its file; :meth:`SQLiteCaseStore.recover` (run at every start) deletes such
files and leftover temp files.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import logging
import re
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from device.exc import InputError, NotFoundError, StorageFullError, StoreError
from device.store.base import (
    EXPORT_FIELDS, MAX_LIST_LIMIT, MAX_LIST_OFFSET, SOURCES, Case, CaseInfo, CaseStore,
    IdempotencyKey, check_case_id, check_info, check_label, check_name, check_status,
)
from device.store.case_info import CaseInfoQueries, insert_info, reference_filter
from device.store.commit import GroupCommit
from device.store.db import CASE_FIELDS, DB_NAME, Database, case_from_row, number, text
from device.store.heads import HeadQueries, insert_head
from device.store.idempotency import IdempotencyQueries, claim_key
from device.store.journal import FileJournal, stage, write_file
from device.store.raw_values import RawValueQueries, insert_raw
from device.store.studies import StudyQueries, tumour_label_reaches_study
from models.core.sqlitedb import now_iso, sweep_dir

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# The only names we create: <id>.png or .jpg (the image), <id>-heatmap-<8 hex>.png (a
# heat map; <id>-heatmap.png before heat maps got a new name at each drawing).
_OWNED_FILE = re.compile(r"[0-9a-f]{32}(\.png|\.jpg|-heatmap(-[0-9a-f]{8})?\.png)")
_FIELDS = CASE_FIELDS
_COLUMNS = ", ".join(_FIELDS)
_INSERT = f"INSERT INTO cases ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})"
_WHERE = {"all": "1", "unconfirmed": "confirmed_label IS NULL",
          "confirmed": "confirmed_label = predicted_label",
          "disagreed": "confirmed_label <> predicted_label"}


def _png(data: Any, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)) \
            or not bytes(data[:8]) == _PNG_MAGIC:
        raise InputError(f"{what} must be PNG bytes")
    return bytes(data)


def _image(data: Any) -> tuple[bytes, str]:
    """The image's bytes and file extension: PNG or JPEG, else InputError."""
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:3]) == _JPEG_MAGIC:
        return bytes(data), "jpg"
    return _png(data, "image"), "png"


def _vector(vector: Any) -> bytes:
    """A non-empty finite 1-D embedding as little-endian float32 bytes, else InputError."""
    try:
        with np.errstate(over="ignore"):  # overflow to inf is refused just below
            vec = np.asarray(vector, dtype="<f4")
    except (TypeError, ValueError) as exc:
        raise InputError("embedding must be numeric") from exc
    if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
        raise InputError("embedding must be a non-empty finite 1-D vector")
    return vec.tobytes()


def _disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space: ENOSPC/EDQUOT, or SQLITE_FULL."""
    cause = exc if isinstance(exc, (OSError, sqlite3.Error)) else exc.__cause__
    if isinstance(cause, OSError):
        return cause.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class SQLiteCaseStore(CaseInfoQueries, StudyQueries, RawValueQueries, IdempotencyQueries,
                      HeadQueries, CaseStore):
    """Cases in ``data_dir/neuroedge.db``, images in ``data_dir/images/``.

    Pass ``db`` to share one :class:`Database` with :class:`SQLiteAccountStore`; it is
    closed when the last store using it is closed.
    """

    def __init__(self, data_dir: Path, *, db: Database | None = None) -> None:
        self._db = (db if db is not None else Database(Path(data_dir) / DB_NAME)).acquire()
        self._closed = False
        self._images = Path(data_dir) / IMAGES_DIR
        self._images.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Names of files written whose row may not have committed yet: recover() keeps
        # them. Taken before a file is written, so recover() never misses one.
        self._files_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._journal = FileJournal(self._db, self._images)
        self._writer: Database | None = None
        self._commits: GroupCommit | None = None
        try:
            self._journal.restore()
            self.recover()
        except BaseException:
            self.close()
            raise
        # The writer's own connection: reads never wait for an upload's fsync.
        self._writer = Database(self._db.path)
        self._commits = GroupCommit(self._writer, "case-commit")
        self._journal.start(self._commits.run)

    def add_case(self, image: bytes, *, source: str, width: int, height: int,
                 probability: float, predicted_label: int, threshold: float,
                 uncertain: bool, model_version: int, latency_ms: float,
                 heatmap_png: bytes | None = None, backbone_id: str | None = None,
                 embedding: np.ndarray | None = None,
                 idempotency: IdempotencyKey | None = None, info: CaseInfo | None = None,
                 raw: tuple[bytes, int] | None = None, head: str | None = None) -> Case:
        image, extension = _image(image)
        info = None if info is None else check_info(info)
        heatmap = None if heatmap_png is None else _png(heatmap_png, "heat map")
        if source not in SOURCES:
            raise InputError(f"source must be one of {', '.join(SOURCES)}")
        if not isinstance(uncertain, (bool, np.bool_)):
            raise InputError("uncertain must be a bool")
        if (backbone_id is None) != (embedding is None):
            raise InputError("an embedding needs its backbone_id, and the other way round")
        vector = None if embedding is None else _vector(embedding)
        case_id = uuid.uuid4().hex
        case = Case(
            id=case_id, created_at=now_iso(), source=source,
            image_name=f"{case_id}.{extension}", image_sha256=hashlib.sha256(image).hexdigest(),
            width=number(width, "width", 1, integer=True),
            height=number(height, "height", 1, integer=True),
            probability=number(probability, "probability", 0, 1),
            predicted_label=check_label(predicted_label),
            threshold=number(threshold, "threshold", 0, 1), uncertain=bool(uncertain),
            model_version=number(model_version, "model_version", 0, integer=True),
            latency_ms=number(latency_ms, "latency_ms", 0),
            heatmap_name=None if heatmap is None else f"{case_id}-heatmap.png")
        files = {case.image_name: image}
        if heatmap is not None and case.heatmap_name is not None:
            files[case.heatmap_name] = heatmap
        if vector is not None:
            text(backbone_id, "backbone_id", 256)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT, tuple(getattr(case, name) for name in _FIELDS))
            for name, data in files.items():
                stage(conn, case_id, name, data)
            if vector is not None:
                conn.execute("INSERT INTO embeddings VALUES (?, ?, ?, ?)",
                             (case_id, backbone_id, len(vector) // 4, vector))
            if idempotency is not None:
                claim_key(conn, idempotency, case_id)
            insert_info(conn, case_id, info)
            insert_raw(conn, case_id, raw)
            insert_head(conn, case_id, head)
        self._write_then_commit(files, insert)
        log.info("stored case %s (source=%s, model v%s)", case_id, source, model_version)
        return case

    def _write_then_commit(self, files: dict[str, bytes],
                           work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Write ``files`` (no fsync), then commit ``work``, which stages them; returns
        its result. If anything fails, the files are removed and nothing is kept."""
        if self._commits is None:
            raise StoreError("store is closed")
        with self._files_lock:
            self._in_flight.update(files)
        try:
            for name, data in files.items():
                write_file(self._images / name, data)
            result = self._commits.run(work)
        except Exception as exc:  # not committed (a BaseException may have been)
            for name in files:
                with contextlib.suppress(OSError):
                    (self._images / name).unlink(missing_ok=True)
            if _disk_full(exc):
                raise StorageFullError("the appliance's disk is full: nothing was stored; "
                                       "send it again once space is freed") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write image file: {exc.strerror}") from exc
            raise
        finally:
            with self._files_lock:
                self._in_flight.difference_update(files)
        self._journal.written(len(files), sum(map(len, files.values())))
        return result

    def get(self, case_id: str) -> Case:
        rows = self._db.read(f"SELECT {_COLUMNS} FROM cases WHERE id = ?",
                             (check_case_id(case_id),))
        if not rows:
            raise NotFoundError("no such case")
        return case_from_row(rows[0])

    def ids_starting_with(self, prefix: str, limit: int = 2) -> list[str]:
        if not isinstance(prefix, str) or not re.fullmatch(r"[0-9a-f]{1,32}", prefix):
            raise InputError("a case id is made of the digits 0-9 and the letters a-f")
        rows = self._db.read("SELECT id FROM cases WHERE substr(id, 1, ?) = ? ORDER BY id "
                             "LIMIT ?", (len(prefix), prefix,
                                         number(limit, "limit", 1, MAX_LIST_LIMIT, True)))
        return [row[0] for row in rows]

    def list(self, status: str = "all", limit: int = 50, offset: int = 0,
             reference: str = "") -> list[Case]:
        where, params = reference_filter(reference)
        rows = self._db.read(
            f"SELECT {_COLUMNS} FROM cases WHERE {_WHERE[check_status(status)]} AND "
            f"{where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, number(limit, "limit", 0, MAX_LIST_LIMIT, integer=True),
             number(offset, "offset", 0, MAX_LIST_OFFSET, integer=True)))
        return [case_from_row(row) for row in rows]

    def count(self, status: str = "all", reference: str = "") -> int:
        where, params = reference_filter(reference)
        return int(self._db.read(f"SELECT COUNT(*) FROM cases WHERE "
                                 f"{_WHERE[check_status(status)]} AND {where}", params)[0][0])

    def confirm(self, case_id: str, label: int, user: str) -> Case:
        check_case_id(case_id)
        label, user = check_label(label), check_name(user, "user")
        with self._db.tx() as conn:
            if conn.execute("UPDATE cases SET confirmed_label = ?, confirmed_by = ?, "
                            "confirmed_at = ? WHERE id = ?",
                            (label, user, now_iso(), case_id)).rowcount == 0:
                raise NotFoundError("no such case")
            if label == 1:
                tumour_label_reaches_study(conn, case_id, user)
            row = conn.execute(f"SELECT {_COLUMNS} FROM cases WHERE id = ?",
                               (case_id,)).fetchone()
        log.info("case %s confirmed", case_id)
        return case_from_row(row)

    def delete(self, case_id: str) -> None:
        case = self.get(case_id)
        with self._db.tx() as conn:  # row first: a crash now leaves only orphan files
            if conn.execute("DELETE FROM cases WHERE id = ?", (case.id,)).rowcount == 0:
                raise NotFoundError("no such case")
        for path in (self.image_path(case), self.heatmap_path(case)):
            if path is not None:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # recover() removes it at the next start
                    log.warning("case %s: cannot remove a file: %s", case.id, exc.strerror)
        log.info("deleted case %s", case.id)

    def _path(self, name: str) -> Path:
        if not _OWNED_FILE.fullmatch(name):  # defence in depth: names come from the row
            raise StoreError("case record holds an invalid file name")
        return self._images / name

    def image_path(self, case: Case) -> Path:
        return self._path(case.image_name)

    def heatmap_path(self, case: Case) -> Path | None:
        return None if case.heatmap_name is None else self._path(case.heatmap_name)

    def set_heatmap(self, case_id: str, png: bytes) -> Case:
        data = _png(png, "heat map")
        case = self.get(case_id)
        name = f"{case.id}-heatmap-{secrets.token_hex(4)}.png"  # never an existing file

        def update(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT heatmap_name FROM cases WHERE id = ?",
                               (case.id,)).fetchone()
            if row is None:  # deleted while the heat map was drawn
                raise NotFoundError("no such case")
            conn.execute("UPDATE cases SET heatmap_name = ? WHERE id = ?", (name, case.id))
            conn.execute("DELETE FROM pending_files WHERE name = ?", (row[0],))
            stage(conn, case.id, name, data)
            return row[0]
        replaced = self._write_then_commit({name: data}, update)
        if replaced is not None:  # if this fails, recover() removes it at the next start
            with contextlib.suppress(OSError):
                self._path(replaced).unlink(missing_ok=True)
        return self.get(case_id)

    def heatmaps_valid_since(self, drawn_by: str) -> float:
        text(drawn_by, "drawn_by", 256)
        query = "SELECT drawn_by, since FROM heatmap_author WHERE id = 1"
        rows = self._db.read(query)  # a read on every view; a write only on a change
        if rows and rows[0]["drawn_by"] == drawn_by:
            return float(rows[0]["since"])
        with self._db.tx() as conn:
            row = conn.execute(query).fetchone()
            if row is not None and row["drawn_by"] == drawn_by:  # another thread did it
                return float(row["since"])
            now = time.time()
            conn.execute("INSERT INTO heatmap_author (id, drawn_by, since) VALUES (1, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET drawn_by = excluded.drawn_by, "
                         "since = excluded.since", (drawn_by, now))
        log.info("heat maps are drawn by %s from now on", drawn_by)
        return now

    def set_embedding(self, case_id: str, backbone_id: str, vector: np.ndarray) -> None:
        check_case_id(case_id)
        text(backbone_id, "backbone_id", 256)
        blob = _vector(vector)
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM cases WHERE id = ?", (case_id,)).fetchone() is None:
                raise NotFoundError("no such case")
            conn.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                         (case_id, backbone_id, len(blob) // 4, blob))

    def get_embedding(self, case_id: str, backbone_id: str) -> np.ndarray | None:
        rows = self._db.read("SELECT vector FROM embeddings WHERE case_id = ? "
                             "AND backbone_id = ?", (check_case_id(case_id), backbone_id))
        return np.frombuffer(rows[0][0], dtype="<f4").astype(np.float32) if rows else None

    def confirmed_examples(self, backbone_id: str
                           ) -> tuple[list[str], np.ndarray, np.ndarray]:
        rows = self._db.read(
            "SELECT c.id, c.confirmed_label, e.dim, e.vector FROM cases c "
            "JOIN embeddings e ON e.case_id = c.id WHERE c.confirmed_label IS NOT NULL "
            "AND e.backbone_id = ? ORDER BY c.created_at, c.rowid", (backbone_id,))
        if not rows:
            return [], np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        if len({row["dim"] for row in rows}) > 1:
            raise StoreError("embeddings of one backbone have different dimensions")
        vectors = np.stack([np.frombuffer(row["vector"], dtype="<f4") for row in rows])
        labels = np.array([row["confirmed_label"] for row in rows], dtype=np.int64)
        return [row["id"] for row in rows], vectors.astype(np.float32), labels

    def cases_missing_embedding(self, backbone_id: str) -> list[str]:
        rows = self._db.read(
            "SELECT c.id FROM cases c LEFT JOIN embeddings e ON e.case_id = c.id "
            "AND e.backbone_id = ? WHERE c.confirmed_label IS NOT NULL "
            "AND e.case_id IS NULL ORDER BY c.created_at, c.rowid", (backbone_id,))
        return [row[0] for row in rows]

    def export_csv(self, fh: TextIO) -> int:
        rows = self._db.read(f"SELECT {_COLUMNS} FROM cases ORDER BY created_at, rowid")
        writer = csv.writer(fh)
        writer.writerow(EXPORT_FIELDS)
        for case in map(case_from_row, rows):
            writer.writerow([int(case.uncertain) if name == "uncertain"
                             else getattr(case, name) for name in EXPORT_FIELDS])
        return len(rows)

    def recover(self) -> int:
        with self._files_lock:
            referenced = {row[0] for row in self._db.read(
                "SELECT image_name FROM cases UNION "
                "SELECT heatmap_name FROM cases WHERE heatmap_name IS NOT NULL")}
            return sweep_dir(self._images, referenced | self._in_flight, _OWNED_FILE,
                             "image")

    def ping(self) -> bool:
        return self._db.ping()

    def close(self) -> None:
        if self._closed:  # idempotent: release the shared database once
            return
        self._closed = True
        try:
            self._journal.stop()
            if self._commits is not None:
                self._commits.close()  # commits what is queued
            self._journal.close()  # a clean stop leaves no fsync pending
            if self._writer is not None:
                self._writer.close()
        finally:
            self._db.release()
