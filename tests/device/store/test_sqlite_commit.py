"""One fsync per upload in the SQLite case store: uploads that finish together share a
COMMIT (group commit), and an image's durability rides on its row's COMMIT until the
file itself is flushed (the file journal). A power cut must still lose nothing."""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from device.exc import StoreError
from device.store import SQLiteCaseStore, journal
from device.store.commit import GroupCommit
from tests.device.store.contract import PNG, ROOT, add


def _pending(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(data_dir / "neuroedge.db")
    try:
        return [row[0] for row in conn.execute("SELECT name FROM pending_files")]
    finally:
        conn.close()


def test_uploads_that_finish_together_share_one_commit(tmp_path: Path) -> None:
    # Prepare: the writer is held up in its first COMMIT while seven more uploads arrive
    store = SQLiteCaseStore(tmp_path)
    db, commits = store._db, store._commits
    assert isinstance(commits, GroupCommit)
    transactions: list[int] = []
    real_tx = db.tx

    def counting_tx():
        transactions.append(1)
        return real_tx()
    db.tx = counting_tx  # type: ignore[method-assign]
    made: list = []
    db._lock.acquire()  # the writer's first BEGIN waits here
    threads = [threading.Thread(target=lambda: made.append(add(store))) for _ in range(8)]
    # Execute
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while commits._queue.qsize() < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    db._lock.release()
    for t in threads:
        t.join()
    # Assert: 8 cases, 2 transactions (the first alone, then the seven together)
    try:
        assert len(made) == 8 and store.count() == 8
        assert len(transactions) == 2
    finally:
        store.close()


def test_one_failing_upload_in_a_batch_leaves_the_others_stored(tmp_path: Path) -> None:
    # Prepare
    store = SQLiteCaseStore(tmp_path)
    commits = store._commits
    assert commits is not None
    store._db._lock.acquire()
    results: list = []

    def run(work) -> None:
        try:
            results.append(commits.run(work))
        except Exception as exc:  # noqa: BLE001 - the failure is what is asserted
            results.append(exc)

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO settings (key, value) VALUES ('a', 'x')")
        raise sqlite3.IntegrityError("simulated")
    jobs = [lambda c: c.execute("INSERT INTO settings VALUES ('b', 'y')") and "b", fails,
            lambda c: c.execute("INSERT INTO settings VALUES ('c', 'z')") and "c"]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    # Execute: they queue behind the held lock; the failing one shares a COMMIT with "c"
    for t in threads:
        t.start()
        time.sleep(0.05)
    store._db._lock.release()
    for t in threads:
        t.join()
    # Assert
    keys = [row[0] for row in store._db.read("SELECT key FROM settings ORDER BY key")]
    store.close()
    assert keys == ["b", "c"]
    assert sorted(r for r in results if isinstance(r, str)) == ["b", "c"]
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], StoreError)


def test_files_are_flushed_when_the_appliance_is_idle(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(journal, "IDLE_S", 0.2)
    store = SQLiteCaseStore(tmp_path)
    # Execute
    case = add(store)
    just_after = _pending(tmp_path)
    deadline = time.monotonic() + 10
    while _pending(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Assert: the copy exists until the file is flushed, then it is dropped
    try:
        assert just_after == [case.image_name]
        assert _pending(tmp_path) == []
        assert store.image_path(case).read_bytes() == PNG
    finally:
        store.close()


def test_a_file_torn_by_a_power_cut_is_restored_from_its_commit(tmp_path: Path) -> None:
    # Prepare: a process stores a case (and its embedding) and dies at once, before any
    # flush; then the power cut: the unflushed image file comes back empty.
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from device.store import SQLiteCaseStore\n"
        "from tests.device.store.contract import add\n"
        "store = SQLiteCaseStore(Path(sys.argv[1]))\n"
        "case = add(store, backbone_id='bb1', embedding=np.arange(4.0))\n"
        "print(case.id, flush=True)\n"
        "os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    case_id = proc.stdout.strip()
    image = tmp_path / "images" / f"{case_id}.png"
    assert _pending(tmp_path) == [image.name]
    image.write_bytes(b"")
    # Execute: the next start
    store = SQLiteCaseStore(tmp_path)
    # Assert: the image is whole again, flushed, and the embedding is there
    try:
        case = store.get(case_id)
        assert hashlib.sha256(image.read_bytes()).hexdigest() == case.image_sha256
        assert _pending(tmp_path) == []
        np.testing.assert_array_equal(store.get_embedding(case_id, "bb1"), np.arange(4.0))
    finally:
        store.close()


def test_recovery_keeps_the_file_of_an_upload_still_committing(tmp_path: Path) -> None:
    # Prepare: an upload whose file is written and whose commit is held up
    store = SQLiteCaseStore(tmp_path)
    commits = store._commits
    assert commits is not None
    release, real_run = threading.Event(), commits.run

    def held_run(work):
        release.wait(10)
        return real_run(work)
    commits.run = held_run  # type: ignore[method-assign]
    made: list = []
    thread = threading.Thread(target=lambda: made.append(add(store)))
    thread.start()
    images = tmp_path / "images"
    deadline = time.monotonic() + 10
    while not list(images.glob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Execute
    removed = store.recover()
    release.set()
    thread.join()
    # Assert
    try:
        assert removed == 0
        assert store.image_path(made[0]).read_bytes() == PNG
    finally:
        store.close()


def test_a_closed_store_refuses_new_cases(tmp_path: Path) -> None:
    store = SQLiteCaseStore(tmp_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        add(store)
    assert list((tmp_path / "images").iterdir()) == []
