"""Both services behind the TLS terminator (nginx on the same machine): its forwarded
client address and scheme are believed when ``trusted_proxy`` names it, and a
client's own forwarded headers are ignored otherwise. Real ``serve`` processes; what
nginx sends is written by hand here (``tests/ansible/run_e2e.sh`` runs nginx)."""
from __future__ import annotations

import re
import sys

import pytest
import requests

from tests.e2e.conftest import PASSWORD, Appliance, add_user
from tests.e2e.coordinator_process import enroll

WRONG = "not the password at all"


@pytest.mark.parametrize("trusted", [True, False], ids=["proxy-trusted", "no-proxy"])
def test_coordinator_links_follow_the_proxy_only_when_it_is_trusted(
        tmp_path, start_coordinator, trusted):
    # Prepare: a coordinator behind a TLS terminator on this machine (or not).
    state = tmp_path / "state"
    token = enroll(state, "pi-1")
    config = tmp_path / "coordinator.toml"
    config.write_text('trusted_proxy = "127.0.0.1"\n' if trusted else "")
    server = start_coordinator(state, config)

    # Execute: what nginx sends for a device that asked https://coordinator.lan:8443/.
    latest = requests.get(f"{server.url}/api/v1/bundles/latest", timeout=10, headers={
        "Authorization": f"Bearer {token}", "Host": "coordinator.lan:8443",
        "X-Forwarded-Proto": "https", "X-Forwarded-For": "192.168.10.21"})

    # Assert: the download links stay on the proxy's https only if it is trusted.
    assert latest.status_code == 200, latest.text
    scheme = "https" if trusted else "http"
    links = latest.json()["files"].values()
    assert links and all(u.startswith(f"{scheme}://coordinator.lan:8443/") for u in links)


def _sign_in(url: str, password: str, client_address: str) -> int:
    """One sign-in as alice, as forwarded by a proxy for ``client_address``."""
    with requests.Session() as browser:
        browser.headers["X-Forwarded-For"] = client_address
        page = browser.get(f"{url}/login", timeout=10).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        return browser.post(f"{url}/login", timeout=10, allow_redirects=False, data={
            "username": "alice", "password": password, "csrf_token": csrf}).status_code


@pytest.mark.parametrize("trusted", [True, False], ids=["proxy-trusted", "no-proxy"])
def test_appliance_sign_in_lockout_is_per_client_behind_a_trusted_proxy(
        tmp_path, request, trusted):
    # Prepare: an appliance that locks a user out after 2 failures from one address.
    data = tmp_path / "data"
    add_user(data, "alice")
    config = tmp_path / "device.toml"
    config.write_text("login_attempts = 2\n"
                      + ('trusted_proxy = "127.0.0.1"\n' if trusted else ""))
    server = Appliance(data, tmp_path, 1)
    server.spawn([sys.executable, "-m", "device", "serve", "--data-dir", str(data), "--config",
                  str(config), "--host", "127.0.0.1", "--port", str(server.port)])
    request.addfinalizer(server.stop)
    failures = [_sign_in(server.url, WRONG, "192.168.10.66") for _ in range(2)]

    # Execute: the attacker's address again, then a clinician at another address.
    attacker = _sign_in(server.url, WRONG, "192.168.10.66")
    clinician = _sign_in(server.url, PASSWORD, "192.168.10.21")

    # Assert: behind a trusted proxy only the attacker's address is locked out; without
    # one, the forwarded header is ignored and both come from the same address.
    assert failures == [401, 401] and attacker == 429
    assert clinician == (302 if trusted else 429)
