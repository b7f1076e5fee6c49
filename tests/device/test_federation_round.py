"""A whole federation round in-process, over real HTTP on loopback: slices go through
the appliance's API and are confirmed with their true labels; training and syncs go
through /api/v1/federation as the button or the schedule would. Checked: the round
trip to v2, and that no image byte leaves the appliance."""
from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from device.gate import held_out
from tests.device.federated import (
    CLINIC_TEXT, DEVICE_ID, Appliance, Coordinator, round_trip, slices,
)


HEAD_FLOAT_BYTES = 6_209 * 4          # the edge head (192->32->1) as float32
JPEG = re.compile(rb"\xff\xd8\xff[\xc0-\xfe]")   # SOI + the first marker of every JPEG
PNG, DICOM = b"\x89PNG", b"DICM"


class Lines(logging.Handler):
    """Every log line at INFO and above, formatted, with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Flow:
    coord: Coordinator
    device: Appliance
    image_bytes: int
    trained: dict
    first_sync: dict
    round: object
    second_sync: dict
    health: dict
    after: dict
    stored_pngs: list[Path]
    log: list[str]


@pytest.fixture(scope="module")
def flow(tmp_path_factory, trained_bundle, small_data, signing_key_file) -> Iterator[Flow]:
    """Feed 24 slices, train, send, let the coordinator publish v2, sync again: once."""
    root = tmp_path_factory.mktemp("federation-flow")
    log, root_logger = Lines(), logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(log)
    root_logger.setLevel(logging.INFO)   # as `device serve` logs
    with ExitStack() as stack:
        stack.callback(root_logger.setLevel, level)
        stack.callback(root_logger.removeHandler, log)
        coord, device = round_trip(stack, root, trained_bundle, small_data,
                                   signing_key_file)
        image_bytes = device.feed(slices(small_data), until=device.trainable)
        trained = device.call("POST", "/api/v1/federation/train")
        first = device.call("POST", "/api/v1/federation/sync")
        rnd = coord.wait_for_round()
        second = device.call("POST", "/api/v1/federation/sync")
        health = device.call("GET", "/healthz")
        after = device.upload(slices(small_data)[-1][0])
        stored = [device.svc.store.image_path(device.svc.store.get(case_id))
                  for case_id, *_ in device.cases]
        yield Flow(coord, device, image_bytes, trained, first, rnd, second, health, after,
                   stored, log.lines)


def test_confirmed_cases_train_a_small_update_that_comes_back_as_v2(flow):
    coord, device, trained = flow.coord, flow.device, flow.trained

    # Training queued a small int8 delta and measured itself on the held-out gate cases.
    assert trained["action"] == "queued", trained
    assert trained["base_version"] == 1
    gate = int(held_out(device.svc.store, [case_id for case_id, *_ in device.cases]).sum())
    assert trained["examples"] == len(device.cases) - gate
    # int8: a quarter of the float head, plus the npz container (a zip entry and a .npy
    # header for each of the 4 arrays, ~1 KB), which compression does not always repay.
    assert 0 < trained["payload_bytes"] <= HEAD_FLOAT_BYTES / 4 + 1_024
    assert trained["local_n"] == gate > 0
    for key in ("local_accuracy_before", "local_accuracy_after"):
        assert 0.0 <= trained[key] <= 1.0
    # The first sync delivered it: the coordinator holds exactly these bytes in a round.
    assert flow.first_sync["sent"] == 1 and flow.first_sync["deferred"] == 0
    assert flow.first_sync["refused_updates"] == 0
    # ...and replaced the shipped bundle (signed with the development key) by the
    # coordinator's v1: the same model, signed with the coordinator's key.
    assert (flow.first_sync["bundle"], flow.first_sync["version"]) == ("installed", 1)
    update = coord.svc.store.get_update(trained["update_id"])
    assert update.device_id == DEVICE_ID and update.base_version == 1
    assert update.bytes == trained["payload_bytes"] == flow.round.bytes_received
    assert update.round_id == flow.round.id and flow.round.n_updates == 1
    # min_updates = 1 closed the round; publish_margin = 1.0 let it publish v2.
    assert flow.round.published_version == 2, flow.round.reason
    assert coord.svc.bundles.latest().version == 2
    # The second sync installed v2: slot, /healthz, pointers, and new predictions.
    assert flow.second_sync["bundle"] == "installed", flow.second_sync
    assert flow.second_sync["version"] == 2 and flow.second_sync["sent"] == 0
    assert device.svc.slot.current.version == 2
    assert flow.health["model_version"] == 2 and flow.health["status"] == "ok"
    assert device.pointer("CURRENT") == "v2" and device.pointer("PREVIOUS") == "v1"
    assert flow.after["model_version"] == 2
    assert not device.fed.outbox.pending()
    # The coordinator heard about the install and shows the device on v2.
    installed = coord.svc.store.audit_events(kind="bundle_installed")
    assert sorted((e.device_id, e.detail["version"]) for e in installed) == [(DEVICE_ID, 1),
                                                                             (DEVICE_ID, 2)]
    assert coord.svc.store.get_device(DEVICE_ID).model_version == 2
    status = device.call("GET", "/api/v1/federation")
    assert status["outbox"] == 0 and status["model_version"] == 2
    assert status["last_training"]["action"] == "queued" and status["last_training"]["at"]
    assert {k: status["last_sync"][k] for k in ("sent", "bundle", "version")} == \
        {"sent": 0, "bundle": "installed", "version": 2}
    assert status["bytes_up"] == flow.second_sync["bytes_up"] > trained["payload_bytes"]


def test_no_image_byte_reaches_the_coordinator(flow):
    received = flow.coord.app.requests
    kinds = {(method, path) for method, path, _ in received}
    # The recorder saw the whole conversation: the update, bundle checks, the report.
    assert ("POST", "/api/v1/updates") in kinds and ("POST", "/api/v1/reports") in kinds
    assert ("GET", "/api/v1/bundles/latest") in kinds
    for method, path, body in received:
        assert not JPEG.search(body), f"JPEG signature in {method} {path}"
        assert PNG not in body, f"PNG signature in {method} {path}"
        assert DICOM not in body, f"DICOM signature in {method} {path}"
    everything = b"".join(body for _, _, body in received)
    print(f"coordinator received {flow.coord.app.body_bytes} body bytes in "
          f"{len(received)} requests; the appliance took {flow.image_bytes} image bytes")
    # Nor any piece of an uploaded file or of the re-encoded PNG the appliance stores,
    # nor a case id.
    for png in flow.stored_pngs:
        data = png.read_bytes()
        for start in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
            assert data[start:start + 32] not in everything
    for case_id, *_ in flow.device.cases:
        assert case_id.encode() not in everything
    # Nor the clinic's references, notes and file names (which were stored).
    assert flow.device.svc.store.get_info(flow.device.cases[0][0]).reference == \
        f"{CLINIC_TEXT[0]}-0"
    for text in CLINIC_TEXT:
        assert text.encode() not in everything
        assert not [line for line in flow.log if text in line]   # nor the log at INFO
    assert any("stored case" in line for line in flow.log)       # which was recorded
    # Far less crossed the wire than the images themselves (an update is a few kB).
    assert flow.coord.app.body_bytes < 0.05 * flow.image_bytes, \
        (flow.coord.app.body_bytes, flow.image_bytes)
