"""SQLite plumbing of the coordinator store: the connection, durable file writes and the
argument checks shared by the store's methods.

Copied in spirit from the appliance's store (the coordinator is a separate service and
never imports ``device``): WAL, foreign keys, ``busy_timeout``, one connection behind a
lock, IMMEDIATE transactions, and files made durable (fsync, rename, directory fsync)
before the row that names them commits.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from coordinator.exc import InputError, StoreError

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
TMP_PREFIX = ".tmp-"
MAX_JSON_CHARS = 65536


def now_iso() -> str:
    """The current time as ISO-8601 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@contextlib.contextmanager
def sqlite_errors() -> Iterator[None]:
    """Turn sqlite3 errors into StoreError (their messages name constraints, not values)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"database error: {exc}") from exc


class Database:
    """The coordinator database: opens it (WAL, foreign keys, busy_timeout), applies
    ``schema.sql`` and serialises access.

    Threads share ONE connection (``check_same_thread=False``) behind a re-entrant lock
    rather than a connection per thread: the coordinator serves a few dozen appliances,
    so serialising millisecond statements costs nothing measurable, no in-process writer
    ever fails with "database is locked", and ``close()`` really closes. WAL +
    ``busy_timeout`` still let another process (the ``enroll``/``revoke`` CLI) use the
    file concurrently.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = not path.exists()
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database: {exc}") from exc
        try:
            if created:  # before the first write: -wal/-shm copy the file's mode
                os.chmod(path, 0o600)
            with sqlite_errors():
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                # FULL: an acknowledged update survives power loss of the coordinator.
                conn.execute("PRAGMA synchronous = FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"database schema {version} is newer than this "
                                     f"software supports ({SCHEMA_VERSION})")
                conn.executescript(SCHEMA.read_text(encoding="utf-8"))
        except BaseException:
            conn.close()
            raise
        if mode != "wal":
            log.warning("SQLite journal mode is %s, not wal", mode)
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock; rolled back on any exception.

        IMMEDIATE takes SQLite's write lock at BEGIN, so checks made inside the block
        still hold at COMMIT even against another process. sqlite3 errors surface as
        StoreError; other exceptions propagate unchanged.
        """
        with self._lock, sqlite_errors():
            conn = self._live()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """All rows of one query (StoreError on a database error)."""
        with self._lock, sqlite_errors():
            return self._live().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/name`` atomically and durably; return the path.

    Temp file (mode 0600) in the same directory, fsync, rename, directory fsync: after a
    crash the final name holds either nothing or all of ``data``; a leftover temp file
    starts with :data:`TMP_PREFIX` and is removed by the store's ``recover()``.
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return directory / name


def number(value: Any, what: str, lo: float, hi: float = math.inf,
           integer: bool = False) -> Any:
    """``value`` as int/float if it is a finite number in [lo, hi] (never a bool)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{what} must be a{'n integer' if integer else ' number'} "
                         f"in [{lo}, {hi}]")
    return int(value) if integer else float(value)


def optional_int(value: Any, what: str) -> int | None:
    """None, or ``value`` as an int >= 0."""
    return None if value is None else number(value, what, 0, integer=True)


def text(value: Any, what: str, max_len: int = 1024, allow_empty: bool = False) -> str:
    """``value`` if it is a string of at most ``max_len`` chars (non-empty unless
    ``allow_empty``), else InputError."""
    if not isinstance(value, str) or len(value) > max_len or not (value or allow_empty):
        raise InputError(f"{what} must be a {'' if allow_empty else 'non-empty '}string "
                         f"of at most {max_len} chars")
    return value


def to_json(value: Any, what: str) -> str:
    """``value`` as canonical JSON text if it is a dict with str keys that serialises
    without NaN/inf and within :data:`MAX_JSON_CHARS`, else InputError."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{what} must be a JSON object (dict with str keys)")
    try:
        out = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be JSON-serialisable without NaN/inf") from exc
    if len(out) > MAX_JSON_CHARS:
        raise InputError(f"{what} must serialise to at most {MAX_JSON_CHARS} chars")
    return out


def from_json(raw: str) -> dict[str, Any]:
    """A dict from a JSON column (written by :func:`to_json`)."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise StoreError("a JSON column does not hold an object")
    return value
