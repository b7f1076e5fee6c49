"""The coordinator's HTTP API on a real waitress server: auth, updates, refusals, bundles."""
from __future__ import annotations

import io
import json
import uuid
import zipfile

import numpy as np
import pytest
import requests

from models.core.bundle import verify_bundle
from models.core.signing import load_public_key
from models.core.update_codec import encode


def delta(coord, scale: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, scale, s).astype(np.float32)
            for k, s in coord.bundles.latest().head_shapes.items()}


def send(server, token, device_id, arrays=None, coord=None, *, encoding="int8", meta=None,
         payload=None, update_id=None):
    if payload is None:
        payload, extra = encode(arrays, encoding)
    else:
        extra = {"encoding": encoding}
    body = {"device_id": device_id, "base_version": 1, "examples": 20,
            "update_id": update_id or uuid.uuid4().hex, "metrics": {"accuracy": 0.9},
            **extra, **(meta or {})}
    return requests.post(f"{server}/api/v1/updates",
                         headers={"Authorization": f"Bearer {token}"},
                         files={"weights": ("u.npz", io.BytesIO(payload))},
                         data={"meta": json.dumps(body)}, timeout=30)


def test_an_update_is_accepted_and_a_retry_is_idempotent(coord_server, coord, enroll):
    token = enroll("pi-1")
    update_id = uuid.uuid4().hex

    first = send(coord_server, token, "pi-1", delta(coord), update_id=update_id)
    again = send(coord_server, token, "pi-1", delta(coord), update_id=update_id)

    assert first.status_code == 202 and first.json()["duplicate"] is False
    assert again.status_code == 200 and again.json()["duplicate"] is True
    rnd = coord.store.current_round()
    assert rnd.n_updates == 1 and rnd.id == first.json()["round"]


