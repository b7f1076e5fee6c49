"""Fault: the appliance's clock jumps (a Pi without a real-time clock boots with a wrong
time and NTP corrects it later; a replaced RTC battery). A real ``python -m device
serve`` runs under libfaketime, whose offset the test moves while it serves: nine hours
forward, then two days back. Uploads go on being stored, web sessions from before a
jump end rather than outlive their eight hours, and after a kill -9 and a restart on
the true clock every acknowledged case is there, the database sound."""
from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import PASSWORD, Appliance, add_user, create_token
from tests.e2e.soundness import assert_healthy, assert_sound

pytestmark = pytest.mark.fault
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


class ApplianceOnAFakeClock(Appliance):
    """The appliance with libfaketime preloaded: its wall clock (and monotonic clock)
    is the true one plus the offset in ``offset_file`` ("+9h", "-2d"), read afresh
    at each call."""

    def __init__(self, data_dir: Path, log_dir: Path, offset_file: Path) -> None:
        super().__init__(data_dir, log_dir, 1)
        self.offset_file = offset_file

    def start(self) -> "ApplianceOnAFakeClock":
        if not LIBFAKETIME:
            pytest.fail("the clock-jump test needs libfaketime (Debian: faketime)")
        self.offset_file.write_text("+0\n")
        self.spawn(["env", f"LD_PRELOAD={LIBFAKETIME[0]}",
                    f"FAKETIME_TIMESTAMP_FILE={self.offset_file}", "FAKETIME_NO_CACHE=1",
                    sys.executable, "-m", "device", "serve", "--data-dir", str(self.data_dir),
                    "--host", "127.0.0.1", "--port", str(self.port)])
        return self

    def jump(self, offset: str) -> None:
        self.offset_file.write_text(offset + "\n")


def sign_in(url: str) -> requests.Session:
    """A browser-like session signed in as alice."""
    browser = requests.Session()
    page = browser.get(f"{url}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    answer = browser.post(f"{url}/login", timeout=10, allow_redirects=False, data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf})
    assert answer.status_code == 302, answer.text[:500]
    return browser


def signed_in(browser: requests.Session, url: str) -> bool:
    """Whether the session still opens the case list (else it is sent to sign in)."""
    answer = browser.get(f"{url}/cases/", timeout=10, allow_redirects=False)
    assert answer.status_code in (200, 302), answer.status_code
    return answer.status_code == 200


def upload(url: str, token: str, image: bytes) -> str:
    answer = requests.post(f"{url}/api/v1/predictions", timeout=30,
                           headers={"Authorization": f"Bearer {token}"},
                           files={"image": ("slice.jpg", image)})
    assert answer.status_code == 201, answer.text
    return answer.json()["case_id"]


def exported_ids(url: str, token: str) -> set[str]:
    """The case ids of the CSV export."""
    answer = requests.get(f"{url}/cases/export.csv", timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text[:500]
    return set(re.findall(r"^([0-9a-f]{32}),", answer.text, re.MULTILINE))


def test_a_clock_jump_loses_no_case_and_ends_sessions_instead_of_stretching_them(
        tmp_path: Path, appliance_data: Path, slice_path: Path, start_appliance):
    # Prepare: an account, a token, the appliance on a fake clock, a session, one case.
    add_user(appliance_data, "alice")
    token = create_token(appliance_data, "pacs", "alice")
    image = slice_path.read_bytes()
    server = ApplianceOnAFakeClock(appliance_data, tmp_path, tmp_path / "offset")
    try:
        server.start()
        session = sign_in(server.url)
        acknowledged = [upload(server.url, token, image)]
        assert signed_in(session, server.url)

        # Execute: the clock jumps 9 hours forward; upload.
        server.jump("+9h")
        acknowledged.append(upload(server.url, token, image))

        # Assert: the 8-hour session has ended; a new one works; the appliance is healthy.
        assert not signed_in(session, server.url)
        session = sign_in(server.url)
        assert signed_in(session, server.url)
        assert_healthy(server.url)

        # Execute: the clock jumps back two days (9 h ahead to 2 days behind); upload.
        server.jump("-2d")
        acknowledged.append(upload(server.url, token, image))

        # Assert: a session begun "in the future" is not stretched by two days: it ends.
        assert not signed_in(session, server.url)
        assert signed_in(sign_in(server.url), server.url)
        assert_healthy(server.url)
        assert exported_ids(server.url, token) == set(acknowledged)
        server.kill()
    finally:
        server.stop()

    # Execute: restart on the true clock.
    restarted = start_appliance()

    # Assert: every acknowledged case is there, the database sound, the appliance healthy.
    assert exported_ids(restarted.url, token) == set(acknowledged)
    assert_healthy(restarted.url)
    restarted.stop()
    assert_sound(appliance_data)
