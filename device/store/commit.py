"""Group commit: concurrent writers share one COMMIT, and so one fsync.

With ``synchronous = FULL`` every COMMIT waits for the disk. When several uploads finish
at once, a single writer thread runs their transactions one after another inside one
SQLite transaction (each in its own SAVEPOINT, so one failing leaves the others in) and
commits once; each caller returns when the COMMIT holding its work is on disk. Nothing
waits on purpose: a batch is whatever queued while the previous COMMIT was flushing,
so a lone upload commits at once and a busy appliance fsyncs less than once per upload.
Give it a :class:`Database` of its own on the file: while it waits for the disk, reads
(a sign-in, a page) go on through the shared one (WAL lets readers and one writer work
at once).
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from models.core.sqlitedb import Database

log = logging.getLogger(__name__)

MAX_BATCH = 64  # transactions per COMMIT: bounds the time one batch holds the database
_STOP = object()


@dataclass(eq=False)
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """One writer thread committing the transactions of many callers in batches.

    Parameters
    ----------
    db : Database
        The database written to, each batch in one :meth:`Database.tx`; best one that
        nothing else uses, so that its lock is never held by a reader.
    name : str
        Name of the writer thread (logs and debuggers).
    """

    def __init__(self, db: Database, name: str = "group-commit") -> None:
        self._db = db
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self.commits = 0  # COMMITs made: fewer than transactions when uploads share them
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(conn)`` in a transaction and return its result once committed.

        Raises what ``work`` raised (sqlite3 errors as the database's error), or the
        database's error when the COMMIT fails; either way nothing of ``work`` is kept.
        """
        job = _Job(work)
        with self._lock:
            if self._closed:
                raise self._db.error("store is closed")
            self._queue.put(job)
        while not job.done.wait(timeout=1.0):
            if not self._thread.is_alive():  # cannot happen unless the thread was killed
                raise self._db.error("the database writer has stopped")
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    self._queue.put(_STOP)  # after this batch
                    break
                batch.append(job)
            self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self._db.tx() as conn:
                for job in batch:
                    self._run_one(conn, job)
            self.commits += 1
        except BaseException as exc:  # BEGIN or COMMIT failed: none of the batch is kept
            log.warning("a commit of %d transaction(s) failed: %s", len(batch), exc)
            for job in batch:
                if job.error is None:
                    job.error, job.result = exc, None
        finally:
            for job in batch:
                job.done.set()

    def _run_one(self, conn: sqlite3.Connection, job: _Job) -> None:
        conn.execute("SAVEPOINT job")
        try:
            job.result = job.work(conn)
        except BaseException as exc:
            conn.execute("ROLLBACK TO job")
            job.error = exc
            if isinstance(exc, sqlite3.Error):  # as Database.tx reports them
                job.error = self._db.error(f"database error: {exc}")
                job.error.__cause__ = exc
        conn.execute("RELEASE job")
