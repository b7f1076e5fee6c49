"""The two servers of ``make bench`` as real processes on loopback: the appliance
(``python -m device serve``, JSON API with a token) and the bare durable peer."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from device.bench.load import Target

PEER_MODULE = "device.bench.peer"
THREADS = 8  # waitress request threads, as the appliance's default
PREP_PEER = "peer+prep"  # the peer preparing its inputs with the training preprocessing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROEDGE_")}
    # No API throttling: the load generator is meant to saturate the appliance.
    return {**env, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1",
            "NEUROEDGE_API_RATE_LIMIT": ""}


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident memory of a process now and at its peak, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()

    def field(key: str) -> float:
        found = re.search(rf"{key}:\s+(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else float("nan")
    return field("VmRSS"), field("VmHWM")


class Server:
    """One server process; ``cpus`` pins it (``taskset -c``), e.g. "0" for one core."""

    def __init__(self, name: str, target: Target, cmd: list[str], cpus: str | None) -> None:
        self.name, self.target = name, target
        pin = ["taskset", "-c", cpus] if cpus else []
        self.proc = subprocess.Popen([*pin, *cmd], env=_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited {self.proc.returncode} at start")
            try:
                urllib.request.urlopen(f"{target.url}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not answer /healthz within 120 s")

    def memory_mb(self) -> tuple[float, float]:
        """Resident memory now and at its peak, MB."""
        return memory_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _device_cli(*args: str, data_dir: Path, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "device", *args, "--data-dir", str(data_dir)],
                          input=stdin, capture_output=True, text=True, env=_env(), check=True)
    return done.stdout


def start_appliance(data_dir: Path, cpus: str | None) -> Server:
    """``device serve`` on the shipped bundle, with an API token for the clients."""
    _device_cli("adduser", "bench", "--role", "admin", "--password-stdin",
                data_dir=data_dir, stdin="load test passphrase\n")
    token = _device_cli("token", "create", "bench", data_dir=data_dir).split()[-1]
    port = free_port()
    target = Target(f"http://127.0.0.1:{port}", "/api/v1/predictions",
                    {"Authorization": f"Bearer {token}"})
    return Server("appliance", target, [sys.executable, "-m", "device", "serve",
                                        "--data-dir", str(data_dir), "--port", str(port)],
                  cpus)


def start_peer(model: Path, data_dir: Path, cpus: str | None,
               training_preprocessing: bool = False) -> Server:
    """The bare durable peer (:mod:`device.bench.peer`) on the same model file; named
    "peer", or :data:`PREP_PEER` when it prepares inputs with the training preprocessing."""
    port = free_port()
    flag = ["--training-preprocessing"] if training_preprocessing else []
    return Server(PREP_PEER if training_preprocessing else "peer",
                  Target(f"http://127.0.0.1:{port}", "/predict"),
                  [sys.executable, "-m", PEER_MODULE, str(model), str(data_dir), str(port),
                   str(THREADS), *flag], cpus)
