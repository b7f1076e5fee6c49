"""Issue 26, finding 13: ``device serve`` on a laptop (or a Pi without the LED wired)
crashed with gpiozero's ``BadPinFactory`` unless ``GPIOZERO_PIN_FACTORY=mock`` was set.
It now serves, says so in its log, and drives no LED."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.e2e.conftest import REPO, START_TIMEOUT_S

PI_MODEL = Path("/proc/device-tree/model")


def test_device_serve_without_a_pin_factory_serves_with_a_warning(tmp_path):
    # Prepare: no gpiozero pin factory named, on a machine that is not a Raspberry Pi
    if PI_MODEL.exists() and "Raspberry Pi" in PI_MODEL.read_text(errors="replace"):
        pytest.skip("a Raspberry Pi has a pin factory")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEUROEDGE_", "GPIOZERO_"))}
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "device", "serve", "--data-dir", str(tmp_path / "d"),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # Execute: wait for the health probe, or for the process to die
            health = None
            deadline = time.monotonic() + START_TIMEOUT_S
            while proc.poll() is None and health is None and time.monotonic() < deadline:
                try:
                    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                except requests.RequestException:
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    # Assert: it served, and the log says why there is no LED
    text = log.read_text(errors="replace")
    assert health is not None and health.status_code == 200, text[-2000:]
    assert "no status LED" in text and "Traceback" not in text
