"""A case tied to the clinic's records in the browser pages: the reference and note given
at upload, the file's name, case ids in batch results, search by reference, editing."""
from __future__ import annotations

import re

from tests.device.webclient import csrf, form_post, login


def test_a_batch_keeps_reference_note_and_file_names_and_shows_case_ids(
        app, admin, services, slice_bytes):
    client = app.test_client()
    login(client)

    first = form_post(client, "ab" * 16, ("Doe^Jane 1.jpg", slice_bytes),
                      ("Doe^Jane 2.jpg", slice_bytes), reference="ACC-0042",
                      note="follow-up in 3 months")
    page = client.get(first.headers["Location"]).get_data(as_text=True)

    cases = services.store.list()
    assert {services.store.get_info(c.id).file_name for c in cases} == \
        {"Doe^Jane 1.jpg", "Doe^Jane 2.jpg"}
    assert {services.store.get_info(c.id).reference for c in cases} == {"ACC-0042"}
    for case in cases:  # the batch results name each case by the id the pages show
        assert f"<code>{case.id[:8]}</code>" in page
    detail = client.get(f"/cases/{cases[0].id}").get_data(as_text=True)
    assert "ACC-0042" in detail and "follow-up in 3 months" in detail
    assert re.search(r'id="file-name">Doe\^Jane \d\.jpg<', detail)


def test_the_case_list_finds_cases_by_reference_and_says_what_it_counts(
        app, admin, services, slice_bytes):
    client = app.test_client()
    login(client)
    form_post(client, "cd" * 16, ("a.jpg", slice_bytes), reference="ACC-7")
    form_post(client, "ef" * 16, ("b.jpg", slice_bytes), reference="OTHER-1")

    found = client.get("/cases/?reference=acc").get_data(as_text=True)
    everything = client.get("/cases/").get_data(as_text=True)

    assert "ACC-7" in found and "OTHER-1" not in found
    assert "1 case: all, reference containing “acc”" in found
    assert "2 cases: all" in everything and "OTHER-1" in everything


def test_reference_and_note_are_edited_on_the_case_page(app, admin, services, slice_bytes):
    client = app.test_client()
    login(client)
    form_post(client, "12" * 16, ("a.jpg", slice_bytes))
    case = services.store.list()[0]
    token = csrf(client, f"/cases/{case.id}")

    saved = client.post(f"/cases/{case.id}/info", data={
        "csrf_token": token, "reference": "ACC-9", "note": "second opinion asked"})
    forged = client.post(f"/cases/{case.id}/info", data={"reference": "X"})

    assert saved.status_code == 303
    assert forged.status_code == 400   # no CSRF token: refused, nothing changed
    info = services.store.get_info(case.id)
    assert (info.reference, info.note, info.file_name) == \
        ("ACC-9", "second opinion asked", "a.jpg")


def test_a_reference_too_long_refuses_the_upload_before_any_file(
        app, admin, services, slice_bytes):
    client = app.test_client()
    login(client)

    response = form_post(client, "34" * 16, ("a.jpg", slice_bytes), reference="x" * 65)

    assert response.status_code == 400
    assert "reference must be text of at most 64 characters" in response.get_data(as_text=True)
    assert services.store.count() == 0


def test_file_names_are_not_kept_when_the_administrator_turns_that_off(
        app, admin, services, slice_bytes, monkeypatch):
    monkeypatch.setattr(services.settings, "keep_file_names", False)
    client = app.test_client()
    login(client)

    form_post(client, "56" * 16, ("Doe^Jane.jpg", slice_bytes), reference="ACC-1")

    assert services.store.get_info(services.store.list()[0].id).file_name == ""


def test_the_case_list_shows_a_small_preview_of_each_slice(app, admin, services, slice_bytes):
    import cv2
    import numpy as np
    client = app.test_client()
    login(client)
    form_post(client, "78" * 16, ("a.jpg", slice_bytes))
    case = services.store.list()[0]

    page = client.get("/cases/").get_data(as_text=True)
    thumb = client.get(f"/cases/{case.id}/thumbnail.png")

    assert f'src="/cases/{case.id}/thumbnail.png"' in page
    assert thumb.status_code == 200 and thumb.mimetype == "image/png"
    image = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and max(image.shape) == 64
    assert app.test_client().get(f"/cases/{case.id}/thumbnail.png").status_code == 302
