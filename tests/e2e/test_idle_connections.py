"""Idle and slow connections must not stall the services (issue 26, finding 1).

One TCP connection that never sends a byte (no ClientHello, no request line) or sends
half a request and stops must not hold up other clients: a health probe stays under a
second with IDLE_SOCKETS of each kind open. These are the services as ``serve`` runs
them; the deployed TLS terminator (nginx) in front of them is checked the same way by
``tests/ansible/run_e2e.sh``."""
from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack, closing

import requests

from tests.e2e.coordinator_process import Coordinator
from tests.e2e.conftest import Appliance

IDLE_SOCKETS = 4
PROBE_LIMIT_S = 1.0
PROBE_TIMEOUT_S = 30.0


def _connect(port: int, stack: ExitStack, first_bytes: bytes = b"") -> None:
    """A connection that is left open; never blocks (a stalled server may not even
    accept it, which the probe then shows)."""
    sock = stack.enter_context(closing(socket.socket()))
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    if first_bytes:
        select.select([], [sock], [], 1.0)
        try:
            sock.send(first_bytes)
        except OSError:
            pass


def idle_and_slow_clients(port: int, stack: ExitStack) -> None:
    """IDLE_SOCKETS connections that send nothing and IDLE_SOCKETS that send half a
    request, all left open until ``stack`` closes."""
    for _ in range(IDLE_SOCKETS):
        _connect(port, stack)
    for _ in range(IDLE_SOCKETS):
        _connect(port, stack, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    time.sleep(0.2)  # let the server accept them before the probe


def probe_seconds(server: Coordinator | Appliance) -> float:
    """Seconds one fresh client takes to get a 200 from ``/healthz``."""
    started = time.monotonic()
    response = requests.get(f"{server.url}/healthz", timeout=PROBE_TIMEOUT_S,
                            verify=server.verify)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def test_coordinator_health_probe_is_fast_with_idle_and_slow_connections(
        tmp_path, start_coordinator):
    # Prepare: the coordinator as deployed (plain HTTP on loopback, behind nginx), and
    # clients that never finish talking.
    server = start_coordinator(tmp_path / "state")
    with ExitStack() as stack:
        idle_and_slow_clients(server.port, stack)

        # Execute
        seconds = [probe_seconds(server) for _ in range(3)]

    # Assert
    assert max(seconds) < PROBE_LIMIT_S, f"health probes took {seconds} s"


def test_appliance_health_probe_is_fast_with_idle_and_slow_connections(start_appliance):
    # Prepare
    server = start_appliance()
    with ExitStack() as stack:
        idle_and_slow_clients(server.port, stack)

        # Execute
        seconds = [probe_seconds(server) for _ in range(3)]

    # Assert
    assert max(seconds) < PROBE_LIMIT_S, f"health probes took {seconds} s"
