"""The JSON API on a real waitress server on loopback, with real LiteRT and SQLite."""
from __future__ import annotations

import io
import time
import zlib

import cv2
import numpy as np
import pytest
import requests


def post(server, token, data: bytes, name: str = "slice.jpg", field: str = "image"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{server}/api/v1/predictions", headers=headers,
                         files={field: (name, io.BytesIO(data))}, timeout=30)


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def colour_jpeg() -> bytes:
    """A colour picture: a slice-sized rainbow, as a screenshot of a colour scale."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    return cv2.imencode(".jpg", cv2.applyColorMap(ramp, cv2.COLORMAP_JET))[1].tobytes()


def bomb_png() -> bytes:
    """A valid few-byte PNG whose header claims 30000 x 30000 pixels."""
    data = bytearray(png(np.zeros((10, 10), np.uint8)))
    data[16:24] = (30000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_prediction_returns_the_documented_fields_and_a_fetchable_heat_map(
        server, api_token, slice_bytes, services):
    response = post(server, api_token, slice_bytes)

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"case_id", "reference", "probability", "label", "threshold",
                         "uncertain", "model_version", "head", "latency_ms", "heatmap_url"}
    assert body["head"] == "global"  # no clinic's own head on this appliance
    assert 0.0 <= body["probability"] <= 1.0
    assert body["label"] in ("tumour", "no_tumour")
    assert body["model_version"] == services.slot.current.version
    heat = requests.get(body["heatmap_url"], headers={"Authorization": f"Bearer {api_token}"},
                        timeout=10)
    assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert services.store.get(body["case_id"]).probability == pytest.approx(
        body["probability"], abs=1e-5)


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong", 401)])
def test_missing_or_wrong_token_is_401(server, api_token, slice_bytes, token, status):
    response = post(server, token, slice_bytes)

    assert response.status_code == status
    assert "token" in response.json()["error"]


BAD_INPUTS = {
    "random bytes named .jpg": (np.random.default_rng(0).bytes(5000), 415),
    "zero-byte file": (b"", 400),
    "html renamed": (b"<!doctype html><html><body>hi</body></html>", 415),
    "pdf renamed": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", 415),
    "zip renamed": (b"PK\x03\x04" + b"\x00" * 60, 415),
    "1x1 pixel": (png(np.full((1, 1), 200, np.uint8)), 422),
    "decompression bomb": (bomb_png(), 422),
    "colour picture": (colour_jpeg(), 422),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_writes_nothing(server, api_token, services, case):
    data, status = BAD_INPUTS[case]

    response = post(server, api_token, data)

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]
    assert services.store.count() == 0
    assert requests.get(f"{server}/healthz", timeout=10).json()["status"] == "ok"


def test_a_colour_picture_is_refused_with_the_reason(server, api_token, services):
    response = post(server, api_token, colour_jpeg())

    assert response.status_code == 422
    assert "colour image" in response.json()["error"]
    assert "greyscale" in response.json()["error"]
    assert services.store.count() == 0


def test_truncated_jpeg_is_400_and_writes_nothing(server, api_token, services, slice_bytes):
    response = post(server, api_token, slice_bytes[: len(slice_bytes) * 6 // 10])

    assert response.status_code == 400
    assert "truncated" in response.json()["error"]
    assert services.store.count() == 0


def test_50_mb_upload_is_413(server, api_token, services):
    response = post(server, api_token, b"\xff\xd8\xff" + b"\x00" * (50 * 1024 * 1024))

    assert response.status_code == 413
    assert "MB" in response.json()["error"]
    assert services.store.count() == 0


def test_missing_image_field_is_400(server, api_token, slice_bytes):
    response = post(server, api_token, slice_bytes, field="file")

    assert response.status_code == 400
    assert "'image'" in response.json()["error"]


def test_path_traversal_file_name_is_never_used_on_disk(
        server, api_token, services, slice_bytes, settings):
    response = post(server, api_token, slice_bytes, name="../../../../etc/passwd.jpg")

    assert response.status_code == 201
    case = services.store.get(response.json()["case_id"])
    assert services.store.image_path(case).parent == settings.data_dir / "images"
    assert "passwd" not in case.image_name


def test_healthz_and_metrics_report_model_and_counts(server, api_token, slice_bytes,
                                                     services):
    post(server, api_token, slice_bytes)
    post(server, api_token, b"not an image")

    health = requests.get(f"{server}/healthz", timeout=10).json()
    metrics = requests.get(f"{server}/metrics", timeout=10).text

    assert health["model_version"] == services.slot.current.version
    assert health["store_ok"] is True and health["uptime_s"] >= 0
    assert "neuroedge_predictions_total{label=" in metrics
    assert 'neuroedge_errors_total{kind="UnsupportedTypeError"} 1.0' in metrics
    assert "neuroedge_http_request_seconds_bucket" in metrics
    assert f"neuroedge_model_version {float(services.slot.current.version)}" in metrics


@pytest.mark.parametrize("keep_file_names", [True, False])
def test_dicom_with_patient_name_is_analysed_and_no_identifier_is_stored(
        server, api_token, services, settings, data_dir, monkeypatch, keep_file_names):
    from tests.device.images import PATIENT, make_dicom
    monkeypatch.setattr(services.settings, "keep_file_names", keep_file_names)
    gray = cv2.imread(str(data_dir / "yes/Y1.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16
    dicom = make_dicom(gray, WindowCenter=2000, WindowWidth=4000)
    assert PATIENT[0].encode() in dicom

    response = post(server, api_token, dicom, name="DOE_JANE.dcm")

    assert response.status_code == 201
    case = services.store.get(response.json()["case_id"])
    stored = [services.store.image_path(case).read_bytes()]
    stored += [p.read_bytes() for p in settings.data_dir.glob("neuroedge.db*")]
    for identifier in PATIENT:
        assert all(identifier.encode() not in blob for blob in stored)
    # The file's name is kept with the case unless the administrator turned that off.
    assert services.store.get_info(case.id).file_name == \
        ("DOE_JANE.dcm" if keep_file_names else "")
    if not keep_file_names:
        assert all(b"DOE_JANE" not in blob for blob in stored)


def test_dicom_without_pixel_data_is_422(server, api_token, services):
    from tests.device.images import make_dicom

    response = post(server, api_token, make_dicom(np.zeros((64, 64), np.uint16),
                                                  pixel_data=False), name="x.dcm")

    assert response.status_code == 422
    assert "pixel" in response.json()["error"]
    assert services.store.count() == 0


def test_an_internal_failure_is_500_json_and_shows_on_the_led_and_healthz(
        server, api_token, services, slice_bytes, monkeypatch):
    from device.hw.status import State

    def broken(images):
        raise RuntimeError("interpreter exploded")

    monkeypatch.setattr(services.slot.current, "probabilities", broken)

    response = post(server, api_token, slice_bytes)

    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    assert services.status.state is State.ERROR
    health = requests.get(f"{server}/healthz", timeout=10).json()
    assert health["state"] == "error" and health["last_error"]
    assert services.store.count() == 0


def test_the_status_led_is_solid_on_when_ready_after_an_upload(server, api_token, services,
                                                               slice_bytes, settings):
    from gpiozero import Device

    from device.hw.status import MIN_SHOW, State

    post(server, api_token, slice_bytes)
    time.sleep(MIN_SHOW + 0.1)  # the upload's blink, then the LED's thread shows READY

    assert services.status.state is State.READY
    assert Device.pin_factory.pin(settings.led_pin).state == 1


def test_a_colour_case_stored_by_older_software_gets_a_422_heat_map_and_no_training(
        server, api_token, services):
    # Prepare: a confirmed colour case, as software before the colour check stored them
    from device.services import build_federation
    from device.sync.message_link import MessageLink
    case = services.store.add_case(
        cv2.imencode(".png", cv2.imdecode(np.frombuffer(colour_jpeg(), np.uint8), 1))[1]
        .tobytes(), source="upload", width=256, height=256, probability=0.7,
        predicted_label=1, threshold=0.5, uncertain=False,
        model_version=services.slot.current.version, latency_ms=1.0)
    services.store.confirm(case.id, 1, "alice")
    # Execute
    heat = requests.get(f"{server}/cases/{case.id}/heatmap.png",
                        headers={"Authorization": f"Bearer {api_token}"}, timeout=30)
    x_train, _, x_gate, _ = build_federation(services, MessageLink(None)).examples()
    # Assert: a clear refusal, not a server error; the case is left out, not fatal
    assert heat.status_code == 422 and "no heat map" in heat.text
    assert len(x_train) + len(x_gate) == 0
    assert requests.get(f"{server}/healthz", timeout=10).json()["status"] == "ok"


def test_label_must_be_the_integer_0_or_1_or_a_label_name(server, api_token, services,
                                                          slice_bytes):
    case_id = post(server, api_token, slice_bytes).json()["case_id"]
    url = f"{server}/api/v1/cases/{case_id}/label"
    headers = {"Authorization": f"Bearer {api_token}"}

    refused = {repr(value): requests.post(url, json={"label": value}, headers=headers,
                                          timeout=10).status_code
               for value in (True, False, 1.0, -0.0, 0.5, 2, "1", None, [1])}
    unconfirmed = services.store.get(case_id).confirmed_label
    accepted = requests.post(url, json={"label": 0}, headers=headers, timeout=10)

    assert set(refused.values()) == {400}, refused
    assert unconfirmed is None
    assert accepted.status_code == 200 and accepted.json()["confirmed_label"] == 0
    assert services.store.get(case_id).confirmed_label == 0


def test_two_images_in_one_request_are_400_and_none_is_scored(server, api_token, services,
                                                              slice_bytes):
    response = requests.post(f"{server}/api/v1/predictions",
                             headers={"Authorization": f"Bearer {api_token}"},
                             files=[("image", ("a.jpg", io.BytesIO(slice_bytes))),
                                    ("image", ("b.jpg", io.BytesIO(slice_bytes)))],
                             timeout=30)

    assert response.status_code == 400
    assert "one image per request" in response.json()["error"]
    assert services.store.count() == 0


def multipart(parts: list[tuple[str, bytes]], boundary: str = "neuroedge-test") -> bytes:
    """A multipart/form-data body; a part named "image" is sent as a file."""
    out = []
    for name, value in parts:
        file = '; filename="x.jpg"' if name == "image" else ""
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}'
                   f'\r\n\r\n'.encode() + value + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


FORM_LIMITS = {
    "a 5 MB text field": [("note", b"x" * (5 * 2**20))],
    "1500 form parts": [("f", b"1")] * 1500,
    "a 600 kB field name": [("n" * 600_000, b"1")],
}


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("case", [*sorted(FORM_LIMITS), "a 25 MB image"])
def test_413_says_which_limit_was_hit(server, api_token, services, slice_bytes, case,
                                      chunked):
    parts = [("image", slice_bytes if case in FORM_LIMITS else bytes(25 * 2**20))]
    body = multipart(FORM_LIMITS.get(case, []) + parts)

    response = requests.post(
        f"{server}/api/v1/predictions", data=iter([body]) if chunked else body,
        headers={"Authorization": f"Bearer {api_token}",
                 "Content-Type": "multipart/form-data; boundary=neuroedge-test"},
        timeout=60)

    assert response.status_code == 413
    error = response.json()["error"]
    if case in FORM_LIMITS:
        assert error.startswith("form too large") and "MB" not in error
    else:
        assert error == "upload larger than 20 MB"
    assert services.store.count() == 0


def _keyed(server, token, data: bytes, key: str):
    return requests.post(f"{server}/api/v1/predictions",
                         headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
                         files={"image": ("slice.jpg", io.BytesIO(data))}, timeout=30)


def test_a_retry_with_the_same_idempotency_key_returns_the_same_case(
        server, api_token, services, slice_bytes):
    # Prepare: a client that lost the answer to its first post (issue 26, finding 12)
    first = _keyed(server, api_token, slice_bytes, "study-42/slice-7")

    # Execute: it sends the same slice again with the same key, then another with a new key
    again = _keyed(server, api_token, slice_bytes, "study-42/slice-7")
    other = _keyed(server, api_token, slice_bytes, "study-42/slice-8")

    # Assert: the retry answers with the first case and stores nothing; a new key is new
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["case_id"] == first.json()["case_id"]
    assert again.json()["probability"] == first.json()["probability"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert other.json()["case_id"] != first.json()["case_id"]
    assert services.store.count() == 2


def test_an_idempotency_key_reused_for_another_image_is_422(
        server, api_token, services, slice_bytes, data_dir):
    _keyed(server, api_token, slice_bytes, "k-1")

    reused = _keyed(server, api_token, (data_dir / "no" / "N1.JPG").read_bytes(), "k-1")

    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["error"]
    assert services.store.count() == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_a_malformed_idempotency_key_is_400(server, api_token, services, slice_bytes, key):
    response = _keyed(server, api_token, slice_bytes, key)

    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]
    assert services.store.count() == 0
