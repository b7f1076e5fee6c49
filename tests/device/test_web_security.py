"""Issue 26's findings on the appliance's web layer, each reproduced through Flask's test
client: redirects after sign-in (3, 4), sessions after sign-out (5), sign-in timing
(7), weak passwords at setup (10) and the security headers (11)."""
from __future__ import annotations

import re
import statistics
import time
from urllib.parse import urlsplit

import pytest

from tests.device.conftest import PASSWORD
from tests.device.webclient import csrf, login, signed_in_with_a_case


def _login_to(client, next_value: str):
    """Sign in from a login URL whose raw query is ``next=NEXT_VALUE``."""
    return client.post(f"/login?next={next_value}",
                       data={"username": "alice", "password": PASSWORD,
                             "csrf_token": csrf(client)})


@pytest.mark.parametrize("next_value", ["/%09/evil.example/", "/%0a/evil.example/",
                                        "/%5C/evil.example/", "%2F%2Fevil.example/",
                                        "/%0d/evil.example", "https://evil.example/",
                                        "/\\evil.example/", "%09//evil.example/"])
def test_sign_in_never_redirects_to_another_site(app, admin, next_value):
    # Prepare: a client at the login page
    client = app.test_client()

    # Execute: sign in with a crafted next= (finding 3: /%09/evil.example/ answered
    # Location: //evil.example/)
    response = _login_to(client, next_value)

    # Assert: a redirect to this site, even once a browser drops tabs and newlines and
    # reads backslashes as slashes
    location = response.headers["Location"]
    as_browser = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    assert response.status_code == 302
    assert urlsplit(as_browser).netloc == "" and not as_browser.startswith("//")


def test_a_newline_in_next_is_a_redirect_home_not_a_500_nor_a_sticky_error(app, admin,
                                                                           services):
    # Prepare: a client at the login page
    client = app.test_client()

    # Execute: finding 4, a header injection attempt in next=
    response = _login_to(client, "/cases/%0d%0aSet-Cookie:%20x=1")
    health = client.get("/healthz").get_json()

    # Assert: a plain redirect, and the appliance is not in its error state
    assert response.status_code == 302
    assert "\n" not in response.headers["Location"] and "x=1" not in str(response.headers)
    assert health["state"] != "error" and services.status.error_message is None


def test_a_same_site_next_with_its_query_is_kept(app, admin):
    client = app.test_client()

    response = _login_to(client, "/cases/%3Fstatus%3Dunconfirmed")

    assert response.headers["Location"] == "/cases/?status=unconfirmed"


def test_a_cookie_saved_before_sign_out_no_longer_works(app, admin):
    # Prepare: a signed-in browser whose session cookie someone copied
    client = app.test_client()
    login(client)
    saved = client.get_cookie("neuroedge_session").value
    assert client.get("/cases/").status_code == 200

    # Execute: sign out, then replay the saved cookie (finding 5)
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    client.set_cookie("neuroedge_session", saved)
    replayed = client.get("/cases/")

    # Assert: the session ended on the server, not only in the browser
    assert replayed.status_code == 302
    assert replayed.headers["Location"].startswith("/login")


def test_a_cookie_of_a_disabled_then_enabled_account_stays_signed_out(app, admin, services):
    from device.accounts import end_sessions
    client = app.test_client()
    login(client)
    saved = client.get_cookie("neuroedge_session").value

    end_sessions(services.accounts, "alice")
    client.set_cookie("neuroedge_session", saved)

    assert client.get("/cases/").headers["Location"].startswith("/login")


def test_the_session_cookie_is_secure_when_served_over_https(app, admin, settings):
    # Prepare: the default settings (cookie_secure false: plain HTTP on a LAN works)
    assert settings.cookie_secure is False
    client = app.test_client()
    page = client.get("/login", base_url="https://pi.example")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))

    # Execute: sign in over HTTPS (as behind the TLS terminator)
    response = client.post("/login", base_url="https://pi.example",
                           headers={"Referer": "https://pi.example/login"},
                           data={"username": "alice", "password": PASSWORD,
                                 "csrf_token": token.group(1)})

    # Assert: the browser only ever sends this cookie back over HTTPS
    cookie = response.headers["Set-Cookie"]
    assert response.status_code == 302 and "Secure" in cookie


def _median_login_s(client, names: list[str]) -> float:
    times = []
    for name in names:
        started = time.perf_counter()
        response = login(client, user=name, password="not the password!")
        times.append(time.perf_counter() - started)
        assert response.status_code == 401
    return statistics.median(times)


def test_an_unknown_user_name_takes_as_long_as_a_wrong_password(app, admin, settings):
    # Prepare: enough attempts allowed that nobody is throttled
    settings.login_attempts = 1000
    client = app.test_client()
    login(client, user="warm-up", password="x")

    # Execute: finding 7, wrong passwords for alice and for names that do not exist
    known = _median_login_s(client, ["alice"] * 7)
    unknown = _median_login_s(client, [f"nobody{i}" for i in range(7)])

    # Assert: the answer does not tell whether the user exists (was 2-7 ms against 104-140)
    assert unknown >= 0.5 * known, f"unknown {unknown * 1000:.1f} ms, known {known * 1000:.1f} ms"


@pytest.mark.parametrize("password, why", [
    (" " * 12, "repeated"), ("rootrootroot", "user name"), ("password1234", "common"),
    ("0123456789", "common"), ("aaaaaaaaaaaaaaa", "repeated"), ("short", "at least"),
])
def test_setup_refuses_a_weak_first_password(app, services, password, why):
    # Prepare: the first-run setup page and its code
    from device.accounts import new_setup_code
    client = app.test_client()
    code = new_setup_code(services.accounts)

    # Execute: finding 10, a password that is long enough but guessable
    response = client.post("/setup", data={
        "username": "root", "password": password, "password2": password,
        "setup_code": code, "csrf_token": csrf(client, "/setup")})

    # Assert: refused with the reason, and no account made
    assert response.status_code == 400
    assert why in response.get_data(as_text=True)
    assert services.accounts.count_users() == 0


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\son[a-z]+\s*=|\sstyle\s*=", re.I)


def _check_headers_and_no_inline(response) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value
    assert directives.get("default-src") == "'self'"
    assert directives.get("script-src") == "'self'"
    assert directives.get("frame-ancestors") == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert INLINE.findall(response.get_data(as_text=True)) == []


def test_every_page_sends_a_csp_without_inline_code(app, admin, services, slice_bytes):
    # Prepare: a signed-in administrator with one case
    client, case = signed_in_with_a_case(app, services, slice_bytes)

    # Execute: finding 11, the pages a clinician and an administrator open
    pages = [client.get(path) for path in
             ("/", "/cases/", f"/cases/{case.id}", "/admin/", "/healthz")]
    anonymous = app.test_client().get("/login")

    # Assert: each has the headers, and no inline script, style or handler
    for response in [*pages, anonymous]:
        assert response.status_code == 200, response.request.path
        _check_headers_and_no_inline(response)
