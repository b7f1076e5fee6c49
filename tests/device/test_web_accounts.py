"""Accounts managed in the browser by an administrator: users added, disabled, enabled
and reset, API tokens created (shown once) and revoked; CSRF-protected, logged, and
for administrators only."""
from __future__ import annotations

import logging

from tests.device.conftest import PASSWORD
from tests.device.webclient import csrf, login

NEW_PASSWORD = "a long and new passphrase"


def post(client, path: str, **form: str):
    return client.post(path, data={"csrf_token": csrf(client, "/admin/"), **form})


def test_an_admin_adds_a_user_who_can_sign_in_and_is_logged(app, admin, services, caplog):
    client = app.test_client()
    login(client)

    with caplog.at_level(logging.INFO, logger="device.web.accounts_admin"):
        added = post(client, "/admin/accounts/users", name="bob", role="clinician",
                     password=NEW_PASSWORD, password2=NEW_PASSWORD)

    assert added.status_code == 303
    assert services.accounts.get_user("bob").role == "clinician"
    assert login(app.test_client(), "bob", NEW_PASSWORD).status_code == 302
    assert "user bob (clinician) added by alice" in caplog.text
    assert NEW_PASSWORD not in caplog.text


def test_bad_requests_change_nothing_and_say_why(app, admin, services):
    client = app.test_client()
    login(client)

    weak = post(client, "/admin/accounts/users", name="bob", role="clinician",
                password="bob" * 4, password2="bob" * 4)
    differ = post(client, "/admin/accounts/users", name="bob", role="clinician",
                  password=NEW_PASSWORD, password2=NEW_PASSWORD + "x")
    forged = client.post("/admin/accounts/users", data={
        "name": "bob", "role": "admin", "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    self_disable = post(client, "/admin/accounts/users/alice/disable")

    assert weak.status_code == differ.status_code == forged.status_code == 400
    assert "the two passwords differ" in differ.get_data(as_text=True)
    assert self_disable.status_code == 400
    assert services.accounts.get_user("bob") is None
    assert not services.accounts.get_user("alice").disabled


def test_disable_ends_the_users_session_and_enable_lets_them_back(app, admin, services):
    from device.accounts import hash_password
    services.accounts.add_user("carol", "clinician", hash_password(PASSWORD, "carol"))
    boss, carol = app.test_client(), app.test_client()
    login(boss)
    login(carol, "carol")

    post(boss, "/admin/accounts/users/carol/disable")
    out = carol.get("/cases/")
    post(boss, "/admin/accounts/users/carol/enable")

    assert out.status_code == 302   # signed out at her next request
    assert login(app.test_client(), "carol").status_code == 302


def test_a_token_is_shown_once_works_and_a_reset_or_revoke_ends_it(app, admin, services):
    client = app.test_client()
    login(client)

    created = post(client, "/admin/accounts/tokens", name="pacs-bridge", user="alice")
    page = created.get_data(as_text=True)
    token = page.split('id="new-token">')[1].split("<")[0]
    admin_page = client.get("/admin/").get_data(as_text=True)
    works = app.test_client().get("/api/v1/federation",
                                  headers={"Authorization": f"Bearer {token}"})
    post(client, "/admin/accounts/tokens/pacs-bridge/revoke")
    revoked = app.test_client().get("/api/v1/federation",
                                    headers={"Authorization": f"Bearer {token}"})

    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    assert token.startswith("ne_") and token not in admin_page and "pacs-bridge" in admin_page
    assert works.status_code == 200 and revoked.status_code == 401
    # A password reset revokes the user's tokens and ends their sessions.
    second = post(client, "/admin/accounts/tokens", name="script", user="alice")
    assert second.status_code == 201
    reset = post(client, "/admin/accounts/password", user="alice", password=NEW_PASSWORD,
                 password2=NEW_PASSWORD)
    assert reset.status_code == 303 and services.accounts.list_tokens() == []


def test_a_clinician_cannot_manage_accounts(app, admin, services):
    from device.accounts import hash_password
    services.accounts.add_user("carol", "clinician", hash_password(PASSWORD, "carol"))
    client = app.test_client()
    login(client, "carol")
    token = csrf(client, "/")

    refused = client.post("/admin/accounts/users", data={
        "csrf_token": token, "name": "mallory", "role": "admin", "password": NEW_PASSWORD,
        "password2": NEW_PASSWORD})

    assert refused.status_code == 403 and services.accounts.get_user("mallory") is None
