"""The device's HTTP link to the coordinator against a real coordinator (waitress on
loopback): updates, refusals, retries, the token kept secret, downloads."""
from __future__ import annotations

import logging
import uuid

import pytest

from device.sync import CoordinatorClient, CoordinatorUnavailable, UnsafeDownload, UpdateRefused
from tests.conftest import running
from tests.device.sync.wire import DEVICE, update


def test_an_update_is_accepted_and_its_retry_is_a_duplicate(client, coord):
    update_id, payload, meta = update(coord)

    first = client.post_update(payload, meta)
    up_after_first, down_after_first = client.bytes_up, client.bytes_down
    again = client.post_update(payload, meta)

    assert first["duplicate"] is False and first["update_id"] == update_id
    assert again["duplicate"] is True and again["round"] == first["round"]
    assert coord.store.current_round().n_updates == 1
    assert coord.store.get_update(update_id).device_id == DEVICE
    # the multipart body holds the payload; counters only grow
    assert len(payload) < up_after_first < client.bytes_up
    assert 0 < down_after_first < client.bytes_down


def test_a_nan_update_is_refused_with_its_reason(client, coord):
    _, payload, meta = update(coord, nan=True)

    with pytest.raises(UpdateRefused) as refused:
        client.post_update(payload, meta)

    assert refused.value.status == 422 and refused.value.reason == "payload"
    assert "finite" in refused.value.error or "nan" in refused.value.error.lower()
    assert isinstance(refused.value, ValueError)
    assert coord.store.current_round() is None or coord.store.current_round().n_updates == 0


def test_a_second_update_in_the_round_is_refused_as_conflict(client, coord):
    client.post_update(*update(coord)[1:])

    with pytest.raises(UpdateRefused) as refused:
        client.post_update(*update(coord, seed=1)[1:])

    assert refused.value.status == 409 and refused.value.reason == "conflict"


def test_unreachable_coordinator_and_unknown_token_mean_retry_later(closed_url, coord_server,
                                                                    coord):
    _, payload, meta = update(coord)

    with pytest.raises(CoordinatorUnavailable) as down:
        CoordinatorClient(closed_url, "nd_x", timeout=5).post_update(payload, meta)
    with pytest.raises(CoordinatorUnavailable) as unauthorized:
        CoordinatorClient(coord_server, "nd_unknown", timeout=5).post_update(payload, meta)

    assert down.value.http_status is None and isinstance(down.value, ConnectionError)
    assert unauthorized.value.http_status == 401


def test_the_token_is_never_logged_nor_shown(closed_url, caplog):
    secret = "nd_secret-token-value"
    client = CoordinatorClient(closed_url, secret, timeout=5)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(CoordinatorUnavailable) as down:
        client.latest()

    assert secret not in caplog.text and secret not in repr(client)
    assert secret not in str(down.value)


def test_a_bad_url_or_missing_ca_is_a_config_error(tmp_path):
    from device.exc import ConfigError

    with pytest.raises(ConfigError, match="coordinator_url"):
        CoordinatorClient("ftp://coord", "nd_x")
    with pytest.raises(ConfigError, match="coordinator_ca"):
        CoordinatorClient("https://coord", "nd_x", ca_cert=tmp_path / "missing.pem")


def test_latest_records_the_model_version_and_report_is_audited(client, coord):
    answer = client.latest(model_version=1)
    recorded = client.report("bundle_refused", 2, "worse on local cases")

    assert answer["version"] == coord.bundles.latest().version
    assert {"manifest.json", "signature"} <= set(answer["files"])
    assert coord.store.get_device(DEVICE).model_version == 1
    assert recorded == {"recorded": True}
    event = coord.store.audit_events(kind="bundle_refused")[0]
    assert event.device_id == DEVICE and event.detail["reason"] == "worse on local cases"


def test_download_streams_a_bundle_file_atomically(client, coord, tmp_path):
    url = client.latest()["files"]["manifest.json"]
    dest = tmp_path / "manifest.json"
    down_before = client.bytes_down

    size = client.download(url, dest, max_bytes=1 << 20)

    expected = (coord.bundles.latest().path / "manifest.json").read_bytes()
    assert dest.read_bytes() == expected and size == len(expected)
    assert client.bytes_down == down_before + size
    assert not (tmp_path / "manifest.json.tmp").exists()


def test_download_refuses_another_origin_and_oversize(client, coord_server, tmp_path):
    url = client.latest()["files"]["manifest.json"]
    (tmp_path / "dl").mkdir()
    dest = tmp_path / "dl" / "manifest.json"
    port = int(coord_server.rsplit(":", 1)[1])

    with pytest.raises(UnsafeDownload) as foreign:
        client.download("https://evil.example/api/v1/bundles/1/manifest.json", dest, 1 << 20)
    with pytest.raises(UnsafeDownload) as other_port:
        client.download(url.replace(f":{port}/", f":{port + 1}/"), dest, 1 << 20)
    with pytest.raises(UnsafeDownload) as big:
        client.download(url, dest, max_bytes=10)

    assert foreign.value.reason == other_port.value.reason == "origin"
    assert big.value.reason == "size"
    assert list((tmp_path / "dl").iterdir()) == []      # neither dest nor dest.tmp


def test_download_accepts_a_path_on_the_coordinator(client, coord, tmp_path):
    version = coord.bundles.latest().version

    size = client.download(f"/api/v1/bundles/{version}/signature", tmp_path / "sig", 4096)

    assert size == (coord.bundles.latest().path / "signature").stat().st_size > 0


@pytest.fixture
def odd_server():
    """A small server misbehaving like proxies do: chunked bodies without length, 5xx,
    HTML where JSON is expected."""
    from flask import Flask
    app = Flask(__name__)

    @app.route("/big")
    def big():
        return app.response_class((b"x" * 1024 for _ in range(64)),
                                  mimetype="application/octet-stream")

    @app.route("/api/v1/updates", methods=["POST"])
    def broken():
        return {"error": "internal error"}, 500

    @app.route("/api/v1/bundles/latest")
    def portal():
        return "<html>captive portal</html>", 200

    with running(app) as url:
        yield url


def test_a_streamed_oversize_download_is_cut_and_cleaned(odd_server, tmp_path):
    client = CoordinatorClient(odd_server, "nd_x", timeout=5)

    with pytest.raises(UnsafeDownload) as big:
        client.download("/big", tmp_path / "big", max_bytes=10_000)

    assert big.value.reason == "size" and list(tmp_path.iterdir()) == []
    assert 10_000 < client.bytes_down <= 64 * 1024


def test_server_errors_and_non_json_answers_mean_retry_later(odd_server, tmp_path):
    client = CoordinatorClient(odd_server, "nd_x", timeout=5)

    with pytest.raises(CoordinatorUnavailable) as error:
        client.post_update(b"payload", {"update_id": uuid.uuid4().hex})
    with pytest.raises(CoordinatorUnavailable) as portal:
        client.latest()

    assert error.value.http_status == 500 and portal.value.http_status == 200
