"""The device's coordinator client and persistent outbox against a real coordinator
(waitress on loopback), including the coordinator being down and the device rebooting."""
from __future__ import annotations

import json
import logging
import socket
import threading
import uuid

import numpy as np
import pytest

from device.sync import (CoordinatorClient, CoordinatorUnavailable, Outbox, UnsafeDownload,
                         UpdateRefused)
from models.core.update_codec import encode
from tests.conftest import running

DEVICE = "pi-1"


@pytest.fixture
def coord(tmp_path):
    from coordinator.config import load_settings
    from coordinator.services import build_services
    # min_updates high: the round stays open, so several updates from one test fit.
    settings = load_settings(state_dir=tmp_path / "state", min_updates=5, min_quorum=1,
                             max_norm=10.0)
    svc = build_services(settings)
    svc.test_settings = settings
    yield svc
    svc.close()


@pytest.fixture
def coord_app(coord):
    from coordinator.api import create_app
    app = create_app(coord.test_settings, coord, "test-secret")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def coord_url(coord_app):
    with running(coord_app) as url:
        yield url


@pytest.fixture
def token(coord) -> str:
    from coordinator.api.auth import hash_token, new_device_token
    token = new_device_token()
    coord.store.enroll(DEVICE, hash_token(token))
    return token


@pytest.fixture
def client(coord_url, token):
    with CoordinatorClient(coord_url, token, timeout=10) as c:
        yield c


