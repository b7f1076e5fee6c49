"""Issue 26's findings on the coordinator's web layer: redirects after sign-in (3, 4),
sessions after sign-out (5), malformed npz payloads (8), the security headers (11)."""
from __future__ import annotations

import io
import re
import struct
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pytest
from werkzeug.security import generate_password_hash

from tests.coordinator.test_api import delta, send

ADMIN, PASSWORD = "root", "coordinator admin password"


@pytest.fixture
def admin(coord) -> str:
    # Older software's scrypt hash: signing in must still work (and upgrades it)
    coord.store.add_admin(ADMIN, generate_password_hash(PASSWORD))
    return ADMIN


def _csrf(client, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _login(client, query: str = "", password: str = PASSWORD):
    return client.post(f"/login{query}", data={"username": ADMIN, "password": password,
                                               "csrf_token": _csrf(client)})


@pytest.mark.parametrize("next_value", ["/%09/evil.example/", "/%5C/evil.example/",
                                        "/%0a/evil.example/", "https://evil.example/"])
def test_dashboard_sign_in_never_redirects_to_another_site(coord_app, admin, next_value):
    client = coord_app.test_client()

    response = _login(client, f"?next={next_value}")

    location = response.headers["Location"]
    as_browser = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    assert response.status_code == 302
    assert urlsplit(as_browser).netloc == "" and not as_browser.startswith("//")


def test_a_newline_in_next_is_a_redirect_not_a_500(coord_app, admin):
    client = coord_app.test_client()

    response = _login(client, "?next=/%0d%0aSet-Cookie:%20x=1")

    assert response.status_code == 302 and "\n" not in response.headers["Location"]


def test_a_dashboard_cookie_saved_before_sign_out_no_longer_works(coord_app, admin):
    # Prepare: a signed-in administrator whose cookie someone copied
    client = coord_app.test_client()
    assert _login(client).status_code == 302
    saved = client.get_cookie("neuroedge_coordinator").value

    # Execute: finding 5, sign out and replay the cookie
    client.post("/logout", data={"csrf_token": _csrf(client, "/")})
    client.set_cookie("neuroedge_coordinator", saved)
    replayed = client.get("/")

    # Assert: the session ended on the server
    assert replayed.status_code == 302 and "/login" in replayed.headers["Location"]


def test_an_old_scrypt_hash_signs_in_and_is_upgraded_to_argon2(coord_app, coord, admin):
    client = coord_app.test_client()

    assert _login(client).status_code == 302
    assert coord.store.get_admin(ADMIN).password_hash.startswith("$argon2id$")
    assert _login(coord_app.test_client()).status_code == 302


def _encrypted_flag(payload: bytes) -> bytes:
    """The npz with bit 0 (encrypted) set in every local and central header."""
    data = bytearray(payload)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            flags = struct.unpack_from("<H", data, at + offset)[0]
            struct.pack_into("<H", data, at + offset, flags | 1)
            at = data.find(signature, at + 4)
    return bytes(data)


def _garbled_deflate(arrays: dict[str, np.ndarray]) -> bytes:
    """An int8 npz compressed with deflate, the first member's stream garbled in the
    middle (its sizes and names intact)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        first = zf.infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    for i in range(start + 4, start + min(first.compress_size, 40)):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("kind", ["encrypted member", "garbled deflate"])
def test_a_malformed_npz_is_422_and_audited_not_a_500(coord_server, coord, enroll, kind):
    # Prepare: a valid int8 update, then broken as finding 8 found
    from models.core.update_codec import encode
    token = enroll("pi-1")
    payload, meta = encode(delta(coord), "int8")
    if kind == "encrypted member":
        payload = _encrypted_flag(payload)
    else:
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            arrays = {i.filename[:-4]: np.lib.format.read_array(zf.open(i))
                      for i in zf.infolist()}
        payload = _garbled_deflate(arrays)

    # Execute
    response = send(coord_server, token, "pi-1", payload=payload, meta=meta)

    # Assert: refused with a reason, and audited
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "payload"
    events = coord.store.audit_events(kind="update_refused")
    assert events and events[0].device_id == "pi-1"


INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\son[a-z]+\s*=|\sstyle\s*=", re.I)


def test_dashboard_pages_send_a_csp_without_inline_code(coord_app, admin):
    # Prepare: a signed-in administrator
    client = coord_app.test_client()
    _login(client)

    # Execute: finding 11, the pages an administrator opens
    pages = [client.get(p) for p in ("/", "/audit")] + [coord_app.test_client().get("/login")]

    # Assert: a strict policy, the other headers, and nothing inline to need it relaxed
    for response in pages:
        csp = response.headers.get("Content-Security-Policy", "")
        assert response.status_code == 200
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert INLINE.findall(response.get_data(as_text=True)) == []
