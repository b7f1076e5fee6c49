"""Signing in through Flask's test client: first-run setup, sessions and cookies, CSRF,
throttling, and accounts an administrator resets or disables."""
from __future__ import annotations

import io

from tests.device.conftest import PASSWORD
from tests.device.webclient import csrf, login, signed_in_with_a_case


def test_first_visit_opens_setup_guarded_by_the_logged_code(app, services):
    from device.accounts import new_setup_code
    client = app.test_client()
    code = new_setup_code(services.accounts)

    assert client.get("/").headers["Location"].endswith("/setup")
    form = {"username": "root", "password": "0123456789ab", "password2": "0123456789ab",
            "csrf_token": csrf(client, "/setup")}
    wrong = client.post("/setup", data={**form, "setup_code": "guess"})
    assert wrong.status_code == 403 and services.accounts.count_users() == 0
    assert b'name="username" value="root"' in wrong.data  # kept: only the code was wrong
    response = client.post("/setup", data={**form, "setup_code": code})

    assert response.status_code == 302
    assert services.accounts.get_user("root").role == "admin"
    assert client.get("/setup").headers["Location"].endswith("/login")  # one time only


def test_login_logout_and_pages_need_a_session(app, admin):
    client = app.test_client()
    assert client.get("/cases/").status_code == 302

    assert login(client).status_code == 302
    assert client.get("/cases/").status_code == 200
    client.post("/logout", data={"csrf_token": csrf(client, "/")})

    assert client.get("/cases/").headers["Location"].startswith("/login")


def test_session_cookie_is_httponly_and_samesite_strict(app, admin):
    client = app.test_client()

    cookie = login(client).headers["Set-Cookie"]

    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_form_without_the_csrf_token_is_refused(app, admin, slice_bytes):
    client = app.test_client()
    login(client)

    response = client.post("/upload", data={"images": [(io.BytesIO(slice_bytes), "a.jpg")]},
                           content_type="multipart/form-data")

    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_repeated_wrong_passwords_are_throttled(app, admin, settings):
    client = app.test_client()
    for _ in range(settings.login_attempts):
        assert login(client, password="wrong password").status_code == 401

    response = login(client)  # even the right password waits out the window

    assert response.status_code == 429


def test_a_very_long_user_name_is_a_wrong_login_and_is_throttled(app, admin, settings):
    client = app.test_client()
    name = "alice" + "x" * 1995

    first = login(client, user=name)
    for _ in range(settings.login_attempts - 1):
        login(client, user=name)

    assert first.status_code == 401
    assert "Wrong user name or password." in first.get_data(as_text=True)
    assert login(client, user=name).status_code == 429
    assert login(client).status_code == 302  # alice herself is not locked out


def test_an_expired_session_sends_a_form_to_sign_in_and_back_without_acting(
        app, admin, slice_bytes, services):
    client, case = signed_in_with_a_case(app, services, slice_bytes)
    token = csrf(client, f"/cases/{case.id}")
    client.delete_cookie("neuroedge_session")  # the 8-hour session ran out

    response = client.post(f"/cases/{case.id}/confirm", data={"label": "1", "csrf_token": token},
                           headers={"Referer": f"http://localhost/cases/{case.id}"})
    page = client.get(response.headers["Location"]).get_data(as_text=True)

    assert response.status_code == 302  # not "400 missing or invalid CSRF token"
    assert response.headers["Location"] == f"/login?next=/cases/{case.id}"
    assert "session has ended" in page
    assert services.store.get(case.id).confirmed_label is None
    signed_out = client.post("/logout", data={})
    assert signed_out.headers["Location"].startswith("/login")


def test_a_disabled_account_is_signed_out_at_its_next_request(app, admin, services):
    client = app.test_client()
    login(client)
    assert client.get("/cases/").status_code == 200

    services.accounts.set_disabled("alice", True)

    assert client.get("/cases/").headers["Location"].startswith("/login")
    assert login(client).status_code == 401


def test_a_reset_or_re_enabled_account_starts_from_a_new_sign_in(
        app, admin, services, settings):
    from device.accounts import end_sessions, hash_password
    stolen, locked_out = app.test_client(), app.test_client()
    login(stolen)
    for _ in range(settings.login_attempts):
        login(locked_out, password="wrong password")
    assert login(locked_out).status_code == 429

    # What `device user disable`, `enable` and `passwd` do to the account.
    services.accounts.set_disabled("alice", True)
    services.accounts.set_disabled("alice", False)
    services.accounts.set_password("alice", hash_password("a new password!"))
    end_sessions(services.accounts, "alice")

    assert stolen.get("/cases/").headers["Location"].startswith("/login")  # no request
    assert login(locked_out, password="a new password!").status_code == 302  # in between


def test_sign_in_returns_to_the_filtered_list_it_interrupted(app, admin):
    client = app.test_client()
    to_login = client.get("/cases/?status=unconfirmed&page=2").headers["Location"]

    response = client.post(to_login, data={"username": "alice", "password": PASSWORD,
                                           "csrf_token": csrf(client)})

    assert response.headers["Location"] == "/cases/?status=unconfirmed&page=2"


def test_a_failed_sign_in_keeps_the_name_and_the_lockout_says_how_long(app, admin, settings):
    client = app.test_client()
    wrong = login(client, password="wrong password").get_data(as_text=True)
    for _ in range(settings.login_attempts - 1):
        login(client, password="wrong password")

    locked = login(client).get_data(as_text=True)

    assert 'value="alice"' in wrong
    assert f"try again in {settings.login_window_s // 60} minutes" in locked
    assert "administrator" in locked


def test_every_page_names_a_favicon_the_appliance_serves(app):
    client = app.test_client()

    page = client.get("/login").get_data(as_text=True)
    icon = client.get("/static/favicon.svg")

    assert '<link rel="icon" type="image/svg+xml" href="/static/favicon.svg">' in page
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.get_data().startswith(b"<svg")
