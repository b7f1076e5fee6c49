"""Cases and the admin page through Flask's test client: confirm and correct, filters and
pages, delete, CSV export, heat maps, go to case, train and sync now."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from tests.device.conftest import PASSWORD
from tests.device.webclient import csrf, login, signed_in_with_a_case, upload


def test_confirm_correct_filter_and_delete(app, admin, slice_bytes, services):
    client = app.test_client()
    login(client)
    upload(client, ("a.jpg", slice_bytes))
    upload(client, ("b.jpg", slice_bytes))
    first, second = services.store.list()
    token = csrf(client, "/")

    client.post(f"/cases/{first.id}/confirm",
                data={"label": str(first.predicted_label), "csrf_token": token})
    client.post(f"/cases/{second.id}/confirm",
                data={"label": str(1 - second.predicted_label), "csrf_token": token})

    assert services.store.get(first.id).status == "confirmed"
    assert services.store.get(second.id).status == "disagreed"
    assert first.id[:8] in client.get("/cases/?status=confirmed").get_data(as_text=True)
    disagreed = client.get("/cases/?status=disagreed").get_data(as_text=True)
    assert second.id[:8] in disagreed and first.id[:8] not in disagreed
    image = services.store.image_path(second)
    client.post(f"/cases/{second.id}/delete", data={"csrf_token": token})
    assert not image.exists() and services.store.count() == 1
    assert client.get(f"/cases/{second.id}").status_code == 404


def test_bad_label_and_unknown_filter_are_400(app, admin, slice_bytes, services):
    client, case = signed_in_with_a_case(app, services, slice_bytes)

    bad = client.post(f"/cases/{case.id}/confirm",
                      data={"label": "7", "csrf_token": csrf(client, "/")})

    assert bad.status_code == 400
    assert client.get("/cases/?status=mine").status_code == 400


@pytest.mark.parametrize("page, shown", [("99999999999999999999", 2), ("3", 2),
                                         ("-99999999999999999999", 1), ("x", 1)])
def test_a_page_out_of_range_shows_the_nearest_page(app, admin, services, monkeypatch,
                                                    page, shown):
    # Prepare: three cases on pages of two (newest first: the oldest alone on page 2)
    from device.hw.status import State
    monkeypatch.setattr("device.web.cases.PAGE", 2)
    png = cv2.imencode(".png", np.full((64, 64), 80, np.uint8))[1].tobytes()
    oldest, *_ = [services.store.add_case(
        png, source="upload", width=64, height=64, probability=0.2, predicted_label=0,
        threshold=0.5, uncertain=False, model_version=1, latency_ms=1.0) for _ in range(3)]
    client = app.test_client()
    login(client)
    # Execute
    response = client.get(f"/cases/?page={page}")
    # Assert
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert (oldest.id[:8] in text) is (shown == 2)
    assert ("previous" in text) is (shown == 2) and ("next" in text) is (shown == 1)
    assert services.status.state is not State.ERROR


def test_csv_export_has_metadata_but_no_images(app, admin, slice_bytes):
    client = app.test_client()
    login(client)
    upload(client, ("a.jpg", slice_bytes))

    csv = client.get("/cases/export.csv")

    text = csv.get_data(as_text=True)
    assert csv.status_code == 200 and text.splitlines()[0].startswith("id,")
    assert len(text.splitlines()) == 2
    assert "PNG" not in text and ".png" not in text and "JFIF" not in text


def test_admin_page_is_for_admins_and_says_when_there_is_no_coordinator(
        app, admin, services):
    from device.accounts import hash_password
    services.accounts.add_user("carol", "clinician", hash_password(PASSWORD))
    clinician, boss = app.test_client(), app.test_client()
    login(clinician, "carol")
    login(boss)

    denied = clinician.get("/admin/")
    page = boss.get("/admin/").get_data(as_text=True)
    trained = boss.post("/admin/train", data={"csrf_token": csrf(boss, "/admin/")},
                        follow_redirects=True).get_data(as_text=True)

    assert denied.status_code == 403
    assert "No coordinator configured" in page and "carol" in page
    # ...and what a clinic group is and how to join one; an empty token table says so
    assert "<code>coordinator_url</code>" in page and "never images" in page
    assert 'id="no-tokens"' in page
    assert "No coordinator is configured" in trained
    # The shipped model learned from non-commercial data: the page says so
    assert "must not be used commercially" in page


def test_a_clinician_deletes_only_unlabelled_cases_and_an_admin_any(app, admin, slice_bytes,
                                                                    services):
    from device.accounts import hash_password
    services.accounts.add_user("carol", "clinician", hash_password(PASSWORD))
    client = app.test_client()
    login(client, "carol")
    upload(client, ("a.jpg", slice_bytes))
    upload(client, ("b.jpg", slice_bytes))
    labelled, wrong_upload = services.store.list()
    token = csrf(client, "/")
    client.post(f"/cases/{labelled.id}/confirm", data={"label": "1", "csrf_token": token})

    assert 'id="delete"' not in client.get(f"/cases/{labelled.id}").get_data(as_text=True)
    refused = client.post(f"/cases/{labelled.id}/delete", data={"csrf_token": token})
    deleted = client.post(f"/cases/{wrong_upload.id}/delete", data={"csrf_token": token})

    assert refused.status_code == 403 and "administrator" in refused.get_data(as_text=True)
    assert deleted.status_code == 303 and services.store.count() == 1
    admin_client = app.test_client()
    login(admin_client)
    admin_client.post(f"/cases/{labelled.id}/delete", data={"csrf_token": csrf(admin_client)})
    assert services.store.count() == 0


def test_admin_train_and_sync_now_say_why_they_did_nothing(tmp_path):
    from gpiozero import Device

    from device.config import load_settings
    from device.services import build_services
    from device.web import create_app
    from device.accounts import hash_password
    settings = load_settings(data_dir=tmp_path / "data", secret_key="test-secret",
                             coordinator_url="http://127.0.0.1:9", device_id="pi-1",
                             device_token="t" * 32)  # nothing listens on port 9
    svc = build_services(settings)
    try:
        svc.accounts.add_user("alice", "admin", hash_password(PASSWORD))
        client = create_app(settings, svc).test_client()
        login(client)
        token = csrf(client, "/admin/")

        trained = client.post("/admin/train", data={"csrf_token": token},
                              follow_redirects=True).get_data(as_text=True)
        synced = client.post("/admin/sync", data={"csrf_token": token},
                             follow_redirects=True).get_data(as_text=True)
    finally:
        svc.close()
        Device.pin_factory.reset()

    assert "Training not possible now: need at least 8 confirmed training examples" in trained
    flash = re.search(r'class="flash" role="status">([^<]*)<', synced).group(1)
    assert flash.startswith("Sync with http://127.0.0.1:9 failed (coordinator unreachable")
    assert "retried every 15 minutes" in flash
    assert "Coordinator http://127.0.0.1:9" in synced and "No camera detected" in synced


def test_a_heat_map_is_drawn_again_after_the_model_or_colour_scale_changed(
        app, admin, slice_bytes, services):
    client, case = signed_in_with_a_case(app, services, slice_bytes)
    client.get(f"/cases/{case.id}/heatmap.png")
    path = services.store.heatmap_path(services.store.get(case.id))
    drawn = path.stat().st_ino  # a drawing writes a new file, under a new name

    client.get(f"/cases/{case.id}/heatmap.png")
    assert path.stat().st_ino == drawn  # the model in service drew it: kept
    # As if an older model, or older software's per-map colour scale, had drawn it:
    services.store.heatmaps_valid_since("v1 another-key 1")
    redrawn = client.get(f"/cases/{case.id}/heatmap.png").data

    now = services.store.heatmap_path(services.store.get(case.id))
    assert now != path and not path.exists() and redrawn[:4] == b"\x89PNG"
    assert now.read_bytes() == redrawn
    page = " ".join(client.get(f"/cases/{case.id}").get_data(as_text=True).split())
    assert "Occlusion heat map over the slice as stored, drawn by model version 1:" in page


def test_a_replaced_label_is_logged_with_both_clinicians(app, admin, slice_bytes, services,
                                                         caplog):
    from device.accounts import hash_password
    services.accounts.add_user("carol", "clinician", hash_password(PASSWORD))
    alice, carol = app.test_client(), app.test_client()
    login(alice), login(carol, "carol")
    upload(alice, ("a.jpg", slice_bytes))
    case = services.store.list()[0]

    alice.post(f"/cases/{case.id}/confirm", data={"label": "1", "csrf_token": csrf(alice)})
    with caplog.at_level("INFO", logger="device.web.cases"):
        carol.post(f"/cases/{case.id}/confirm", data={"label": "0", "csrf_token": csrf(carol)})
    page = " ".join(carol.get(f"/cases/{case.id}").get_data(as_text=True).split())

    assert f"case {case.id}: label 0 by carol replaces 1 by alice" in caplog.text
    assert "Labelled <strong>no tumour</strong> by carol" in page


def test_go_to_case_opens_a_case_from_the_start_of_its_id(app, admin, slice_bytes, services):
    client, case = signed_in_with_a_case(app, services, slice_bytes)
    unknown = "0" * 8 if not case.id.startswith("0" * 8) else "f" * 8

    found = client.get(f"/cases/?id={case.id[:8].upper()}")
    missing = client.get(f"/cases/?id={unknown}").get_data(as_text=True)
    bad = client.get("/cases/?id=../etc")

    assert found.status_code == 302 and found.headers["Location"] == f"/cases/{case.id}"
    assert f"No case starts with {unknown}." in missing
    assert bad.status_code == 400 and "0-9" in bad.get_data(as_text=True)


def test_the_admin_page_says_in_words_what_training_and_sync_last_did(app, admin, services):
    from device.federation import FederationStatus
    status = FederationStatus(
        pending=0, refused=0, bytes_up=6_300, bytes_down=33_000,
        last_training={"action": "queued", "at": 1_796_000_000.0, "examples": 45,
                       "local_n": 15, "local_accuracy_before": 0.6,
                       "local_accuracy_after": 0.8, "payload_bytes": 5_120},
        last_sync={"at": 1_796_000_100.0, "sent": 1, "deferred": 0, "bundle": "refused",
                   "version": 4, "reason": "local gate: v4 worse than v3"})
    services.federation = type("Joined", (), {"overview": lambda self: status})()
    client = app.test_client()
    login(client)

    page = " ".join(client.get("/admin/").get_data(as_text=True).split())

    assert "on 45 confirmed cases; on 15 held-out cases accuracy went from 60% to 80%" in page
    assert "an update of 5.0 KB (model numbers, no image) was queued" in page
    assert "1 update(s) sent. Version 4 was refused: local gate: v4 worse than v3." in page
    assert "6.2 KB sent, 32.2 KB received. Images never leave it." in page


def test_the_viewer_gets_the_stored_grey_values_in_their_own_depth(
        app, admin, services, slice_bytes):
    # Prepare: a 16-bit PNG slice (its values use the whole 16 bits)
    gray = cv2.imdecode(np.frombuffer(slice_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    values = gray.astype(np.uint16) * 257
    client = app.test_client()
    login(client)
    upload(client, ("deep.png", cv2.imencode(".png", values)[1].tobytes()))
    case = services.store.list()[0]
    # Execute
    answer = client.get(f"/cases/{case.id}/pixels")
    # Assert: the same values, row by row, little-endian, with their size and depth
    assert answer.headers["X-Bits"] == "16"
    shape = int(answer.headers["X-Height"]), int(answer.headers["X-Width"])
    assert np.array_equal(np.frombuffer(answer.data, "<u2").reshape(shape), values)
    assert app.test_client().get(f"/cases/{case.id}/pixels").status_code in (302, 401)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_the_viewer_gets_a_dicom_slices_stored_values_not_its_window(
        app, admin, services, slice_bytes, dtype):
    # Prepare: a DICOM slice whose own window shows a narrow part of its values
    from tests.device.images import make_dicom
    gray = cv2.imdecode(np.frombuffer(slice_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    values = (gray.astype(np.int32) * 40 - (1000 if dtype == np.int16 else 0)).astype(dtype)
    client = app.test_client()
    login(client)
    upload(client, ("s.dcm", make_dicom(values, WindowCenter=3000, WindowWidth=5000)))
    case = services.store.list()[0]
    # Execute
    answer = client.get(f"/cases/{case.id}/pixels")
    # Assert: the values as stored, restored by the offset; the stored image is 8-bit
    shape = int(answer.headers["X-Height"]), int(answer.headers["X-Width"])
    got = np.frombuffer(answer.data, "<u2").reshape(shape).astype(np.int32)
    assert np.array_equal(got + int(answer.headers["X-Offset"]), values)
    stored = cv2.imread(str(services.store.image_path(case)), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and stored.shape == shape
