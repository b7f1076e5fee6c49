"""A federation round whose bundle carries a low-rank adapter on its last block, in-process
over real HTTP: the appliance trains the head and the adapter on its confirmed cases and
sends both; the coordinator averages both and publishes v2, whose new adapter and head
are all the appliance downloads."""
from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from models.core.signing import load_signing_key
from models.core.update_codec import decode
from models.training.adapter_bundle import add_adapter
from tests.device.federated import (
    DEVICE_ID, Appliance, Coordinator, round_trip, slices,
)

RANK = 2


@dataclass
class Flow:
    coord: Coordinator
    device: Appliance
    trained: dict
    round: object
    second_sync: dict
    fetched: list[str]


@pytest.fixture(scope="module")
def flow(tmp_path_factory, trained_bundle, small_data, signing_key_file) -> Iterator[Flow]:
    root = tmp_path_factory.mktemp("adapter-flow")
    bundle, weights = trained_bundle
    add_adapter(bundle, root / "adapter-bundle", load_signing_key(signing_key_file), RANK)
    initial = (root / "adapter-bundle", weights)
    with ExitStack() as stack:
        coord, device = round_trip(stack, root, initial, small_data, signing_key_file)
        device.feed(slices(small_data), until=device.trainable)
        trained = device.call("POST", "/api/v1/federation/train")
        device.call("POST", "/api/v1/federation/sync")
        rnd = coord.wait_for_round()
        already = len(coord.app.requests)
        second = device.call("POST", "/api/v1/federation/sync")
        fetched = [path for method, path, _ in coord.app.requests[already:]
                   if method == "GET" and path.startswith("/api/v1/bundles/2/")]
        yield Flow(coord, device, trained, rnd, second, fetched)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_appliance_sends_the_head_and_the_adapter(flow):
    coord, trained = flow.coord, flow.trained
    assert trained["action"] == "queued", trained
    update = coord.svc.store.get_update(trained["update_id"])
    v1 = coord.svc.bundles.get(1)
    delta = decode(coord.svc.store.load_payload(update), update.meta, v1.update_shapes)

    assert set(delta) == {"hidden/kernel", "hidden/bias", "output/kernel", "output/bias",
                          "block/lora_a", "block/lora_b"}
    assert delta["block/lora_b"].shape == (RANK, v1.manifest["block"]["channels"])
    assert np.abs(delta["block/lora_b"]).max() > 0  # trained: the adapter starts at zero


def test_v2_carries_the_averaged_adapter_and_the_same_block(flow):
    coord = flow.coord
    assert flow.round.published_version == 2, flow.round.reason
    v1, v2 = coord.svc.bundles.get(1), coord.svc.bundles.get(2)

    assert sha(v2.path / "block.npz") == sha(v1.path / "block.npz")
    assert sha(v2.path / "model.tflite") == sha(v1.path / "model.tflite")
    assert sha(v2.path / "adapter.npz") != sha(v1.path / "adapter.npz")
    a1, a2 = v1.load_block(), v2.load_block()
    assert np.abs(a2["block/lora_b"]).max() > 0 == np.abs(a1["block/lora_b"]).max()
    assert v2.manifest["block"]["adapter_rank"] == RANK


def test_the_appliance_installs_v2_fetching_only_what_changed(flow):
    device = flow.device
    assert flow.second_sync["bundle"] == "installed", flow.second_sync
    serving = device.svc.slot.current
    assert serving.version == 2 and serving.bundle.adapter_shapes
    fetched = {path.rsplit("/", 1)[1] for path in flow.fetched}
    assert fetched == {"head.npz", "adapter.npz", "manifest.json", "signature"}
    store = device.svc.store
    again = store.image_path(store.get(device.cases[0][0]))
    assert device.upload(again)["model_version"] == 2


@pytest.mark.parametrize("encoding", ["int8", "float32"])
def test_an_update_without_the_adapter_is_refused(flow, encoding):
    from coordinator.exc import NotFoundError, RejectedError
    from models.core.update_codec import encode
    coord = flow.coord
    latest = coord.svc.bundles.latest()
    payload, extra = encode({k: np.full(s, 0.01, np.float32)
                             for k, s in latest.head_shapes.items()}, encoding)
    meta = {"device_id": DEVICE_ID, "update_id": "f" * 32, "base_version": latest.version,
            "examples": 10, **extra}

    with pytest.raises(RejectedError, match="block/lora|every array"):
        coord.svc.rounds.submit(DEVICE_ID, meta, payload)

    with pytest.raises(NotFoundError):  # nothing of it was kept
        coord.svc.store.get_update("f" * 32)
