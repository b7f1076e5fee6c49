"""Bundle updates on the appliance: the updater's checks (download, signature, hashes,
version, fit, smoke test, head check) and its local gate, on real LiteRT bundles (the
``trained_bundle`` fixture re-signed as v2..v5 with the test key)."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest

from device.config import load_settings
from device.hw.status import NullIndicator, State
from device.inference.slot import ModelSlot
from device.services import load_predictor, open_stores, trusted_keys
from device.exc import RollbackError
from device.sync.bundles import InstalledBundles
from device.gate import held_out
from device.sync.updater import BundleUpdater, synthetic_slice
from models.core.bundle import read_manifest, resign_bundle, verify_bundle, write_bundle
from models.core.preprocess import preprocess, read_image
from models.core.signing import generate_signing_key
from tests.conftest import write_destroyed_v2


MAX_CASES = 400   # add_gate_cases: cases stored at most


@pytest.fixture(scope="module")
def destroyed(trained_bundle, key, small_data, tmp_path_factory):
    """v2 with the real model's output bias set to -50: says "no tumour" to everything."""
    return write_destroyed_v2(trained_bundle, small_data, key,
                              tmp_path_factory.mktemp("destroyed") / "v2")


@pytest.fixture
def appliance(tmp_path, trained_bundle, signing_key_file):
    """Settings, stores, installed bundles, slot and updater as the server builds them."""
    settings = load_settings(data_dir=tmp_path / "data", bundle=trained_bundle[0],
                             trusted_keys=[f"{signing_key_file}.pub"], gpio=False,
                             secret_key="test-secret")
    store, accounts = open_stores(settings)
    installed = InstalledBundles(settings.data_dir, settings.bundle, trusted_keys(settings))
    slot = ModelSlot(load_predictor(settings, installed.current_path()))
    status = NullIndicator()
    app = SimpleNamespace(settings=settings, store=store, installed=installed, slot=slot,
                          status=status, states=[], fetched=[],
                          updater=BundleUpdater(settings, slot, store, installed, status))

    def fetch(url: str, dest: Path) -> int:
        # The HTTP client's job; here a copy from a local bundle folder.
        app.states.append(status.state)
        app.fetched.append(url)
        shutil.copyfile(url.removeprefix("file://"), dest)
        return dest.stat().st_size

    app.fetch = fetch
    yield app
    store.close()
    accounts.close()


def latest(bundle_dir: Path, version: int | None = None, **files: str) -> dict:
    """The coordinator's ``/bundles/latest`` answer for a local bundle folder."""
    manifest = read_manifest(bundle_dir)
    urls = {p.name: f"file://{p}" for p in sorted(bundle_dir.iterdir())}
    return {"version": manifest["version"] if version is None else version,
            "manifest": manifest, "signature": "", "files": {**urls, **files}}


def pointer(app, name: str) -> str | None:
    path = app.settings.data_dir / "bundles" / name
    return path.read_text().strip() if path.exists() else None


def add_gate_cases(app, data_dir: Path, labels: tuple[str, ...], need: int,
                   keep=lambda path: True) -> int:
    """Store and confirm real slices (those ``keep`` accepts) until ``need`` of them are
    gate cases; an image's side of the gate is its own, so each is stored once."""
    per_label = [[(int(label == "yes"), p) for p in sorted((data_dir / label).iterdir())
                  if keep(p)] for label in labels]
    files = [f for group in zip(*per_label) for f in group]  # labels interleaved
    gate = 0
    for label, path in files[:MAX_CASES]:
        _, png = cv2.imencode(".png", cv2.imread(str(path)))
        case = app.store.add_case(png.tobytes(), source="upload", width=8, height=8,
                                  probability=0.5, predicted_label=1, threshold=0.5,
                                  uncertain=False, model_version=1, latency_ms=1.0)
        app.store.confirm(case.id, label, "alice")
        gate += held_out(app.store, [case.id])[0]
        if gate >= need:
            return gate
    raise AssertionError(f"not enough gate cases among {len(files)} slices")


