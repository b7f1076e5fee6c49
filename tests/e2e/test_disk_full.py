"""Fault: the appliance's disk fills up. A real ``python -m device serve`` whose data
folder lies on a 32 MB tmpfs of its own (a private mount namespace made with
``unshare``; the test reaches the folder through ``/proc/PID/root``). A ballast file
takes the last free byte; an upload must then get a clear 507, store nothing (no case,
no file), leave the database sound and the appliance healthy, and work again once the
ballast is gone."""
from __future__ import annotations

import errno
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import requests

from device.store.sqlite import IMAGES_DIR
from tests.e2e.conftest import Appliance, add_user, create_token
from tests.e2e.soundness import assert_healthy, assert_sound

pytestmark = pytest.mark.fault
TMPFS_SIZE = "32m"


class ApplianceOnSmallDisk(Appliance):
    """The appliance with its data folder copied onto a tmpfs only it can see."""

    def __init__(self, prepared: Path, mount: Path, log_dir: Path) -> None:
        super().__init__(mount / "data", log_dir, 1)
        self.prepared, self.mount = prepared, mount

    def start(self) -> "ApplianceOnSmallDisk":
        if shutil.which("unshare") is None:
            pytest.fail("the disk-full test needs util-linux's unshare")
        serve = [sys.executable, "-m", "device", "serve", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)]
        script = (f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {shlex.quote(str(self.mount))}"
                  f" && cp -a {shlex.quote(str(self.prepared))} {shlex.quote(str(self.data_dir))}"
                  f" && exec {shlex.join(serve)}")
        # As root a mount namespace suffices; otherwise a user namespace maps us to root.
        flags = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
        self.spawn(["unshare", *flags, "sh", "-c", script])
        return self

    def view(self, path: Path) -> Path:
        """``path`` (inside the tmpfs) as seen from outside the namespace."""
        return Path(f"/proc/{self.pid}/root") / path.relative_to("/")


def fill(folder: Path) -> Path:
    """Write a ballast file in ``folder`` until the file system has no byte left."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return ballast


def post(server: Appliance, token: str, image: bytes) -> requests.Response:
    return requests.post(f"{server.url}/api/v1/predictions", timeout=30,
                         headers={"Authorization": f"Bearer {token}"},
                         files={"image": ("slice.jpg", image)})


def test_a_full_disk_answers_507_stores_nothing_and_recovers_when_space_returns(
        tmp_path: Path, slice_path: Path):
    # Prepare: an account and a token, an appliance on a small disk, two cases stored.
    prepared = tmp_path / "prepared"
    add_user(prepared, "alice")
    token = create_token(prepared, "pacs", "alice")
    (tmp_path / "disk").mkdir()
    server = ApplianceOnSmallDisk(prepared, tmp_path / "disk", tmp_path).start()
    try:
        image = slice_path.read_bytes()
        before = [post(server, token, image) for _ in range(2)]
        assert [r.status_code for r in before] == [201, 201], [r.text for r in before]
        data = server.view(server.data_dir)
        files_before = sorted(os.listdir(data / IMAGES_DIR))

        # Execute: fill the disk, upload.
        ballast = fill(server.view(server.mount))
        full = post(server, token, image)

        # Assert: a clear 507, nothing stored, a sound database, a healthy appliance.
        assert full.status_code == 507, full.text
        assert "disk is full" in full.json()["error"], full.json()
        assert sorted(os.listdir(data / IMAGES_DIR)) == files_before
        assert_sound(data)
        assert_healthy(server.url)

        # Execute: space returns; upload again.
        ballast.unlink()
        after = post(server, token, image)

        # Assert: stored; every acknowledged case is there with its image as uploaded.
        assert after.status_code == 201, after.text
        for response in [*before, after]:
            stored = requests.get(f"{server.url}/cases/{response.json()['case_id']}/image",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert stored.status_code == 200 and stored.content == image
        assert len(os.listdir(data / IMAGES_DIR)) == len(files_before) + 1
        assert_sound(data)
        assert_healthy(server.url)
    finally:
        server.stop()
