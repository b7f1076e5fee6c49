"""The one atomic-write helper: whole content or none, the rename made durable, modes."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from models.core import files


def test_write_atomic_replaces_the_whole_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old content, longer than the new")

    files.write_atomic(target, b"new")

    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_fsyncs_the_file_then_the_folder(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(
        os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))

    files.write_atomic(tmp_path / "a", b"x")

    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and files.is_temp(Path(synced[0]).name)
    assert synced[1] == str(tmp_path)


def test_write_atomic_sets_the_mode_whatever_the_old_file_had(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    os.chmod(target, 0o666)

    files.write_atomic(target, b"secret")
    files.write_atomic(tmp_path / "key.pub", b"public", mode=0o644)

    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "key.pub").stat().st_mode) == 0o644


def test_write_atomic_without_overwrite_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"precious")

    with pytest.raises(FileExistsError):
        files.write_atomic(target, b"other", overwrite=False)

    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_a_failed_write_keeps_the_old_content_and_no_temp(tmp_path: Path,
                                                          monkeypatch) -> None:
    target = tmp_path / "pointer"
    target.write_bytes(b"v1")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="space"):
        files.write_atomic(target, b"v2")

    assert target.read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer"]


def test_create_once_keeps_the_first_content(tmp_path: Path) -> None:
    first = files.create_once(tmp_path / "secret_key", b"first")
    second = files.create_once(tmp_path / "secret_key", b"second")

    assert first == second == b"first"
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def test_replace_dir_swaps_a_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    files.replace_dir(target, {"a": b"1", "b": b"2"})

    files.replace_dir(target, {"c": b"3"})

    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.parametrize("name, temp", [(".state.json.1a2b3c4d.tmp", True),
                                        (".tmp-x1y2z3", True), ("v2", False),
                                        ("update.tmp", False), (".lock", False)])
def test_is_temp_names_what_a_crash_leaves(name: str, temp: bool) -> None:
    assert files.is_temp(name) is temp
