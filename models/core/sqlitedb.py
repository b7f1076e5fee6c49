"""SQLite plumbing shared by the appliance's and coordinator's stores.

WAL, foreign keys, ``busy_timeout``, ``synchronous = FULL`` (an acknowledged record
survives a power cut), one connection behind a re-entrant lock, IMMEDIATE transactions,
and the recovery sweep of files (written with :func:`models.core.files.write_atomic`
before the row naming them commits) that no row names. Each store binds its own schema
and exception class.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from models.core.files import fsync_dir, is_temp

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
FAILURE_TTL_S = 86400.0  # sign-in failures older than this are pruned on every insert


def now_iso() -> str:
    """The current time as ISO-8601 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_number(value: Any, what: str, lo: float, hi: float = math.inf,
                 integer: bool = False, *, error: type[Exception] = ValueError) -> Any:
    """``value`` as int/float if it is a finite number in [lo, hi] (never a bool), else
    the store's ``error``."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise error(f"{what} must be a{'n integer' if integer else ' number'} "
                    f"in [{lo}, {hi}]")
    return int(value) if integer else float(value)


def check_text(value: Any, what: str, max_len: int = 1024, allow_empty: bool = False, *,
               error: type[Exception] = ValueError) -> str:
    """``value`` if it is a string of at most ``max_len`` chars (non-empty unless
    ``allow_empty``), else the store's ``error``."""
    if not isinstance(value, str) or len(value) > max_len or not (value or allow_empty):
        raise error(f"{what} must be a {'' if allow_empty else 'non-empty '}string "
                    f"of at most {max_len} chars")
    return value


@contextlib.contextmanager
def sqlite_errors(error: type[Exception]) -> Iterator[None]:
    """Turn sqlite3 errors into ``error`` (their messages name constraints, not values)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise error(f"database error: {exc}") from exc


class Database:
    """Opens the file (mode 0600, WAL, foreign keys, busy_timeout), applies ``schema``
    and serialises access.

    Threads share ONE connection (``check_same_thread=False``) behind a lock rather than
    a connection per thread: these services serve a handful of users, so serialising
    millisecond statements costs nothing measurable, no in-process writer ever fails
    with "database is locked", and ``close()`` really closes (a per-thread connection of
    a server thread cannot be closed from the thread that shuts down). WAL +
    ``busy_timeout`` still let the CLI use the file from another process.

    Stores built on a shared instance :meth:`acquire` it and :meth:`release` it in
    their ``close()``; the last release closes the connection.
    """

    def __init__(self, path: Path, schema: Path, schema_version: int,
                 error: type[Exception]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.error = error
        created = not path.exists()
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise error(f"cannot open database: {exc}") from exc
        try:
            if created:  # before the first write: -wal/-shm copy the file's mode
                os.chmod(path, 0o600)
            with sqlite_errors(error):
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("PRAGMA synchronous = FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > schema_version:
                    raise error(f"database schema {version} is newer than this "
                                f"software supports ({schema_version})")
                conn.executescript(schema.read_text(encoding="utf-8"))
        except BaseException:
            conn.close()
            raise
        if mode != "wal":
            log.warning("SQLite journal mode is %s, not wal", mode)
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._holders = 0

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self.error("store is closed")
        return self._conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock; rolled back on any exception.

        IMMEDIATE takes SQLite's write lock at BEGIN, so checks made inside the block
        still hold at COMMIT even against another process. sqlite3 errors surface as the
        store's error; other exceptions propagate unchanged.
        """
        with self._lock, sqlite_errors(self.error):
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
        """All rows of one query (the store's error on a database error)."""
        with self._lock, sqlite_errors(self.error):
            return self._live().execute(sql, params).fetchall()

    def ping(self) -> bool:
        """True if the database answers a trivial query (health checks)."""
        try:
            return self.read("SELECT 1")[0][0] == 1
        except self.error:
            return False

    def acquire(self) -> "Database":
        """Register one more store using this database; returns ``self``."""
        with self._lock:
            self._holders += 1
        return self

    def release(self) -> None:
        """Unregister a store; the last one out closes the connection."""
        with self._lock:
            self._holders -= 1
            if self._holders <= 0:
                self.close()

    def close(self) -> None:
        """Close the connection now, whoever still uses it; idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class LoginFailures:
    """Failed sign-ins in a store's ``login_failures (key, at)`` table, counted within a
    window for throttling; both stores' schemas have the table. ``error`` is the store's
    InputError."""

    def __init__(self, db: Database, error: type[Exception]) -> None:
        self._db, self._error = db, error

    def record(self, key: str, now: float) -> None:
        """Remember a failure of ``key`` at ``now``; prunes failures past the TTL."""
        check_text(key, "throttle key", error=self._error)
        now = check_number(now, "now", 0, error=self._error)
        with self._db.tx() as conn:
            conn.execute("INSERT INTO login_failures (key, at) VALUES (?, ?)", (key, now))
            conn.execute("DELETE FROM login_failures WHERE at < ?", (now - FAILURE_TTL_S,))

    def recent(self, key: str, since: float) -> int:
        """Failures of ``key`` at or after ``since`` (epoch seconds)."""
        since = check_number(since, "since", -math.inf, error=self._error)
        return int(self._db.read("SELECT COUNT(*) FROM login_failures WHERE key = ? "
                                 "AND at >= ?", (key, since))[0][0])

    def clear(self, key: str, prefix: bool = False) -> None:
        """Forget the failures of ``key``, or with ``prefix`` of every key starting so."""
        with self._db.tx() as conn:
            if prefix:
                conn.execute("DELETE FROM login_failures WHERE substr(key, 1, ?) = ?",
                             (len(key), key))
            else:
                conn.execute("DELETE FROM login_failures WHERE key = ?", (key,))


def sweep_dir(directory: Path, referenced: set[str], owned: re.Pattern[str], what: str
              ) -> int:
    """A store's ``recover()`` scan: delete temps (:func:`models.core.files.is_temp`) and
    files named like ours (``owned``) that no record references; returns how many.

    Other files are kept. Files that records name but the folder lacks are logged as
    ``what`` files, never deleted from the records. The directory is fsynced if anything
    was deleted. The caller holds what keeps writers out during the scan.
    """
    temps = orphans = 0
    present = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if is_temp(entry.name):
                temps += 1
            elif owned.fullmatch(entry.name) and entry.name not in referenced:
                orphans += 1
            else:
                present.add(entry.name)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    if temps or orphans:
        fsync_dir(directory)
        log.info("recovery removed %d temp file(s) and %d orphan %s file(s)", temps,
                 orphans, what)
    if referenced - present:
        log.warning("%d %s file(s) are missing from %s", len(referenced - present), what,
                    directory)
    return temps + orphans