@pytest.mark.parametrize("token", [None, "nd_not-a-token"])
def test_unknown_device_is_401(coord_server, coord, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    response = requests.get(f"{coord_server}/api/v1/bundles/latest", headers=headers,
                            timeout=10)

    assert response.status_code == 401 and "token" in response.json()["error"]


def test_a_revoked_device_is_401(coord_server, coord, enroll):
    token = enroll("pi-1")
    coord.store.revoke("pi-1")

    response = send(coord_server, token, "pi-1", delta(coord))

    assert response.status_code == 401


def refusals(coord):
    good = delta(coord)
    shapes = coord.bundles.latest().head_shapes
    nan = {**good, "output/bias": np.array([np.nan], np.float32)}
    wrong = {**good, "hidden/bias": np.zeros(7, np.float32)}
    huge = {k: v * 1e4 for k, v in good.items()}
    extra = {**good, "evil": np.zeros(3, np.float32)}
    assert set(shapes) == set(good)
    return {
        "nan": (dict(arrays=nan, encoding="float32"), 422, "payload"),
        "shape": (dict(arrays=wrong, encoding="float32"), 422, "payload"),
        "extra key": (dict(arrays=extra, encoding="float32"), 422, "payload"),
        "norm": (dict(arrays=huge, encoding="float32"), 422, "norm"),
        "unknown base": (dict(arrays=good, meta={"base_version": 9}), 422, "base_version"),
        "examples": (dict(arrays=good, meta={"examples": 0}), 422, "examples"),
        "wrong device id": (dict(arrays=good, meta={"device_id": "pi-2"}), 400, None),
        "bad update id": (dict(arrays=good, meta={"update_id": "x"}), 400, None),
        "not an npz": (dict(payload=b"hello", encoding="float32"), 422, "payload"),
        "pickled npz": (dict(payload=pickled_npz(shapes), encoding="float32"), 422,
                        "payload"),
        # Until session 18 each of these was a 500 (or, for the last two, accepted).
        "300-digit base": (dict(arrays=good, meta={"base_version": 10**300}), 422,
                           "base_version"),
        "400-digit scale": (dict(arrays=good, meta={"scales": {k: 10**400 for k in shapes}}),
                            422, "payload"),
        "header claims 1e12 values": (dict(payload=claiming_npz(shapes), encoding="int8",
                                           meta={"scales": {k: 0.01 for k in shapes}}), 422,
                                      "payload"),
        "header claims 1e12 floats": (dict(payload=claiming_npz(shapes, "<f4"),
                                           encoding="float32"), 422, "payload"),
        "0-d bias": (dict(arrays={**good, "output/bias": np.float32(0.001)},
                          encoding="float32"), 422, "payload"),
        "bool scale": (dict(arrays=good, meta={"scales": {k: True for k in shapes}}), 422,
                       "payload"),
        "400-digit examples": (dict(arrays=good, meta={"examples": 10**400}), 422,
                               "examples"),
    }


def claiming_npz(shapes, descr: str = "|i1") -> bytes:
    """An npz whose hidden/kernel header claims 10**12 values over no data at all."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, shape in shapes.items():
            head = io.BytesIO()
            big = name == "hidden/kernel"
            np.lib.format.write_array_header_1_0(head, {
                "descr": descr, "fortran_order": False, "shape": (10**12,) if big else shape})
            data = b"" if big else bytes(np.dtype(descr).itemsize * int(np.prod(shape)))
            zf.writestr(f"{name}.npy", head.getvalue() + data)
    return buf.getvalue()


def pickled_npz(shapes) -> bytes:
    buf = io.BytesIO()
    arrays = {k: np.empty(s, object) for k, s in shapes.items()}
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["nan", "shape", "extra key", "norm", "unknown base",
                                  "examples", "wrong device id", "bad update id",
                                  "not an npz", "pickled npz", "300-digit base",
                                  "400-digit scale", "header claims 1e12 values",
                                  "header claims 1e12 floats", "0-d bias", "bool scale",
                                  "400-digit examples"])
def test_bad_updates_are_refused_with_a_reason_and_audited(coord_server, coord, enroll, case):
    token = enroll("pi-1")
    kwargs, status, reason = refusals(coord)[case]

    response = send(coord_server, token, "pi-1", **kwargs)

    assert response.status_code == status
    assert 0 < len(response.json()["error"]) <= 500
    if reason:
        assert response.json()["reason"] == reason
    assert coord.store.current_round() is None or coord.store.current_round().n_updates == 0
    events = coord.store.audit_events(kind="update_refused")
    assert events and events[0].device_id == "pi-1"


@pytest.mark.parametrize("meta", ['{"examples": ' + "1" * 5000 + "}",
                                  "[" * 100_000 + "]" * 100_000],
                         ids=["5000-digit number", "nested 100000 deep"])
def test_meta_python_cannot_parse_is_400_and_audited(coord_server, coord, enroll, meta):
    token = enroll("pi-1")
    payload, _ = encode(delta(coord), "int8")

    response = requests.post(f"{coord_server}/api/v1/updates",
                             headers={"Authorization": f"Bearer {token}"},
                             files={"weights": ("u.npz", io.BytesIO(payload))},
                             data={"meta": meta}, timeout=30)

    assert response.status_code == 400 and "meta is not JSON" in response.json()["error"]
    assert coord.store.audit_events(kind="update_refused")[0].device_id == "pi-1"


def test_missing_multipart_fields_is_400(coord_server, enroll):
    token = enroll("pi-1")

    response = requests.post(f"{coord_server}/api/v1/updates",
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)

    assert response.status_code == 400 and "weights" in response.json()["error"]


def test_second_update_from_a_device_in_the_same_round_is_409(coord_server, coord, enroll):
    coord.settings.min_updates = 5
    token = enroll("pi-1")
    send(coord_server, token, "pi-1", delta(coord))

    response = send(coord_server, token, "pi-1", delta(coord, seed=1))

    assert response.status_code == 409
    refused = coord.store.audit_events(kind="update_refused")
    assert refused and refused[0].detail["reason"] == "conflict"


def test_latest_bundle_downloads_and_verifies_with_the_coordinator_key_only(
        coord_server, coord, enroll, coord_settings, tmp_path):
    token = enroll("pi-1")
    auth = {"Authorization": f"Bearer {token}", "X-Model-Version": "1"}

    latest = requests.get(f"{coord_server}/api/v1/bundles/latest", headers=auth,
                          timeout=10).json()
    folder = tmp_path / "dl"
    folder.mkdir()
    for name, url in latest["files"].items():
        (folder / name).write_bytes(requests.get(url, headers=auth, timeout=10).content)

    pub = load_public_key(coord_settings.state_dir / "signing.key.pub")
    assert verify_bundle(folder, [pub]).version == latest["version"] == 1
    assert coord.store.get_device("pi-1").model_version == 1
    model = folder / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError):
        verify_bundle(folder, [pub])


def test_unknown_bundle_file_is_404(coord_server, enroll):
    token = enroll("pi-1")

    response = requests.get(f"{coord_server}/api/v1/bundles/1/../signing.key",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)

    assert response.status_code == 404


def test_a_version_too_large_for_a_file_name_is_404(coord_server, enroll):
    token = enroll("pi-1")

    response = requests.get(f"{coord_server}/api/v1/bundles/{'9' * 400}/manifest.json",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)

    assert response.status_code == 404


@pytest.mark.parametrize("header", ["9223372036854775808", "-1", "x"])
def test_a_model_version_header_that_is_no_version_is_ignored(
        coord_server, coord, enroll, header):
    token = enroll("pi-1")
    auth = {"Authorization": f"Bearer {token}"}
    requests.get(f"{coord_server}/api/v1/bundles/latest",
                 headers={**auth, "X-Model-Version": "1"}, timeout=10)

    response = requests.get(f"{coord_server}/api/v1/bundles/latest",
                            headers={**auth, "X-Model-Version": header}, timeout=10)

    assert response.status_code == 200 and response.json()["version"] == 1
    assert coord.store.get_device("pi-1").model_version == 1


@pytest.mark.parametrize("kind, version, status", [
    ("bundle_installed", 1, 201), ("bundle_installed", 5, 400), ("rollback", 0, 400),
    ("bundle_installed", True, 400), ("bundle_refused", 5, 201),
    ("bundle_refused", 2**63, 400)])
def test_a_device_reports_running_only_a_bundle_the_coordinator_published(
        coord_server, coord, enroll, kind, version, status):
    token = enroll("pi-1")

    response = requests.post(f"{coord_server}/api/v1/reports",
                             headers={"Authorization": f"Bearer {token}"},
                             json={"kind": kind, "version": version}, timeout=10)

    assert response.status_code == status
    running = coord.store.get_device("pi-1").model_version
    assert running == (1 if (kind, status) == ("bundle_installed", 201) else None)
    assert bool(coord.store.audit_events(kind=kind)) is (status == 201)


def test_rounds_health_and_metrics(coord_server, coord, enroll):
    token = enroll("pi-1")
    send(coord_server, token, "pi-1", delta(coord))

    rounds = requests.get(f"{coord_server}/api/v1/rounds",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    health = requests.get(f"{coord_server}/healthz", timeout=10).json()
    metrics = requests.get(f"{coord_server}/metrics", timeout=10).text

    assert rounds["rounds"][0]["updates"] == 1 and rounds["rounds"][0]["status"] == "open"
    assert health == {**health, "status": "ok", "latest_version": 1}
    assert 'neuroedge_coord_updates_total{outcome="accepted"} 1.0' in metrics
