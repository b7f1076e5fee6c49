"""Uploads through Flask's test client: one slice or a batch, a form posted twice, a
failing file in a batch, camera capture."""
from __future__ import annotations

import re
import threading

import cv2
import pytest
from tests.device.webclient import csrf, form_post, login, upload


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


def test_a_form_posted_twice_stores_its_cases_once(app, admin, slice_bytes, services,
                                                   data_dir):
    client = app.test_client()
    login(client)
    form_id = re.search(r'name="form_id" value="([0-9a-f]{32})"',
                        client.get("/").get_data(as_text=True)).group(1)
    other = cv2.imencode(".png", cv2.imread(str(data_dir / "no/10 no.jpg"),
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

    def full_disk_on_the_second(data, source, **kwargs):
        if len(services.store.list()) == 1:
            raise OSError(28, "No space left on device")
        return analyse(data, source, **kwargs)

    monkeypatch.setattr(services.analyser, "analyse", full_disk_on_the_second)
    client = app.test_client()
    login(client)
    first = form_post(client, "cd" * 16, ("a.jpg", slice_bytes), ("b.jpg", slice_bytes))
    again = form_post(client, "cd" * 16, ("a.jpg", slice_bytes), ("b.jpg", slice_bytes))
    page = client.get(first.headers["Location"]).get_data(as_text=True)

    assert again.headers["Location"] == first.headers["Location"]
    assert services.store.count() == 1  # the first file's case, stored once
    assert "not analysed (OSError)" in page and "b.jpg" in page


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
