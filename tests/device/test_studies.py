"""Slices grouped into studies: by a salted hash of their DICOM StudyInstanceUID (the UID
itself stored nowhere), else by the archive they came in; a mixed upload split into its
studies; a study page with its verdict, strip and slices; labels per study and per slice
that agree."""
from __future__ import annotations

import io
import logging
import sqlite3

import cv2
import numpy as np
import pytest

from device.exc import ConflictError
from device.imaging.dicom import SliceIds
from device.studies import StudyKeys
from tests.device.images import make_dicom
from tests.device.test_web_series_zip import results_page, zipped
from tests.device.webclient import csrf, login, upload

STUDY_A = "1.2.826.0.1.3680043.8.498.11111111111111111111"
STUDY_B = "1.2.826.0.1.3680043.8.498.22222222222222222222"
SERIES = "1.2.826.0.1.3680043.8.498.33333333333333333333"


@pytest.fixture
def pixels(slice_bytes) -> np.ndarray:
    gray = cv2.imdecode(np.frombuffer(slice_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    return gray.astype(np.uint16) * 16


def slice_of(pixels, study: str | None, instance: int) -> bytes:
    ids = {} if study is None else {"StudyInstanceUID": study, "SeriesInstanceUID": SERIES}
    return make_dicom(pixels, InstanceNumber=instance, **ids)


def test_a_study_uid_groups_slices_across_uploads_and_is_stored_only_hashed(
        app, admin, services, pixels, settings, caplog):
    client = app.test_client()
    login(client)
    caplog.set_level(logging.DEBUG)
    # Two slices as separate files in one post (a folder drop), a third one later
    page = results_page(client, upload(client, ("b.dcm", slice_of(pixels, STUDY_A, 2)),
                                       ("a.dcm", slice_of(pixels, STUDY_A, 1))))
    later = client.post("/upload", data={"csrf_token": csrf(client, "/"), "images": [
        (io.BytesIO(slice_of(pixels, STUDY_A, 3)), "c.dcm")]})

    (study,) = services.store.list_studies()
    assert study.slices == 3 and later.status_code == 303
    assert services.store.study(study.id).instances == [1, 2, 3]  # in slice order
    assert "series-summary" in page and "several-studies" not in page
    db = (settings.data_dir / "neuroedge.db").read_bytes()
    wal = settings.data_dir / "neuroedge.db-wal"
    stored = db + (wal.read_bytes() if wal.exists() else b"")
    for uid in (STUDY_A, SERIES):
        assert uid.encode() not in stored and uid not in caplog.text


def test_a_zip_with_two_studies_is_split_and_said_so(app, admin, api_token, services,
                                                     pixels):
    data = zipped(*[(f"S/{i}.dcm", slice_of(pixels, uid, i))
                    for i, uid in enumerate([STUDY_A, STUDY_B, STUDY_A], 1)])
    client = app.test_client()
    login(client)

    page = results_page(client, upload(client, ("mixed.zip", data)))
    api = client.post("/api/v1/series", headers={"Authorization": f"Bearer {api_token}"},
                      data={"archive": (io.BytesIO(data), "mixed.zip")}).get_json()

    assert 'id="several-studies"' in page and "2 studies" in page
    assert sorted(s["slices"] for s in api["studies"]) == [2, 4]  # joined the web's ones
    assert api["summary"] is None and len(services.store.list_studies()) == 2
    for study in api["studies"]:
        assert client.get(study["url"]).status_code == 200


def test_slices_without_a_study_uid_are_grouped_by_their_archive_only(app, admin, services,
                                                                      pixels):
    client = app.test_client()
    login(client)

    page = results_page(client, upload(client, ("one.zip", zipped(
        ("1.dcm", slice_of(pixels, None, 1)), ("2.dcm", slice_of(pixels, None, 2))))))
    upload(client, ("3.dcm", slice_of(pixels, None, 3)), ("4.dcm", slice_of(pixels, None, 4)))

    (study,) = services.store.list_studies()
    assert study.slices == 2 and services.store.count() == 4
    assert "Grouped by their archive" in page


def test_the_study_page_shows_verdict_strip_and_slices(app, admin, services, pixels):
    client = app.test_client()
    login(client)
    upload(client, ("s.zip", zipped(*[(f"{i}.dcm", slice_of(pixels, STUDY_A, i))
                                      for i in (3, 1, 2)])))
    (row,) = services.store.list_studies()

    page = client.get(f"/studies/{row.id}").get_data(as_text=True)
    listing = client.get("/studies/").get_data(as_text=True)
    case_page = client.get(f"/cases/{services.store.list()[0].id}").get_data(as_text=True)

    assert page.count("<title>slice ") == 3 and 'id="study-strip"' in page
    assert "any of its slices is at or above" in page and 'id="study-verdict"' in page
    assert row.id[:8] in listing and f"/studies/{row.id}" in case_page
    assert client.get("/studies/" + "0" * 32).status_code == 404
    assert client.get("/studies/not-a-study").status_code == 404


def test_labels_per_study_and_per_slice_agree(app, admin, services, pixels):
    client = app.test_client()
    login(client)
    upload(client, ("s.zip", zipped(*[(f"{i}.dcm", slice_of(pixels, STUDY_A, i))
                                      for i in (1, 2, 3)])))
    (row,) = services.store.list_studies()
    first, *others = services.store.study(row.id).cases
    token = csrf(client, f"/studies/{row.id}")

    # "No tumour in any slice" labels each unlabelled slice no tumour
    client.post(f"/studies/{row.id}/label", data={"csrf_token": token, "label": "0"})
    assert {c.confirmed_label for c in services.store.study(row.id).cases} == {0}
    # A slice labelled tumour from the study page makes it a tumour study, and returns there
    answer = client.post(f"/cases/{first.id}/confirm", data={
        "csrf_token": token, "label": "1", "return_to": row.id})
    assert answer.headers["Location"].endswith(f"/studies/{row.id}")
    assert services.store.study(row.id).label == 1
    # ... so "no tumour" is refused while it stands, and nothing changes
    refused = client.post(f"/studies/{row.id}/label", data={"csrf_token": token, "label": "0"})
    assert refused.status_code == 409 and "labelled tumour" in refused.get_data(as_text=True)
    with pytest.raises(ConflictError):
        services.store.label_study(row.id, 0, "alice")
    assert services.store.study(row.id).label == 1
    # a return_to that is not the slice's study is ignored (no open redirect)
    elsewhere = client.post(f"/cases/{others[0].id}/confirm", data={
        "csrf_token": token, "label": "0", "return_to": "//evil.example"})
    assert elsewhere.headers["Location"].endswith(f"/cases/{others[0].id}")


def test_study_keys_are_keyed_by_the_appliance_salt(services):
    ids = SliceIds(STUDY_A, SERIES, 7)
    keys = StudyKeys.of(services.accounts)

    assert StudyKeys.of(services.accounts) == keys  # kept: the same UID, the same study
    assert keys.ref(ids, None).id != StudyKeys(b"other salt").ref(ids, None).id
    assert keys.ref(ids, None).instance == 7 and keys.ref(None, "a" * 32).id == "a" * 32
    assert keys.ref(None, None) is None


def test_a_folder_of_files_is_bounded(app, admin, services, pixels):
    client = app.test_client()
    login(client)
    token = csrf(client, "/")
    tiny = b"\x89PNG\r\n\x1a\n"

    def post(count: int):
        return client.post("/upload", data={"csrf_token": token, "images": [
            (io.BytesIO(tiny), f"{n}.png") for n in range(count)]})

    too_many, far_too_many = post(401), post(2000)

    assert too_many.status_code == 400 and "at most 400 files" in too_many.get_data(
        as_text=True)
    assert far_too_many.status_code == 413  # refused while parsing: never 2,000 files read
    assert services.store.count() == 0


def test_a_study_whose_slices_are_all_deleted_is_gone(app, admin, services, pixels):
    client = app.test_client()
    login(client)
    upload(client, ("s.zip", zipped(("1.dcm", slice_of(pixels, STUDY_A, 1)))))
    (row,) = services.store.list_studies()

    services.store.delete(services.store.list()[0].id)

    assert client.get(f"/studies/{row.id}").status_code == 404
    assert services.store.list_studies() == [] and services.store.count_studies() == 0
    with sqlite3.connect(services.settings.data_dir / "neuroedge.db") as db:  # and its row
        assert db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0


def test_a_slice_added_to_a_study_labelled_no_tumour_takes_the_label_away(
        app, admin, services, pixels):
    client = app.test_client()
    login(client)
    upload(client, ("1.dcm", slice_of(pixels, STUDY_A, 1)))
    (row,) = services.store.list_studies()
    services.store.label_study(row.id, 0, "alice")

    upload(client, ("2.dcm", slice_of(pixels, STUDY_A, 2)))  # nobody has read this one

    study = services.store.study(row.id)
    assert study.label is None and [c.confirmed_label for c in study.cases] == [0, None]


def test_the_slices_of_a_study_come_series_by_series(app, admin, services, pixels):
    client = app.test_client()
    login(client)
    other = SERIES.replace("3333", "5555")
    files = [(f"{s}-{i}.dcm", make_dicom(pixels, InstanceNumber=i, StudyInstanceUID=STUDY_A,
                                         SeriesInstanceUID=s))
             for s, i in ((SERIES, 2), (other, 1), (SERIES, 1), (other, 2))]

    upload(client, *files)

    (row,) = services.store.list_studies()
    study = services.store.study(row.id)
    assert [(series, n) for _, n, series in study.slices()] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    page = client.get(f"/studies/{row.id}").get_data(as_text=True)
    assert "in 2 series" in page and "Series 2, slice 1" in page