def test_newer_bundle_is_installed_and_swapped(appliance, variants):
    old = appliance.slot.current
    result = appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)

    assert result.action == "installed" and result.version == 2
    assert "gate skipped" in result.reason and result.metrics["gate"] == "skipped"
    assert appliance.slot.current.version == 2
    assert appliance.slot.current.bundle.path == appliance.installed.root / "v2"
    assert (pointer(appliance, "CURRENT"), pointer(appliance, "PREVIOUS")) == ("v2", "shipped")
    assert set(appliance.states) == {State.SYNCING}
    assert appliance.status.state is State.READY
    assert not (appliance.installed.root / "staging").exists()
    # A request that took the old predictor before the swap still completes on it.
    image = preprocess(synthetic_slice(), old.input_spec)
    assert old.version == 1 and 0 <= old.predict(image).probability <= 1
    json.dumps(result.to_dict(), allow_nan=False)  # reportable to the coordinator as is


def test_manifest_and_signature_sent_inline(appliance, variants):
    offer = latest(variants[2])
    del offer["files"]["manifest.json"], offer["files"]["signature"]
    offer["signature"] = base64.b64encode((variants[2] / "signature").read_bytes()).decode()

    result = appliance.updater.check_and_install(offer, appliance.fetch)

    assert result.action == "installed" and appliance.slot.current.version == 2


def test_reboot_serves_current(appliance, variants):
    appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)

    rebooted = InstalledBundles(appliance.settings.data_dir, appliance.settings.bundle,
                                trusted_keys(appliance.settings))

    assert rebooted.current_path() == rebooted.root / "v2"
    assert load_predictor(appliance.settings, rebooted.current_path()).version == 2


@pytest.mark.parametrize("announced", [2, 1])
def test_not_newer_is_none_and_downloads_nothing(appliance, variants, announced):
    appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)
    appliance.fetched.clear()

    result = appliance.updater.check_and_install(latest(variants[announced]),
                                                 appliance.fetch)

    assert (result.action, appliance.fetched) == ("none", [])
    assert appliance.slot.current.version == 2


def test_coordinator_copy_of_the_shipped_version_replaces_the_shipped_bundle(
        appliance, variants, tmp_path):
    # The coordinator re-signs the shipped model as its v1 with its own key; a device
    # trusting that key takes it once, so the fleet stops serving the development key's
    # signature and trains on the coordinator's base.
    coordinator = generate_signing_key()
    resign_bundle(variants[1], tmp_path / "c1", coordinator, version=1)
    appliance.installed.trusted_keys.append(coordinator.verify_key)
    shipped_signer = appliance.slot.current.bundle.signer

    result = appliance.updater.check_and_install(latest(tmp_path / "c1"), appliance.fetch)

    assert (result.action, result.version) == ("installed", 1)
    assert appliance.slot.current.bundle.signer != shipped_signer
    assert appliance.slot.current.bundle.path == appliance.installed.root / "v1"
    assert (pointer(appliance, "CURRENT"), pointer(appliance, "PREVIOUS")) == ("v1", "shipped")
    appliance.fetched.clear()
    again = appliance.updater.check_and_install(latest(tmp_path / "c1"), appliance.fetch)
    assert (again.action, appliance.fetched) == ("none", [])


def test_the_shipped_version_announced_without_files_is_nothing_to_do(appliance):
    # A Flower reply to a device that is not behind echoes its version and lists nothing.
    result = appliance.updater.check_and_install({"version": 1, "files": {}},
                                                 appliance.fetch)

    assert (result.action, appliance.fetched) == ("none", [])
    assert pointer(appliance, "CURRENT") is None


def test_shipped_version_signed_by_an_untrusted_key_is_refused(appliance, variants, tmp_path):
    resign_bundle(variants[1], tmp_path / "c1", generate_signing_key(), version=1)

    result = appliance.updater.check_and_install(latest(tmp_path / "c1"), appliance.fetch)

    assert result.action == "refused" and "signature refused" in result.reason
    assert appliance.slot.current.bundle.path == appliance.settings.bundle
    assert pointer(appliance, "CURRENT") is None


def _bad_signature(v, tmp, key):
    resign_bundle(v[1], tmp / "b", generate_signing_key(), version=3, parent_version=2)
    return latest(tmp / "b")


