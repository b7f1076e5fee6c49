"""Issue 26, finding 9: bodies up to 1 GiB were spooled to /tmp before anyone was
authenticated. The services as ``serve`` runs them now refuse a large body at its
headers unless they carry a valid credential, before a byte of it is read."""
from __future__ import annotations

import socket
import time

from tests.e2e.conftest import add_user, create_token
from tests.e2e.coordinator_process import enroll

ANNOUNCED = 512 * 2**20  # under waitress's default 1 GiB: it used to wait for all of it
ANSWER_WITHIN_S = 5.0


def announce(port: int, path: str, headers: str = "", size: int = ANNOUNCED,
             wait_s: float = ANSWER_WITHIN_S) -> tuple[str, float]:
    """Send a POST's headers announcing ``size`` bytes and a few of them, then wait up to
    ``wait_s`` for an answer; its status line ("" if none came) and the seconds taken."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                     "Content-Type: application/octet-stream\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode() + bytes(4096))
        try:
            status = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except socket.timeout:
            status = ""
    return status, time.monotonic() - started


def test_appliance_refuses_a_large_unauthenticated_body_at_its_headers(
        start_appliance, appliance_data):
    # Prepare: an appliance with an account and a token
    add_user(appliance_data, "alice")
    token = create_token(appliance_data, "pacs", "alice")
    server = start_appliance()

    # Execute: 512 MB announced to the sign-in page, and to the API without a valid token
    login, login_s = announce(server.port, "/login")
    forged, forged_s = announce(server.port, "/api/v1/predictions",
                                "Authorization: Bearer ne_forged\r\n")
    small_forged, _ = announce(server.port, "/api/v1/predictions",
                               "Authorization: Bearer ne_forged\r\n", size=5 * 2**20)
    small_signed, _ = announce(server.port, "/api/v1/predictions",
                               f"Authorization: Bearer {token}\r\n", size=5 * 2**20,
                               wait_s=1.0)

    # Assert: refused at once with 413 without a valid credential; with one, a 5 MB
    # upload is read (the server waits for the rest of it)
    assert login.endswith("413 Request Entity Too Large"), login
    assert forged.endswith("413 Request Entity Too Large"), forged
    assert small_forged.endswith("413 Request Entity Too Large"), small_forged
    assert max(login_s, forged_s) < ANSWER_WITHIN_S
    assert small_signed == ""


def test_coordinator_refuses_a_large_body_without_a_device_token(
        start_coordinator, tmp_path):
    # Prepare: a coordinator with an enrolled device
    state = tmp_path / "state"
    token = enroll(state, "pi-1")
    server = start_coordinator(state)

    # Execute: 512 MB announced to the dashboard's sign-in and to the updates endpoint
    login, _ = announce(server.port, "/login")
    forged, _ = announce(server.port, "/api/v1/updates", "Authorization: Bearer nd_forged\r\n")
    small_forged, _ = announce(server.port, "/api/v1/updates",
                               "Authorization: Bearer nd_forged\r\n", size=2**20)
    small_device, _ = announce(server.port, "/api/v1/updates",
                               f"Authorization: Bearer {token}\r\n", size=2**20, wait_s=1.0)

    # Assert: refused at the headers without a device token; an update is read
    assert login.endswith("413 Request Entity Too Large"), login
    assert forged.endswith("413 Request Entity Too Large"), forged
    assert small_forged.endswith("413 Request Entity Too Large"), small_forged
    assert small_device == ""
