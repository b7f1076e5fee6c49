"""One fsync per upload in the SQLite case store: uploads that finish together share a
COMMIT (group commit), and an image's durability rides on its row's COMMIT until the
file itself is flushed (the file journal). A power cut must still lose nothing."""
from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def write_locked(data_dir: Path) -> Iterator[None]:
    """Another process's write transaction on the database, for the block's duration:
    the store's writer waits for it (busy_timeout) while uploads queue behind."""
    conn = sqlite3.connect(data_dir / "neuroedge.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _start_behind_a_lock(commits: GroupCommit, threads: list[threading.Thread]) -> None:
    """Start the first thread, whose job the writer takes and waits on the lock with,
    then the others, whose jobs queue (within busy_timeout, 5 s)."""
    threads[0].start()
    time.sleep(0.2)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 3
    while commits._queue.qsize() < len(threads) - 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_uploads_that_finish_together_share_one_commit(tmp_path: Path) -> None:
    # Prepare: the writer is held up in its first BEGIN while seven more uploads arrive
    store = SQLiteCaseStore(tmp_path)
    commits = store._commits
    assert isinstance(commits, GroupCommit)
    made: list = []
    threads = [threading.Thread(target=lambda: made.append(add(store))) for _ in range(8)]
    # Execute
    with write_locked(tmp_path):
        _start_behind_a_lock(commits, threads)
    for t in threads:
        t.join()
    # Assert: 8 cases in 2 commits (the first alone, then the seven together)
    try:
        assert len(made) == 8 and store.count() == 8
        assert commits.commits == 2
    finally:
        store.close()


def test_reads_go_on_while_the_writer_waits_for_the_disk(tmp_path: Path) -> None:
    # Prepare: an upload whose commit is held up by another writer
    store = SQLiteCaseStore(tmp_path)
    kept = add(store)
    thread = threading.Thread(target=lambda: add(store))
    # Execute: a read meanwhile, on the store's shared connection
    with write_locked(tmp_path):
        thread.start()
        time.sleep(0.2)
        read = store.get(kept.id)
        commit_still_held_up = thread.is_alive()
    thread.join()
    # Assert: the read was answered while the upload still waited to commit
    try:
        assert read == kept and commit_still_held_up and store.count() == 2
    finally:
        store.close()


def test_one_failing_upload_in_a_batch_leaves_the_others_stored(tmp_path: Path) -> None:
    # Prepare
    store = SQLiteCaseStore(tmp_path)
    commits = store._commits
    assert commits is not None
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
    with write_locked(tmp_path):
        _start_behind_a_lock(commits, threads)
    for t in threads:
        t.join()
    # Assert
    keys = [row[0] for row in store._db.read("SELECT key FROM settings ORDER BY key")]
    store.close()
    assert keys == ["b", "c"] and commits.commits == 2
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
