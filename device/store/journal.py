"""Image files made durable by the commit of the row that names them: one fsync per
upload instead of four.

A case's files (image, heat map) are written without fsync, and their bytes go into the
``pending_files`` table in the same transaction as the row, so the WAL commit makes both
durable at once. Files are never rewritten in place: a new heat map gets a new name.
Later, when the appliance has been idle for :data:`IDLE_S` or :data:`FLUSH_FILES` files
or :data:`FLUSH_BYTES` bytes are pending, a background thread fsyncs the files and their
folder and only then deletes their copies. At start, :meth:`FileJournal.restore` writes
every pending file again from its copy: a power cut can tear a file that was not yet
fsynced, but not its copy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from models.core.files import TMP_SUFFIX, fsync_dir
from models.core.sqlitedb import Database

log = logging.getLogger(__name__)

IDLE_S = 0.5          # flush once nothing was written for this long...
FLUSH_FILES = 256     # ...or when this many files...
FLUSH_BYTES = 64 << 20  # ...or bytes wait for their fsync


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` (mode 0600) without fsync, under a temp
    name renamed into place, so a reader never sees it half written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stage(conn: sqlite3.Connection, case_id: str, name: str, data: bytes) -> None:
    """Keep ``data``, the content of file ``name`` of case ``case_id``, until the file is
    flushed; call inside the transaction that commits the row naming the file."""
    conn.execute("INSERT INTO pending_files (name, case_id, data) VALUES (?, ?, ?)",
                 (name, case_id, data))


class FileJournal:
    """The pending files of one folder, and the thread that flushes them.

    Parameters
    ----------
    db : Database
        Holds the ``pending_files`` table.
    directory : Path
        The folder of the files.
    """

    def __init__(self, db: Database, directory: Path) -> None:
        self._db, self._dir = db, directory
        self._wake = threading.Condition()
        self._files = self._bytes = 0
        self._last_write = time.monotonic()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._commit: Callable[[Callable[[sqlite3.Connection], Any]], Any] | None = None

    def start(self, commit: Callable[[Callable[[sqlite3.Connection], Any]], Any] | None = None
              ) -> None:
        """Start the background flusher; ``commit(work)``, if given, commits its deletions
        (the group commit's, so that they share a COMMIT with uploads)."""
        self._commit = commit
        self._thread = threading.Thread(target=self._loop, name="file-flush", daemon=True)
        self._thread.start()

    def written(self, files: int, size: int) -> None:
        """Note that ``files`` files of ``size`` bytes were committed as pending."""
        with self._wake:
            first = self._files == 0
            self._files += files
            self._bytes += size
            self._last_write = time.monotonic()
            if first or self._files >= FLUSH_FILES or self._bytes >= FLUSH_BYTES:
                self._wake.notify()  # the flusher sets its timer, or flushes now

    def flush(self) -> int:
        """Fsync every pending file and the folder, then drop their copies; returns how
        many were flushed. Files deleted meanwhile (with their case) are skipped."""
        names = [row[0] for row in self._db.read("SELECT name FROM pending_files")]
        if not names:
            return 0
        for name in names:
            try:
                fd = os.open(self._dir / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self._dir)

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM pending_files WHERE name = ?",
                             [(name,) for name in names])
        if self._commit is not None:
            self._commit(delete)
        else:
            with self._db.tx() as conn:
                delete(conn)
        return len(names)

    def restore(self) -> int:
        """Write every pending file again from its copy, then :meth:`flush`; at start,
        before anything else writes. Returns how many files were restored."""
        restored = 0
        for name, data in self._db.read("SELECT name, data FROM pending_files"):
            write_file(self._dir / name, data)
            restored += 1
        self.flush()
        if restored:
            log.info("restored %d file(s) whose fsync was pending", restored)
        return restored

    def stop(self) -> None:
        """Stop the background flusher (after the flush in progress, if any)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        """Stop the flusher and flush what is pending through the database's own
        connection (the group commit may be closed by now)."""
        self.stop()
        self._commit = None
        self.flush()

    def _due(self) -> float | None:
        """Seconds until the next flush is due (0: now), or None with nothing pending."""
        if self._files == 0:
            return None
        if self._closed or self._files >= FLUSH_FILES or self._bytes >= FLUSH_BYTES:
            return 0.0
        return max(0.0, self._last_write + IDLE_S - time.monotonic())

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (wait := self._due()) != 0.0:
                    self._wake.wait(timeout=wait)
                if self._closed:
                    return  # close() flushes
                self._files = self._bytes = 0
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - retried at the next flush, or at start
                log.exception("flushing pending image files failed")
