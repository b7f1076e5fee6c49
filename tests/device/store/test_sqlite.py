"""What only the SQLite stores promise: a private WAL file with a schema version, one
database shared by both stores, private images, and a real kill -9 mid-write."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.exc import StoreError
from device.store import Database, SQLiteAccountStore, SQLiteCaseStore
from tests.device.store.contract import HEATMAP, PNG, ROOT, add


def test_sqlite_file_is_private_wal_with_schema_version(tmp_path: Path) -> None:
    SQLiteCaseStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "neuroedge.db")  # keeps the -wal file alive
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.execute("CREATE TABLE probe (x)")  # a write creates the -wal file
        for name in ("neuroedge.db", "neuroedge.db-wal"):
            assert (tmp_path / name).stat().st_mode & 0o077 == 0
    finally:
        conn.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "neuroedge.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteCaseStore(tmp_path)


def test_sqlite_stores_share_one_database_closed_by_the_last_store(tmp_path: Path) -> None:
    # Prepare
    db = Database(tmp_path / "neuroedge.db")
    cases, accounts = SQLiteCaseStore(tmp_path, db=db), SQLiteAccountStore(tmp_path, db=db)
    accounts.add_user("ada", "admin", "h")
    case = add(cases)
    # Execute / Assert: closing one store (twice) leaves the other working
    cases.close()
    cases.close()
    assert accounts.count_users() == 1
    other = SQLiteCaseStore(tmp_path)  # its own connection to the same file
    assert other.get(case.id) == case
    other.close()
    accounts.close()
    with pytest.raises(StoreError, match="closed"):
        db.read("SELECT 1")


def test_sqlite_kill_between_file_and_row_leaves_nothing_after_restart(
        tmp_path: Path) -> None:
    # Prepare: a child process dies (os._exit, like kill -9) right before the insert
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from device.store import sqlite\n"
        "store = sqlite.SQLiteCaseStore(Path(sys.argv[1]))\n"
        "sqlite.Database.tx = lambda self: os._exit(9)\n"
        f"store.add_case({PNG!r}, source='camera', width=1, height=1, probability=0.1,\n"
        "    predicted_label=0, threshold=0.5, uncertain=False, model_version=1,\n"
        f"    latency_ms=1.0, heatmap_png={HEATMAP!r})\n")
    # Execute
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, timeout=60)
    left_behind = sorted(p.name for p in (tmp_path / "images").iterdir())
    store = SQLiteCaseStore(tmp_path)
    # Assert
    try:
        assert proc.returncode == 9, proc.stderr
        assert len(left_behind) == 2  # the complete, fsynced image and heat map
        assert store.count() == 0 and list((tmp_path / "images").iterdir()) == []
    finally:
        store.close()


def test_images_are_private_files(tmp_path: Path) -> None:
    store = SQLiteCaseStore(tmp_path)
    try:
        case = add(store)
        assert store.image_path(case).stat().st_mode & 0o077 == 0
        assert os.path.dirname(store.image_path(case)) == str(tmp_path / "images")
    finally:
        store.close()
