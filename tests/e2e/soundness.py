"""What every fault test asserts after its fault: the SQLite files pass
``PRAGMA integrity_check`` and the service answers ``/healthz`` with 200."""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import requests


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check``'s first row ("ok" for a sound file), on a copy of the
    file and its write-ahead log: SQLite resolves symbolic links, so it cannot open a
    file through ``/proc/PID/root``, and the copy leaves the service's files alone."""
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copyfile(f"{db}{suffix}", Path(tmp) / f"copy.db{suffix}")
        conn = sqlite3.connect(Path(tmp) / "copy.db")
        try:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()


def assert_sound(folder: Path) -> None:
    """Every ``*.db`` file directly in ``folder`` passes the integrity check."""
    dbs = sorted(folder.glob("*.db"))
    assert dbs, f"no SQLite file in {folder}"
    for db in dbs:
        assert integrity(db) == "ok", db


def assert_healthy(url: str, **requests_kwargs) -> dict:
    """``/healthz`` answers 200 with ``status`` ok; its JSON body."""
    health = requests.get(f"{url}/healthz", timeout=10, **requests_kwargs)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok", health.json()
    return health.json()
