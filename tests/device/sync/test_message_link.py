"""The device side of the Flower transport without Flower: the appliance's own
Federation code over a MessageLink (what ``device.flower_client`` builds from a round
message), on real bundles, a real SQLite store and a second Services on the same data
folder playing the serving appliance that adopts what the ClientApp installed."""
from __future__ import annotations

import json

import pytest

from device.config import load_settings
from device.services import build_federation, build_services
from device.sync.link import CoordinatorUnavailable
from device.sync.message_link import MessageLink
from device.sync.outbox import Outbox
from device.sync.updater import synthetic_slice
from models.core.bundle import MANIFEST, SIGNATURE, resign_bundle
from models.core.preprocess import preprocess
from models.core.signing import load_signing_key


@pytest.fixture
def settings(tmp_path, trained_bundle, signing_key_file):
    return load_settings(data_dir=tmp_path / "data", bundle=trained_bundle[0], gpio=False,
                         camera=False, trusted_keys=[f"{signing_key_file}.pub"],
                         transport="flower", device_id="pi-1", secret_key="test")


@pytest.fixture
def v2_files(trained_bundle, signing_key_file, tmp_path) -> dict[str, bytes]:
    out = tmp_path / "v2"
    resign_bundle(trained_bundle[0], out, load_signing_key(signing_key_file), version=2,
                  parent_version=1)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def other_v2(tmp_path, signing_key_file) -> dict[str, bytes]:
    """The shipped model (not the one in service) as v2: its files differ."""
    from device.config import DEFAULT_BUNDLE
    resign_bundle(DEFAULT_BUNDLE, tmp_path / "other", load_signing_key(signing_key_file),
                  version=2, parent_version=1)
    return {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir()}


@pytest.fixture
def client_app(settings):
    """Services as the ClientApp opens them for one message (closed afterwards)."""
    svc = build_services(settings)
    yield svc
    svc.close()


def test_both_transports_are_coordinator_links():
    from device.sync.client import CoordinatorClient
    from device.sync.link import CoordinatorLink
    with CoordinatorClient("http://127.0.0.1:9", "unused") as http:
        assert isinstance(http, CoordinatorLink)
    assert isinstance(MessageLink(1), CoordinatorLink)


def test_a_transport_flower_appliance_builds_no_http_federation(client_app):
    assert client_app.federation is None


@pytest.mark.parametrize("values, message", [
    ({"transport": "pigeon"}, "transport"),
    ({"transport": "flower", "device_id": ""}, "device_id"),
    ({"transport": "flower", "device_id": "pi-1", "bundle_poll_s": 0}, "bundle_poll_s"),
])
def test_transport_settings_are_validated(tmp_path, values, message):
    from device.exc import ConfigError
    with pytest.raises(ConfigError, match=message):
        load_settings(data_dir=tmp_path, gpio=False, **values)


def test_the_offered_bundle_is_verified_installed_and_reported(client_app, v2_files):
    link = MessageLink(2, v2_files)
    fed = build_federation(client_app, link)

    result = fed.sync_now()

    assert result["bundle"] == "installed" and result["version"] == 2, result
    assert client_app.slot.current.version == 2
    assert link.reports == [{"kind": "bundle_installed", "version": 2, "reason": ""}]
    assert link.bytes_down == sum(len(b) for b in v2_files.values())
    assert link.updates == []


