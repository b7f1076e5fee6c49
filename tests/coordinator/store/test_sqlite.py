"""What only the SQLite store promises (WAL, a private file, the schema version, a real
os._exit mid-write), and the store's exceptions."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import exc
from coordinator.exc import NotFoundError, StoreError
from coordinator.store import SQLiteCoordinatorStore
from tests.coordinator.store.contract import ROOT, npz, send


def test_sqlite_uses_wal_and_a_private_file(tmp_path: Path) -> None:
    SQLiteCoordinatorStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "coordinator.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()
    assert (tmp_path / "coordinator.db").stat().st_mode & 0o077 == 0


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    SQLiteCoordinatorStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "coordinator.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteCoordinatorStore(tmp_path)


def test_sqlite_kill_between_payload_and_row_leaves_nothing_after_restart(
        tmp_path: Path) -> None:
    # Prepare: a child dies (os._exit, like kill -9) after the durable payload write,
    # before its row is inserted
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from coordinator.store import sqlite\n"
        "store = sqlite.SQLiteCoordinatorStore(Path(sys.argv[1]))\n"
        "store.enroll('pi-1', 'h1')\n"
        "rnd = store.open_round(0)\n"
        "write = sqlite.write_atomic\n"
        "def write_then_die(*args):\n"
        "    write(*args)\n"
        "    os._exit(9)\n"
        "sqlite.write_atomic = write_then_die\n"
        f"store.add_update({'ab' * 16!r}, rnd.id, 'pi-1', 0, 5, 1.0, {{}}, {npz()!r}, {{}})\n")
    # Execute
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, timeout=60)
    left_behind = sorted(p.name for p in (tmp_path / "updates").iterdir())
    store = SQLiteCoordinatorStore(tmp_path)
    # Assert
    try:
        assert proc.returncode == 9, proc.stderr
        assert left_behind == ["ab" * 16 + ".npz"]  # complete, fsynced, but no row
        assert list((tmp_path / "updates").iterdir()) == []
        rnd = store.current_round()
        assert (rnd.n_updates, rnd.bytes_received) == (0, 0)
        with pytest.raises(NotFoundError):
            store.get_update("ab" * 16)
        assert send(store, rnd.id, "pi-1", "ab" * 16)[1] is True  # the retry succeeds
    finally:
        store.close()


def test_exceptions_carry_http_status_and_builtin_bases() -> None:
    assert (exc.InputError.status, exc.AuthError.status, exc.NotFoundError.status,
            exc.ConflictError.status, exc.RejectedError.status,
            exc.StoreError.status) == (400, 401, 404, 409, 422, 500)
    assert issubclass(exc.AuthError, PermissionError)
    assert issubclass(exc.NotFoundError, LookupError)
    assert issubclass(exc.ConfigError, (exc.CoordinatorError, ValueError))
    rejected = exc.RejectedError("norm 9.1 exceeds 5.0", "norm")
    assert (str(rejected), rejected.reason) == ("norm 9.1 exceeds 5.0", "norm")
