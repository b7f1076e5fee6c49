"""Device fixtures: settings on a temp data folder, real services (LiteRT on the shipped
bundle, SQLite, gpiozero's MockFactory), the Flask app, and a real waitress server on
loopback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import running

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

from device.config import load_settings  # noqa: E402

REAL_SLICE = "yes/Y1.jpg"
PASSWORD = "correct horse battery"


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(data_dir=tmp_path / "data", secret_key="test-secret")


@pytest.fixture
def services(settings):
    from device.services import build_services
    svc = build_services(settings)
    yield svc
    svc.close()
    from gpiozero import Device
    Device.pin_factory.reset()


@pytest.fixture
def app(settings, services):
    from device.web import create_app
    app = create_app(settings, services)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def admin(services) -> str:
    from device.accounts import hash_password
    services.accounts.add_user("alice", "admin", hash_password(PASSWORD))
    return "alice"


@pytest.fixture
def api_token(services, admin) -> str:
    from device.accounts import hash_token
    token = "ne_test_token_123"
    services.accounts.add_token("pacs", hash_token(token), admin)
    return token


@pytest.fixture(scope="session")
def key(signing_key_file):
    """The test signing key (the ``trained_bundle`` fixture is signed with it)."""
    from models.core.signing import load_signing_key
    return load_signing_key(signing_key_file)


@pytest.fixture(scope="session")
def variants(trained_bundle, key, tmp_path_factory):
    """v1 (the trained bundle, the appliance's shipped one), v2..v5 re-signed copies."""
    from models.core.bundle import resign_bundle
    v1, _ = trained_bundle
    root = tmp_path_factory.mktemp("variants")
    out = {1: v1}
    for version in (2, 3, 4, 5):
        out[version] = root / f"v{version}"
        resign_bundle(v1, out[version], key, version=version, parent_version=version - 1)
    return out


@pytest.fixture
def server(app):
    """A real waitress server on 127.0.0.1 (ephemeral port) in a background thread."""
    with running(app) as url:
        yield url


@pytest.fixture
def slice_bytes(data_dir) -> bytes:
    return (data_dir / REAL_SLICE).read_bytes()
