"""Installed bundles on the appliance: versions kept, rollback, partial states after a
crash, and a real kill -9 in the middle of an install."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device.exc import RollbackError
from device.sync.bundles import InstalledBundles
from models.core.bundle import verify_bundle


ROOT = Path(__file__).resolve().parents[3]


def stage_copy(installed: InstalledBundles, src: Path, version: int) -> Path:
    staged = installed.staging_dir(version)
    for p in src.iterdir():
        shutil.copyfile(p, staged / p.name)
    return staged


@pytest.fixture
def installed(tmp_path, trained_bundle, key):
    return InstalledBundles(tmp_path / "data", trained_bundle[0], [key.verify_key])


def test_rollback_to_shipped_and_no_previous(installed, variants):
    with pytest.raises(RollbackError):
        installed.rollback()
    installed.install(stage_copy(installed, variants[2], 2), 2)

    assert installed.rollback() == variants[1]
    assert installed.current_path() == variants[1]
    assert installed.rejected_versions() == {2}


def test_keeps_three_versions_never_current_or_previous(installed, variants):
    for version in (2, 3, 4, 5):
        installed.install(stage_copy(installed, variants[version], version), version)

    assert installed.versions() == [3, 4, 5]
    assert (installed.current_name(), installed.previous_name()) == ("v5", "v4")


def test_install_refuses_a_staging_folder_that_does_not_verify(installed, variants):
    staged = stage_copy(installed, variants[2], 2)
    (staged / "head.npz").write_bytes(b"x")
    with pytest.raises(Exception, match="head.npz"):
        installed.install(staged, 2)
    with pytest.raises(Exception, match="not 3"):
        installed.install(stage_copy(installed, variants[2], 2), 3)
    assert installed.current_name() is None and installed.versions() == []


def test_partial_states_fall_back_to_a_verified_bundle(installed, variants):
    for version in (2, 3):
        installed.install(stage_copy(installed, variants[version], version), version)
    root = installed.root
    model = root / "v3" / "model.tflite"

    model.write_bytes(model.read_bytes()[:100])  # truncated by a crash
    assert installed.current_path() == root / "v2"
    (root / "CURRENT").write_text("garbage\n")
    assert installed.current_path() == root / "v2"
    shutil.rmtree(root / "v3")
    (root / "CURRENT").write_text("v3\n")  # names a missing folder
    assert installed.current_path() == root / "v2"
    shutil.rmtree(root / "v2")
    assert installed.current_path() == variants[1]
    (root / "CURRENT").unlink()
    assert installed.current_path() == variants[1]


def test_cleanup_removes_leftovers_of_a_crash(installed, variants):
    stage_copy(installed, variants[2], 2)
    (installed.root / ".CURRENT.ab12cd34.tmp").write_text("v9")
    (installed.root / ".trash-v7-00000000").mkdir()

    installed.cleanup_staging()

    assert sorted(p.name for p in installed.root.iterdir()) == [".lock"]


CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from device.sync import bundles
    from models.core.signing import load_public_key
    data, shipped, pub, staged, version, die_at = sys.argv[1:]
    real = bundles.InstalledBundles._write_pointer

    def dying(self, pointer, name):
        if pointer == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, pointer, name)

    bundles.InstalledBundles._write_pointer = dying
    inst = bundles.InstalledBundles(Path(data), Path(shipped), [load_public_key(pub)])
    inst.install(Path(staged), int(version))
""")


@pytest.mark.parametrize("die_at", ["PREVIOUS", "CURRENT"])
def test_kill_9_mid_install_leaves_current_complete(installed, variants, signing_key_file,
                                                    die_at):
    installed.install(stage_copy(installed, variants[2], 2), 2)
    staged = stage_copy(installed, variants[3], 3)

    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(installed.root.parent), str(installed.shipped),
         f"{signing_key_file}.pub", str(staged), "3", die_at], cwd=ROOT, timeout=60)

    assert proc.returncode == -signal.SIGKILL
    assert (installed.root / "v3" / "manifest.json").exists()  # died after the move
    rebooted = InstalledBundles(installed.root.parent, installed.shipped,
                                installed.trusted_keys)
    assert rebooted.current_path() == rebooted.root / "v2"
    assert verify_bundle(rebooted.current_path(), rebooted.trusted_keys).version == 2
    rebooted.cleanup_staging()
    rebooted.install(stage_copy(rebooted, variants[3], 3), 3)  # the retry replaces v3
    assert (rebooted.current_name(), rebooted.previous_name()) == ("v3", "v2")
