"""A real coordinator on loopback for the sync tests (a round that stays open), the
device's token for it, and the device's HTTP client."""
from __future__ import annotations

import pytest

from device.sync.client import CoordinatorClient
from tests.conftest import free_port
from tests.device.sync.wire import DEVICE


@pytest.fixture
def coord_settings(tmp_path):
    """min_updates high: the round stays open, so several updates from one test fit."""
    from coordinator.config import load_settings
    return load_settings(state_dir=tmp_path / "state", min_updates=5, min_quorum=1,
                         max_norm=10.0)


@pytest.fixture
def token(enroll) -> str:
    return enroll(DEVICE)


@pytest.fixture
def client(coord_server, token):
    with CoordinatorClient(coord_server, token, timeout=10) as c:
        yield c


@pytest.fixture
def closed_url() -> str:
    """A loopback URL on which nothing listens (connection refused at once)."""
    return f"http://127.0.0.1:{free_port()}"