def test_a_tampered_file_is_refused_reported_and_nothing_changes(client_app, tmp_path,
                                                                 signing_key_file):
    # Another model as v2 (so the device cannot copy it from its own), tampered on the way
    other = other_v2(tmp_path, signing_key_file)
    model = bytearray(other["model.tflite"])
    model[len(model) // 2] ^= 0xFF
    link = MessageLink(2, {**other, "model.tflite": bytes(model)})

    result = build_federation(client_app, link).sync_now()

    assert result["bundle"] == "refused" and "SHA-256" in result["reason"], result
    assert [r["kind"] for r in link.reports] == ["bundle_refused"]
    assert client_app.slot.current.version == 1
    assert client_app.bundles.current_name() is None


def test_no_files_offered_means_nothing_to_do_and_nothing_refused(client_app, v2_files):
    # The coordinator did not know this device is behind (first message of a run): it
    # announced v2 without files. Nothing is installed, nothing refused for later.
    fed = build_federation(client_app, MessageLink(2, {}))
    nothing = fed.sync_now()

    fed.link = MessageLink(2, v2_files)   # the next message, after the reply said v1
    installed = fed.sync_now()

    assert nothing["bundle"] == "none" and nothing["version"] == 1, nothing
    assert installed["bundle"] == "installed" and installed["version"] == 2, installed


def test_a_refused_copy_of_the_shipped_version_is_tried_again_at_the_next_sync(
        client_app, trained_bundle, tmp_path):
    # The coordinator's v1 signed by a key this device was not given (yet): refused now,
    # but not for good, since fixing trusted_keys, not a newer version, mends it.
    from models.core.signing import generate_signing_key
    resign_bundle(trained_bundle[0], tmp_path / "c1", generate_signing_key(), version=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "c1").iterdir()}
    fed = build_federation(client_app, MessageLink(1, files))

    first, second = fed.sync_now(), fed.sync_now()

    assert first["bundle"] == second["bundle"] == "refused", (first, second)
    assert "signature" in second["reason"] and client_app.slot.current.version == 1


def test_an_evaluate_reply_carries_no_update(settings):
    outbox = Outbox(settings.data_dir)
    outbox.put(f"{0:032x}", b"payload", {"update_id": f"{0:032x}"})
    link = MessageLink(1, max_updates=0)

    flushed = outbox.flush(link, force=True)

    assert (flushed.sent, flushed.deferred, link.updates) == (0, 1, [])


def test_a_reply_carries_one_update_the_next_waits_in_the_outbox(settings, tmp_path):
    outbox = Outbox(settings.data_dir)
    for n in range(2):
        outbox.put(f"{n:032x}", b"payload-%d" % n, {"update_id": f"{n:032x}", "n": n})
    link = MessageLink(1)

    flushed = outbox.flush(link, force=True)

    assert (flushed.sent, flushed.deferred) == (1, 1)
    assert [meta["n"] for _, meta in link.updates] == [0]
    assert link.bytes_up == len(b"payload-0") + len(json.dumps(link.updates[0][1]))
    assert [e.update_id for e in outbox.pending()] == [f"{1:032x}"]
    with pytest.raises(CoordinatorUnavailable):
        link.post_update(b"x", {})


def test_the_serving_appliance_adopts_what_its_client_app_installed(settings, v2_files):
    serving = build_services(settings)          # `python -m device serve`
    try:
        client_app = build_services(settings)   # one Flower round message
        try:
            assert build_federation(client_app, MessageLink(2, v2_files)).sync_now()[
                "bundle"] == "installed"
        finally:
            client_app.close()

        assert serving.slot.current.version == 1
        assert serving.follower.adopt() is True
        assert serving.slot.current.version == 2
        assert serving.follower.adopt() is False   # already serving it
        spec = serving.slot.current.input_spec
        x = preprocess(synthetic_slice(), spec)[None]
        assert 0.0 <= float(serving.slot.current.probabilities(x)[0][0]) <= 1.0
    finally:
        serving.close()


def test_a_message_with_only_the_changed_files_installs_the_whole_version(
        client_app, v2_files):
    # v2 re-signs v1's files: only its manifest and signature differ
    changed = {name: v2_files[name] for name in (MANIFEST, SIGNATURE)}
    link = MessageLink(2, changed)

    result = build_federation(client_app, link).sync_now()

    assert result["bundle"] == "installed" and result["version"] == 2, result
    carried, whole = (sum(map(len, files.values())) for files in (changed, v2_files))
    assert link.bytes_down == carried < whole / 10
    installed = client_app.bundles.current_path()
    assert {p.name: p.read_bytes() for p in installed.iterdir() if p.is_file()} == v2_files


def test_a_gap_the_device_cannot_fill_is_refused_for_now_and_named(
        client_app, tmp_path, signing_key_file):
    # Another model as v2, but the message carries its manifest and signature only
    other = other_v2(tmp_path, signing_key_file)
    link = MessageLink(2, {name: other[name] for name in (MANIFEST, SIGNATURE)})

    result = build_federation(client_app, link).sync_now()

    assert result["bundle"] == "refused" and "carries no file" in result["reason"], result
    assert client_app.slot.current.version == 1