@pytest.fixture
def closed_url() -> str:
    """A loopback URL on which nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def update(coord, *, nan: bool = False, seed: int = 0) -> tuple[str, bytes, dict]:
    """(update_id, payload, meta) of a small valid head delta (or one holding a NaN)."""
    rng = np.random.default_rng(seed)
    delta = {k: rng.normal(0, 0.01, s).astype(np.float32)
             for k, s in coord.bundles.latest().head_shapes.items()}
    if nan:
        delta["output/bias"] = np.array([np.nan], np.float32)
    payload, extra = encode(delta, "float32" if nan else "int8")
    update_id = uuid.uuid4().hex
    meta = {"device_id": DEVICE, "base_version": coord.bundles.latest().version,
            "examples": 20, "update_id": update_id, "metrics": {"accuracy": 0.9}, **extra}
    return update_id, payload, meta


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# -- client ------------------------------------------------------------------------------

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


def test_unreachable_coordinator_and_unknown_token_mean_retry_later(closed_url, coord_url,
                                                                    coord):
    _, payload, meta = update(coord)

    with pytest.raises(CoordinatorUnavailable) as down:
        CoordinatorClient(closed_url, "nd_x", timeout=5).post_update(payload, meta)
    with pytest.raises(CoordinatorUnavailable) as unauthorized:
        CoordinatorClient(coord_url, "nd_unknown", timeout=5).post_update(payload, meta)

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


def test_download_refuses_another_origin_and_oversize(client, coord_url, tmp_path):
    url = client.latest()["files"]["manifest.json"]
    (tmp_path / "dl").mkdir()
    dest = tmp_path / "dl" / "manifest.json"
    port = int(coord_url.rsplit(":", 1)[1])

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


# -- outbox ------------------------------------------------------------------------------

def test_flush_sends_in_order_and_empties_the_outbox(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id, payload, meta = update(coord)
    outbox.put(update_id, payload, meta)

    result = outbox.flush(client)

    assert (result.sent, result.refused, result.deferred) == (1, 0, 0)
    assert outbox.pending() == [] and files(outbox.path) == []
    assert coord.store.load_payload(coord.store.get_update(update_id)) == payload


def test_a_refused_update_moves_to_refused_and_the_next_is_sent(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    bad_id, bad_payload, bad_meta = update(coord, nan=True)
    good_id, good_payload, good_meta = update(coord)
    outbox.put(bad_id, bad_payload, bad_meta)
    outbox.put(good_id, good_payload, good_meta)

    result = outbox.flush(client)
    again = outbox.flush(client)

    assert (result.sent, result.refused, result.deferred) == (1, 1, 0)
    assert (again.sent, again.refused) == (0, 0)          # never retried
    [refused] = outbox.refused()
    assert refused.update_id == bad_id and refused.payload_path.read_bytes() == bad_payload
    assert refused.refusal["reason"] == "payload" and refused.refusal["status"] == 422
    assert files(outbox.path) == []
    assert coord.store.get_update(good_id).device_id == DEVICE


def test_coordinator_down_then_reboot_delivers_the_update(coord, coord_app, token,
                                                          closed_url, tmp_path):
    update_id, payload, meta = update(coord)
    outbox = Outbox(tmp_path, seed=0)
    outbox.put(update_id, payload, meta)

    down = outbox.flush(CoordinatorClient(closed_url, token, timeout=5), now=1000.0)

    assert (down.sent, down.refused, down.deferred) == (0, 0, 1)
    [entry] = outbox.pending()
    assert entry.attempts == 1 and 1000.0 < entry.next_attempt_at <= 1000.0 + 10.0
    assert entry.payload_path.read_bytes() == payload

    # Prepare: the coordinator comes up, the device reboots (a new Outbox on the folder).
    with running(coord_app) as url:
        rebooted = Outbox(tmp_path, seed=1)
        too_early = rebooted.flush(CoordinatorClient(url, token), now=1000.5)
        result = rebooted.flush(CoordinatorClient(url, token), now=entry.next_attempt_at)

    assert (too_early.sent, too_early.deferred) == (0, 1)
    assert (result.sent, result.refused, result.deferred) == (1, 0, 0)
    assert rebooted.pending() == [] and files(rebooted.path) == []
    stored = coord.store.get_update(update_id)
    assert stored.device_id == DEVICE and coord.store.load_payload(stored) == payload


def test_a_delivered_update_whose_answer_was_lost_is_a_duplicate(client, coord, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id, payload, meta = update(coord)
    outbox.put(update_id, payload, meta)
    client.post_update(payload, meta)        # reached the coordinator, answer lost

    result = outbox.flush(client)

    assert result.sent == 1 and outbox.pending() == []
    assert coord.store.current_round().n_updates == 1


def test_backoff_grows_and_is_capped(closed_url, tmp_path):
    outbox = Outbox(tmp_path, backoff_base=5.0, backoff_max=900.0, seed=0)
    outbox.put(uuid.uuid4().hex, b"payload", {"device_id": DEVICE})
    client = CoordinatorClient(closed_url, "nd_x", timeout=5)
    now, delays = 0.0, []

    for _ in range(10):
        outbox.flush(client, now=now)
        [entry] = outbox.pending()
        delays.append(entry.next_attempt_at - now)
        now = entry.next_attempt_at

    assert entry.attempts == 10
    for n, delay in enumerate(delays, start=1):
        nominal = min(5.0 * 2 ** n, 900.0)
        assert 0.8 * nominal <= delay <= nominal
    assert delays[0] < delays[3] < delays[6] and max(delays) <= 900.0
    assert all(d >= 0.8 * 900 for d in delays[-3:])


def test_two_devices_jitter_differently(tmp_path):
    a = Outbox(tmp_path / "a", seed=1)
    b = Outbox(tmp_path / "b", seed=2)

    assert a.backoff(3) != b.backoff(3)


def test_an_entry_not_yet_due_is_not_sent(closed_url, tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    outbox.put(uuid.uuid4().hex, b"payload", {"device_id": DEVICE})
    client = CoordinatorClient(closed_url, "nd_x", timeout=5)
    outbox.flush(client, now=0.0)

    result = outbox.flush(client, now=1.0)

    assert (result.sent, result.deferred) == (0, 1)
    assert outbox.pending()[0].attempts == 1            # no second attempt was made


def test_half_written_entries_are_removed_on_recovery(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    kept = uuid.uuid4().hex
    outbox.put(kept, b"complete", {"device_id": DEVICE})
    crashed = [uuid.uuid4().hex for _ in range(3)]
    (outbox.path / f"{crashed[0]}.npz.tmp").write_bytes(b"half a payl")   # during payload
    (outbox.path / f"{crashed[1]}.npz").write_bytes(b"payload")           # before the json
    (outbox.path / f"{crashed[1]}.json.tmp").write_text('{"meta": {')
    (outbox.path / f"{crashed[2]}.json").write_text(json.dumps(              # payload lost
        {"meta": {}, "attempts": 0, "next_attempt_at": 0, "created_ns": 1}))

    rebooted = Outbox(tmp_path, seed=0)

    assert [e.update_id for e in rebooted.pending()] == [kept]
    assert files(rebooted.path) == [f"{kept}.json", f"{kept}.npz"]


def test_put_refuses_bad_or_repeated_ids(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    update_id = uuid.uuid4().hex
    outbox.put(update_id, b"x", {})

    for bad in ("../../etc/passwd", "ABC", update_id):
        with pytest.raises(ValueError):
            outbox.put(bad, b"x", {})
    with pytest.raises(ValueError):
        outbox.put(uuid.uuid4().hex, b"x", {"update_id": uuid.uuid4().hex})
    assert [e.meta["update_id"] for e in outbox.pending()] == [update_id]


def test_pending_is_oldest_first(tmp_path):
    outbox = Outbox(tmp_path, seed=0)
    ids = [uuid.uuid4().hex for _ in range(5)]
    for update_id in ids:
        outbox.put(update_id, b"x", {})

    assert [e.update_id for e in Outbox(tmp_path).pending()] == ids


def test_concurrent_puts_are_all_kept(tmp_path):
    outbox = Outbox(tmp_path, seed=0)

    def producer() -> None:
        for _ in range(10):
            outbox.put(uuid.uuid4().hex, b"x", {})
    threads = [threading.Thread(target=producer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    pending = outbox.pending()
    assert len(pending) == 80 and len({e.created_ns for e in pending}) == 80
