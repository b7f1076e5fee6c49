"""``neuroedge-backup`` (ansible/roles/common/files/neuroedge_backup.py), the tool that
backup.yml and restore.yml run on each host: a backup taken while a service writes
restores every row it holds with its file; restore refuses to overwrite or to write
outside the backed-up folders."""
from __future__ import annotations

import importlib.util
import io
import json
import sqlite3
import tarfile
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "ansible/roles/common/files/neuroedge_backup.py"
spec = importlib.util.spec_from_file_location("neuroedge_backup", SCRIPT)
backup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backup)


class Writer(threading.Thread):
    """A service as the stores write: the image file first (temp + rename), then the
    row naming it, in a WAL database, until stopped."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.stop, self.rows = folder, threading.Event(), 0
        (folder / "images").mkdir(parents=True)
        db = sqlite3.connect(folder / "state.db")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE cases (id INTEGER PRIMARY KEY, image TEXT NOT NULL)")
        db.commit()
        db.close()

    def run(self) -> None:
        db = sqlite3.connect(self.folder / "state.db")
        while not self.stop.is_set():
            name = f"{self.rows:06d}.png"
            tmp = self.folder / "images" / f".{name}.1234.tmp"
            tmp.write_bytes(b"image %d" % self.rows)
            tmp.rename(self.folder / "images" / name)
            db.execute("INSERT INTO cases (id, image) VALUES (?, ?)", (self.rows, name))
            db.commit()
            self.rows += 1
        db.close()


def rows_and_files(folder: Path) -> tuple[list[str], set[str]]:
    db = sqlite3.connect(folder / "state.db")
    try:
        images = [r[0] for r in db.execute("SELECT image FROM cases ORDER BY id")]
    finally:
        db.close()
    return images, {p.name for p in (folder / "images").iterdir()}


def test_a_backup_taken_while_writing_restores_every_row_with_its_file(tmp_path):
    # Prepare: a service writing cases, and a second folder (like /etc/neuroedge/pki).
    state, pki = tmp_path / "state", tmp_path / "pki"
    writer = Writer(state)
    pki.mkdir()
    (pki / "ca.key").write_bytes(b"secret")
    writer.start()
    while writer.rows < 50:
        pass
    archive = tmp_path / "backups" / "host.tar"

    # Execute: back up while it writes; lose both folders; restore.
    manifest = backup.create(archive, [state, pki])
    writer.stop.set()
    writer.join()
    for folder in (state, pki):
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()
    restored = backup.restore(archive, force=False)

    # Assert: every backed-up row is there with its file, the database is sound, and
    # the archive is private.
    images, files = rows_and_files(state)
    assert len(images) == manifest["databases"][backup.member_name(state / "state.db")][
        "cases"] >= 50
    assert set(images) <= files and not any(f.endswith(".tmp") for f in files)
    assert sqlite3.connect(state / "state.db").execute(
        "PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (pki / "ca.key").read_bytes() == b"secret"
    assert restored["folders"] == [str(state.resolve()), str(pki.resolve())]
    assert archive.stat().st_mode & 0o777 == 0o600


def test_restore_keeps_an_existing_folder_aside_only_when_forced(tmp_path, capsys):
    # Prepare: a backup, then new data in the same folder.
    state = tmp_path / "state"
    state.mkdir()
    (state / "secret_key").write_text("old")
    archive = tmp_path / "b.tar"
    backup.create(archive, [state])
    (state / "secret_key").write_text("new")

    # Execute
    refused = backup.main(["restore", str(archive)])
    kept = (state / "secret_key").read_text()
    forced = backup.main(["restore", str(archive), "--force"])

    # Assert: refused without --force, nothing touched; with it, the new data is kept
    # beside the restored folder.
    assert refused == 1 and kept == "new" and "not empty" in capsys.readouterr().err
    assert forced == 0 and (state / "secret_key").read_text() == "old"
    aside = list(tmp_path.glob("state.pre-restore-*"))
    assert len(aside) == 1 and (aside[0] / "secret_key").read_text() == "new"


@pytest.mark.parametrize("name", ["state/../../etc/cron.d/evil", "elsewhere/file"])
def test_restore_refuses_members_outside_the_backed_up_folders(tmp_path, name):
    # Prepare: an archive whose manifest names one folder but which holds another file.
    folder = tmp_path / "state"
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for member, data in ((backup.MANIFEST, json.dumps(
                {"format": 1, "folders": [str(folder)], "databases": {}}).encode()),
                (f"{str(tmp_path).lstrip('/')}/{name}", b"x")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    # Execute / Assert
    with pytest.raises(backup.BackupError, match="refusing|outside"):
        backup.restore(archive, force=False)
    assert not folder.exists() and not (tmp_path / "elsewhere").exists()