def _changed_byte(v, tmp, key):
    shutil.copytree(v[3], tmp / "b")
    data = bytearray((tmp / "b" / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp / "b" / "model.tflite").write_bytes(bytes(data))
    offer = latest(tmp / "b")
    # The offer names the changed bytes, so the device fetches them rather than use its
    # own copy; the signed manifest does not.
    offer["manifest"]["files"]["model.tflite"]["sha256"] = hashlib.sha256(data).hexdigest()
    return offer


def _override(v, tmp, key, **fields):
    resign_bundle(v[1], tmp / "b", key, version=3, parent_version=2, **fields)
    return latest(tmp / "b")


def _extra_file(v, tmp, key):
    (tmp / "extra.txt").write_text("not in the manifest")
    return latest(v[3], **{"extra.txt": f"file://{tmp / 'extra.txt'}"})


REFUSALS = {
    "bad signature": (_bad_signature, "signature refused"),
    "changed byte in model.tflite": (_changed_byte, "does not match its SHA-256"),
    "older version announced as newer": (lambda v, t, k: latest(v[1], version=3),
                                         "not newer than 2"),
    "same version announced as newer": (lambda v, t, k: latest(v[2], version=3),
                                        "not newer than 2"),
    "announced version differs": (lambda v, t, k: latest(v[4], version=3),
                                  "bundle is v4"),
    "extra file": (_extra_file, "not in its manifest"),
    "unsafe file name": (lambda v, t, k: latest(v[3], **{"../x": f"file://{v[3]}/head.npz"}),
                         "unsafe file name"),
    "different architecture": (lambda v, t, k: _override(v, t, k, architecture="paper"),
                               "architecture 'paper'"),
    "different input": (lambda v, t, k: _override(
        v, t, k, input={"height": 224, "width": 224, "channels": 3}), "input InputSpec"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_bundles_are_refused_and_old_keeps_serving(appliance, variants, key, tmp_path,
                                                       case):
    appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)
    make, expected = REFUSALS[case]
    offer = make(variants, tmp_path, key)

    result = appliance.updater.check_and_install(offer, appliance.fetch)

    assert result.action == "refused" and expected in result.reason, result.reason
    assert appliance.slot.current.version == 2
    assert (pointer(appliance, "CURRENT"), pointer(appliance, "PREVIOUS")) == ("v2", "shipped")
    assert appliance.installed.current_path() == appliance.installed.root / "v2"
    assert appliance.installed.versions() == [2]
    assert not (appliance.installed.root / "staging").exists()


def test_download_errors(appliance, variants):
    def refused(url: str, dest: Path) -> int:
        raise ValueError("file exceeds 1000 bytes")

    def offline(url: str, dest: Path) -> int:
        dest.write_bytes(b"partial")
        raise ConnectionError("coordinator unreachable")

    result = appliance.updater.check_and_install(latest(variants[2]), refused)
    assert result.action == "refused" and "exceeds 1000 bytes" in result.reason
    with pytest.raises(ConnectionError):  # transient: the caller retries later
        appliance.updater.check_and_install(latest(variants[2]), offline)
    assert not (appliance.installed.root / "staging").exists()
    assert appliance.slot.current.version == 1 and pointer(appliance, "CURRENT") is None


def test_head_npz_that_disagrees_with_the_model_is_refused(appliance, variants, key,
                                                           tmp_path, data_dir):
    add_gate_cases(appliance, data_dir, ("yes",), 4)
    bundle = verify_bundle(variants[1], [key.verify_key])
    head = bundle.load_head()
    # The head's logit is the model's, negated and scaled: on every image the two
    # probabilities sit on either side of 0.5, at least 0.5 apart, whatever the model.
    head["output/kernel"] = -1000 * head["output/kernel"]
    head["output/bias"] = -1000 * head["output/bias"]
    fields = {k: bundle.manifest[k]
              for k in ("architecture", "input", "labels", "threshold",
                        "uncertain_logit_band")}
    write_bundle(tmp_path / "b", bundle.model_path.read_bytes(), head,
                 {**fields, "version": 2}, key)

    result = appliance.updater.check_and_install(latest(tmp_path / "b"), appliance.fetch)

    assert result.action == "refused" and "head.npz does not match" in result.reason
    assert appliance.slot.current.version == 1 and pointer(appliance, "CURRENT") is None


def test_local_gate_refuses_a_destroyed_head(appliance, destroyed, data_dir):
    # Tumours v1 finds (v1 is a 10-epoch model: on random ones it may miss some, and
    # missing one more is within the gate's margin): v2, which finds none, misses 6.
    current = appliance.slot.current
    n = add_gate_cases(appliance, data_dir, ("yes",), 6, keep=lambda path: current.predict(
        preprocess(read_image(path), current.input_spec)).label == 1)

    result = appliance.updater.check_and_install(latest(destroyed), appliance.fetch)

    assert result.action == "refused", result.reason
    assert result.reason.startswith("local gate: v2 worse than v1: accuracy 0.000 vs ")
    assert f"on {n} held-out cases" in result.reason
    m = result.metrics
    assert m["gate"] == "failed" and m["gate_cases"] == n
    assert m["candidate"]["accuracy"] == 0.0
    assert m["current"]["accuracy"] > appliance.settings.gate_margin
    assert appliance.slot.current.version == 1 and pointer(appliance, "CURRENT") is None


def test_local_gate_passes_an_equal_bundle(appliance, variants, data_dir):
    # Three gate cases of each class: which uploads become gate cases is random (the
    # case id), so six from interleaved labels could all be of one class (~3%).
    n = sum(add_gate_cases(appliance, data_dir, (label,), 3) for label in ("yes", "no"))
    # Cases outside the gate (first hex digit 4-f) are for training, never evaluated.
    assert appliance.store.count("all") > n

    result = appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)

    assert result.action == "installed" and "local gate passed" in result.reason
    m = result.metrics
    assert m["gate"] == "passed" and m["gate_cases"] == n
    assert m["candidate"]["accuracy"] == m["current"]["accuracy"]
    assert m["current"]["auc"] is not None  # both classes present: AUC compared too
    assert appliance.slot.current.version == 2


def test_rollback_returns_to_previous_and_never_reinstalls(appliance, variants):
    up, fetch = appliance.updater, appliance.fetch
    up.check_and_install(latest(variants[2]), fetch)
    up.check_and_install(latest(variants[3]), fetch)
    assert (pointer(appliance, "CURRENT"), pointer(appliance, "PREVIOUS")) == ("v3", "v2")

    predictor = up.rollback()

    assert predictor.version == appliance.slot.current.version == 2
    assert pointer(appliance, "CURRENT") == "v2" and pointer(appliance, "PREVIOUS") is None
    again = up.check_and_install(latest(variants[3]), fetch)
    assert again.action == "refused" and "rolled back" in again.reason
    with pytest.raises(RollbackError, match="no previous"):
        up.rollback()
    assert up.check_and_install(latest(variants[4]), fetch).action == "installed"


def _next_round(bundle_dir: Path, out: Path, key) -> Path:
    """The next version as a federated round publishes it: the same model and block, a
    changed head (:func:`coordinator.publish.publish`)."""
    bundle = verify_bundle(bundle_dir, [key.verify_key])
    manifest = bundle.manifest
    head = {k: v + 0.01 for k, v in bundle.load_head().items()}
    slice_check = bundle.load_slice_check()
    fields = {k: manifest[k] for k in ("architecture", "input", "labels", "threshold",
                                       "uncertain_logit_band", "slice_check", "block")
              if k in manifest}
    write_bundle(out, bundle.read_file("model.tflite"), head,
                 {**fields, "version": manifest["version"] + 1,
                  "parent_version": manifest["version"]}, key,
                 slice_head=slice_check[0] if slice_check else None,
                 block=bundle.load_block())
    return out


def test_an_offer_that_changed_only_the_head_fetches_only_the_head(appliance, variants, key,
                                                                   tmp_path):
    # Prepare: v2 in service; v3 differs from it in head.npz only.
    appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)
    v3 = _next_round(variants[2], tmp_path / "v3", key)
    appliance.fetched.clear()

    # Execute
    result = appliance.updater.check_and_install(latest(v3), appliance.fetch)

    # Assert: the head, the manifest and the signature fetched; the rest copied; the
    # installed v3 is whole and verified.
    assert result.action == "installed" and appliance.slot.current.version == 3
    assert sorted(Path(u).name for u in appliance.fetched) == \
        ["head.npz", "manifest.json", "signature"]
    installed = verify_bundle(appliance.installed.root / "v3", [key.verify_key])
    assert sorted(p.name for p in installed.path.iterdir()) == \
        sorted(p.name for p in v3.iterdir())


def test_a_damaged_copy_in_service_is_fetched_instead(appliance, variants, key, tmp_path):
    # Prepare: v2 in service, then one of its files damaged on the card.
    appliance.updater.check_and_install(latest(variants[2]), appliance.fetch)
    v3 = _next_round(variants[2], tmp_path / "v3", key)
    model = appliance.installed.root / "v2" / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1])
    appliance.fetched.clear()

    # Execute
    result = appliance.updater.check_and_install(latest(v3), appliance.fetch)

    # Assert: the damaged file was fetched, not copied; v3 is whole.
    assert result.action == "installed", result.reason
    assert "model.tflite" in [Path(u).name for u in appliance.fetched]
    verify_bundle(appliance.installed.root / "v3", [key.verify_key])
