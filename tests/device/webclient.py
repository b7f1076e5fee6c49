"""Flask test-client steps the web tests share: read the CSRF token, sign in, upload."""
from __future__ import annotations

import io
import re

from tests.device.conftest import PASSWORD


def csrf(client, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def login(client, user: str = "alice", password: str = PASSWORD):
    return client.post("/login", data={"username": user, "password": password,
                                       "csrf_token": csrf(client)})


def upload(client, *files: tuple[str, bytes]):
    token = csrf(client, "/")
    return client.post("/upload", data={
        "csrf_token": token, "images": [(io.BytesIO(d), n) for n, d in files]},
        content_type="multipart/form-data")


def signed_in_with_a_case(app, services, slice_bytes):
    """A test client signed in as the admin, and the case its one upload stored."""
    client = app.test_client()
    login(client)
    upload(client, ("a.jpg", slice_bytes))
    return client, services.store.list()[0]


def form_post(client, form_id: str, *files: tuple[str, bytes], **fields: str):
    """The upload form as the page renders it: with its one-time form id (and
    ``fields`` such as the reference and the note)."""
    return client.post("/upload", data={
        "csrf_token": csrf(client, "/"), "form_id": form_id, **fields,
        "images": [(io.BytesIO(d), n) for n, d in files]}, content_type="multipart/form-data")
