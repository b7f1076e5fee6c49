"""Browser-facing routes through Flask's test client: setup, login, CSRF, throttling,
upload, confirm, filters, delete, CSV export, camera."""
from __future__ import annotations

import io
import re
import threading

import cv2
import numpy as np
import pytest

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


def test_first_visit_opens_setup_guarded_by_the_logged_code(app, services):
    from device.accounts import new_setup_code
    client = app.test_client()
    code = new_setup_code(services.accounts)

    assert client.get("/").headers["Location"].endswith("/setup")
    form = {"username": "root", "password": "0123456789ab", "password2": "0123456789ab",
            "csrf_token": csrf(client, "/setup")}
    assert client.post("/setup", data={**form, "setup_code": "guess"}).status_code == 403
    assert services.accounts.count_users() == 0
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


def test_upload_shows_result_with_probability_heat_map_and_notice(app, admin, slice_bytes,
                                                                  services):
    client = app.test_client()
    login(client)

    response = upload(client, ("patient-DOE-JANE.jpg", slice_bytes))

    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Probability of tumour" in page and "heatmap.png" in page
    assert "not a diagnosis" in page
    case = services.store.list()[0]
    assert "DOE" not in case.image_name
    assert client.get(f"/cases/{case.id}/heatmap.png").data[:4] == b"\x89PNG"


def test_batch_upload_reports_each_file_and_keeps_the_good_ones(app, admin, slice_bytes,
                                                                services):
    client = app.test_client()
    login(client)

    response = upload(client, ("a.jpg", slice_bytes), ("b.jpg", b"garbage"),
                      ("c.jpg", slice_bytes))

    results = response.headers["Location"]
    page = client.get(results).get_data(as_text=True)
    assert response.status_code == 303 and results.startswith("/upload/results/")
    assert page.count("Refused") == 1 and services.store.count() == 2
    assert "b.jpg" in page  # named back to the clinician, never stored
    assert client.get(results).status_code == 200 and services.store.count() == 2  # refresh


def form_post(client, form_id: str, *files: tuple[str, bytes]):
    """The upload form as the page renders it: with its one-time form id."""
    return client.post("/upload", data={
        "csrf_token": csrf(client, "/"), "form_id": form_id,
        "images": [(io.BytesIO(d), n) for n, d in files]}, content_type="multipart/form-data")


def test_a_form_posted_twice_stores_its_cases_once(app, admin, slice_bytes, services):
    client = app.test_client()
    login(client)
    form_id = re.search(r'name="form_id" value="([0-9a-f]{32})"',
                        client.get("/").get_data(as_text=True)).group(1)
    other = cv2.imencode(".png", 255 - cv2.imdecode(np.frombuffer(slice_bytes, np.uint8),
                                                    cv2.IMREAD_GRAYSCALE))[1].tobytes()

    first = form_post(client, form_id, ("a.jpg", slice_bytes), ("b.png", other))
    again = form_post(client, form_id, ("a.jpg", slice_bytes), ("b.png", other))
    changed = form_post(client, form_id, ("a.jpg", slice_bytes))  # Back, another choice

    assert again.headers["Location"] == first.headers["Location"]
    assert changed.status_code == 303 and services.store.count() == 3


def test_a_double_click_stores_one_case(app, admin, slice_bytes, services, monkeypatch):
    started, release = threading.Event(), threading.Event()

    def slow_analyse(*args, **kwargs):  # the first post is still analysing...
        started.set()
        assert release.wait(10)
        return analyse(*args, **kwargs)

    analyse = services.analyser.analyse
    monkeypatch.setattr(services.analyser, "analyse", slow_analyse)
    clients = [app.test_client(), app.test_client()]
    for client in clients:
        login(client)
    answers = {}

    def post(i):
        answers[i] = form_post(clients[i], "ab" * 16, ("a.jpg", slice_bytes))

    first = threading.Thread(target=post, args=(0,))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=post, args=(1,))  # ...when the second click arrives
    second.start()
    second.join(0.5)
    assert second.is_alive()  # it waits for the first instead of analysing again
    release.set()
    first.join(10), second.join(10)

    assert [answers[i].status_code for i in (0, 1)] == [303, 303]
    assert answers[0].headers["Location"] == answers[1].headers["Location"]
    assert services.store.count() == 1


def test_a_batch_file_that_fails_is_reported_and_the_others_are_kept(
        app, admin, slice_bytes, services, monkeypatch):
    analyse = services.analyser.analyse

    def full_disk_on_the_second(data, source):
        if len(services.store.list()) == 1:
            raise OSError(28, "No space left on device")
        return analyse(data, source)

    monkeypatch.setattr(services.analyser, "analyse", full_disk_on_the_second)
    client = app.test_client()
    login(client)
    first = form_post(client, "cd" * 16, ("a.jpg", slice_bytes), ("b.jpg", slice_bytes))
    again = form_post(client, "cd" * 16, ("a.jpg", slice_bytes), ("b.jpg", slice_bytes))
    page = client.get(first.headers["Location"]).get_data(as_text=True)

    assert again.headers["Location"] == first.headers["Location"]
    assert services.store.count() == 1  # the first file's case, stored once
    assert "not analysed (OSError)" in page and "b.jpg" in page


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


@pytest.mark.parametrize("camera", [False, True])
def test_capture_button_only_with_a_camera(app, admin, services, data_dir, camera):
    from device.hw.camera import FileCamera
    services.camera = FileCamera(data_dir / "yes" / "Y1.jpg") if camera else None
    client = app.test_client()
    login(client)

    page = client.get("/").get_data(as_text=True)
    response = client.post("/capture", data={"csrf_token": csrf(client, "/")})

    assert ('id="capture"' in page) is camera
    assert response.status_code == (303 if camera else 503)  # CameraUnavailableError
    assert services.store.count() == (1 if camera else 0)


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
    assert "No coordinator is configured" in trained


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
    drawn = path.stat().st_ino  # a drawing writes a new file (temp file, then rename)

    client.get(f"/cases/{case.id}/heatmap.png")
    assert path.stat().st_ino == drawn  # the model in service drew it: kept
    # As if an older model, or older software's per-map colour scale, had drawn it:
    services.store.heatmaps_valid_since("v1 another-key 1")
    redrawn = client.get(f"/cases/{case.id}/heatmap.png").data

    assert path.stat().st_ino != drawn and redrawn[:4] == b"\x89PNG"
    page = " ".join(client.get(f"/cases/{case.id}").get_data(as_text=True).split())
    assert "Occlusion heat map drawn by model version 1:" in page


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
