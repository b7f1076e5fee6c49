"""Fault: the coordinator answers slowly or with garbage. A real ``python -m device
serve`` syncs (``POST /api/v1/federation/sync``, as "Sync now" does) against a stand-in
coordinator on loopback that misbehaves in one way per case: the fault itself, not a
fake of the coordinator's protocol. The sync must end within its time limit with a
clear 503, keep the queued update for the next try, and the appliance must go on
storing uploads and stay healthy."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from device.sync.outbox import Outbox
from tests.e2e.conftest import Appliance, add_user, create_token
from tests.e2e.soundness import assert_healthy, assert_sound

pytestmark = pytest.mark.fault
TIMEOUT_S = 2.0       # the appliance's coordinator_timeout_s
SYNC_LIMIT_S = 15.0   # a sync against any of these must have ended by then


class Misbehaving(BaseHTTPRequestHandler):
    """Answers every request according to the server's ``mode``."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        getattr(self, f"_{self.server.mode}")()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass

    def _head(self, status: int, ctype: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self._head(status, ctype, len(body))
        self.wfile.write(body)

    def _garbage(self) -> None:        # 200, random bytes
        self._send(200, "application/json", os.urandom(4096))

    def _html(self) -> None:           # a captive portal or proxy error page
        self._send(502, "text/html", b"<html><body>Bad gateway</body></html>")

    def _empty_json(self) -> None:     # 200 {} for everything: acknowledges nothing
        self._send(200, "application/json", b"{}")

    def _wrong_types(self) -> None:    # the right keys with the wrong types
        self._send(200, "application/json", json.dumps({
            "update_id": 7, "round": "x", "version": "seven", "manifest": [],
            "signature": 3, "files": "model.tflite"}).encode())

    def _silent(self) -> None:         # reads the request, never answers
        time.sleep(SYNC_LIMIT_S + 5)

    def _drip(self) -> None:           # one byte every 0.2 s of a 1 MB body
        self._head(200, "application/json", 1 << 20)
        try:
            for _ in range(int((SYNC_LIMIT_S + 5) / 0.2)):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:    # the appliance gave up, as it should
            pass

    def _endless(self) -> None:        # a body without end, as fast as it is read
        self._head(200, "application/json", None)
        chunk = b"[" * 65536
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            pass


MODES = ["garbage", "html", "empty_json", "wrong_types", "silent", "drip", "endless"]


@pytest.fixture(scope="module")
def coordinator():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def appliance(coordinator, tmp_path_factory, data_dir):
    """The appliance, an admin token, one update queued in its outbox."""
    root = tmp_path_factory.mktemp("bad-coordinator")
    data = root / "data"
    add_user(data, "alice")
    token = create_token(data, "admin-script", "alice")
    config = root / "device.toml"
    config.write_text(
        "gpio = false\ncamera = false\nsync_interval_s = 86400\nsecret_key = 'e2e'\n"
        f"coordinator_url = 'http://127.0.0.1:{coordinator.server_address[1]}'\n"
        f"coordinator_timeout_s = {TIMEOUT_S}\n"
        "device_id = 'pi-1'\ndevice_token = 'nd_not-checked-by-this-stand-in'\n")
    update_id = uuid.uuid4().hex
    meta = {"device_id": "pi-1", "update_id": update_id}
    Outbox(data).put(update_id, b"an update's bytes", meta)
    server = Appliance(data, root, 1)
    server.spawn([sys.executable, "-m", "device", "serve", "--data-dir", str(data), "--config",
                  str(config), "--host", "127.0.0.1", "--port", str(server.port)])
    yield server, token, update_id
    server.stop()
    assert_sound(data)


@pytest.mark.parametrize("mode", MODES)
def test_a_coordinator_that_misbehaves_ends_the_sync_with_503_and_keeps_the_update(
        mode, coordinator, appliance, slice_path: Path):
    server, token, update_id = appliance
    coordinator.mode = mode
    auth = {"Authorization": f"Bearer {token}"}

    # Execute: sync, and upload a slice while the sync is under way.
    out: dict = {}

    def sync() -> None:
        start = time.monotonic()
        out["answer"] = requests.post(f"{server.url}/api/v1/federation/sync", headers=auth,
                                      timeout=SYNC_LIMIT_S + 30)
        out["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=sync)
    thread.start()
    time.sleep(0.3)
    upload = requests.post(f"{server.url}/api/v1/predictions", headers=auth, timeout=30,
                           files={"image": ("slice.jpg", slice_path.read_bytes())})
    thread.join()

    # Assert: a 503 that says what went wrong, in time; the update still queued; the
    # appliance stored the upload and is healthy.
    answer = out["answer"]
    print(f"{mode}: {answer.status_code} in {out['seconds']:.1f} s: {answer.text[:200]}")
    assert answer.status_code == 503, answer.text[:500]
    assert "coordinator" in answer.json()["error"], answer.json()
    assert out["seconds"] < SYNC_LIMIT_S
    assert [e.update_id for e in Outbox(server.data_dir).pending()] == [update_id]
    assert upload.status_code == 201, upload.text
    assert_healthy(server.url)
