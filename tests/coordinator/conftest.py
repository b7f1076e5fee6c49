"""Coordinator fixtures: settings on a temp state folder, services, a real server."""
from __future__ import annotations

import pytest

from coordinator.config import load_settings
from tests.conftest import running

ADMIN_PASSWORD = "coordinator admin pw"


@pytest.fixture
def coord_settings(tmp_path):
    return load_settings(state_dir=tmp_path / "state", min_updates=2, min_quorum=1,
                         max_norm=10.0)


@pytest.fixture
def coord(coord_settings):
    from coordinator.services import build_services
    svc = build_services(coord_settings)
    yield svc
    svc.close()


@pytest.fixture
def coord_app(coord_settings, coord):
    from coordinator.api import create_app
    app = create_app(coord_settings, coord, "test-secret")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def coord_server(coord_app):
    """A real waitress server on 127.0.0.1 (ephemeral port) in a background thread."""
    with running(coord_app) as url:
        yield url


@pytest.fixture
def enroll(coord):
    """Enrol a device; returns its bearer token."""
    from coordinator.api.auth import hash_token, new_device_token

    def _enroll(device_id: str) -> str:
        token = new_device_token()
        coord.store.enroll(device_id, hash_token(token))
        return token
    return _enroll
