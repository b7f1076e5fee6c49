"""The coordinator's Flower strategy (``NeuroEdgeStrategy.start``) on real Flower
``Message`` objects and real coordinator services (SQLite, validation, aggregation,
audit). Flower's Grid is the seam: a scripted one plays five SuperNodes -- a good
update, a poisoned one, an unknown device, a crashed ClientApp and a malformed reply.
The real SuperLink and SuperNodes carry these messages in ``tests/e2e/test_flower.py``."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from coordinator.flower_server import PINS_FILE, NeuroEdgeStrategy  # noqa: E402
from models.core import message_records as rec  # noqa: E402
from models.core.update_codec import encode  # noqa: E402


POISON_REASON = "payload"   # a NaN is refused when the update is decoded


def strategy_of(coord, **kwargs) -> NeuroEdgeStrategy:
    """The ServerApp's strategy over the coordinator's own parts."""
    return NeuroEdgeStrategy(coord.settings, coord.store, coord.bundles, coord.rounds,
                             coord.telemetry, **kwargs)


@pytest.fixture(autouse=True)
def serverapp_process(monkeypatch):
    """Flower stamps messages with the identity of the process that makes them; this
    test is the ServerApp process (node 0) and, while replying, each node."""
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class ScriptedGrid:
    """Flower's ``Grid`` as the round driver uses it; replies come from ``nodes``."""

    def __init__(self, nodes: dict) -> None:
        self.nodes, self.sent = nodes, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            TaskIdentity._node_id = msg.metadata.dst_node_id
            try:
                replies.append(self.nodes[msg.metadata.dst_node_id](msg))
            finally:
                TaskIdentity._node_id = 0
        return replies


def reply(msg: Message, device_id: str | None, update: tuple | None = None) -> Message:
    status = ConfigRecord(rec.status_record(device_id, 1, [], {"bundle": "none"})
                          if device_id else {"model_version": 1})
    # A site whose held-out cases are of one class has no AUC: NaN must not break a run.
    content = RecordDict({rec.STATUS: status, rec.METRICS: MetricRecord(
        {"num-examples": 20, "local_accuracy": 0.5, "local_auc": float("nan")})})
    if update is not None and msg.metadata.message_type == "train":
        payload, meta = update
        content[rec.UPDATE] = ConfigRecord({"payload": payload, "meta": json.dumps(meta)})
    return Message(content, reply_to=msg)


def update(coord, device_id: str, poison: bool = False) -> tuple[bytes, dict]:
    rng = np.random.default_rng(0)
    delta = {k: rng.normal(0, 0.01, s).astype(np.float32)
             for k, s in coord.bundles.latest().head_shapes.items()}
    if poison:
        next(iter(delta.values())).flat[0] = np.nan
    payload, extra = encode(delta, "float32" if poison else "int8")
    return payload, {"device_id": device_id, "base_version": 1, "examples": 20,
                     "update_id": uuid.uuid4().hex, **extra}


def test_a_round_takes_the_good_update_and_audits_every_bad_reply(coord, enroll):
    for device_id in ("pi-1", "pi-2", "pi-3"):
        enroll(device_id)
    good, poisoned = update(coord, "pi-1"), update(coord, "pi-2", poison=True)
    grid = ScriptedGrid({
        1: lambda m: reply(m, "pi-1", good),
        2: lambda m: reply(m, "pi-2", poisoned),
        3: lambda m: reply(m, "intruder", update(coord, "intruder")),
        4: lambda m: Message(Error(code=0, reason="ClientApp raised OSError"), reply_to=m),
        5: lambda m: reply(m, None),
        6: lambda m: reply(m, "pi-1", update(coord, "pi-1")),   # another node, same id
        7: lambda m: reply(m, "pi-3", (12345, {"not": "an update"})),   # wrong types
    })

    strategy = strategy_of(coord, min_nodes=7, node_wait=1)
    result = strategy.start(grid, strategy.global_head(), num_rounds=1, timeout=5)

    # Train then evaluate to every node; nodes that said they run v1 get no files.
    assert [m.metadata.message_type for m in grid.sent] == ["train"] * 7 + ["evaluate"] * 7
    assert all(set(m.content[rec.BUNDLE]) == {"version"} for m in grid.sent)
    # The round holds only pi-1's update; it was aggregated (no data: not published).
    (rnd,) = coord.store.list_rounds()
    assert [u.device_id for u in coord.store.updates_for_round(rnd.id)] == ["pi-1"]
    assert rnd.status == "closed" and "publishing disabled" in rnd.reason
    refused = sorted((e.device_id, e.detail["reason"]) for e in
                     coord.store.audit_events(kind="update_refused"))
    assert refused == [("pi-2", POISON_REASON), ("pi-3", "malformed")], refused
    # Unknown, anonymous and impostor nodes are refused in both phases (node 6 claims
    # pi-1, which node 1 spoke for first).
    identity = sorted(e.detail["node"] for e in coord.store.audit_events(kind="reply_refused"))
    assert identity == ["3", "3", "5", "5", "6", "6"]
    assert json.loads((coord.settings.state_dir / PINS_FILE).read_text()) == \
        {"pi-1": "1", "pi-2": "2", "pi-3": "7"}
    assert [e.detail["reason"] for e in coord.store.audit_events(kind="flower_error")] \
        == ["ClientApp raised OSError"] * 2
    (event,) = coord.store.audit_events(kind="flower_round")
    sites = {s["node"]: s for s in event.detail["sites"]}
    assert sites["1"]["update"]["round"] == rnd.id and "refused" in sites["2"]["update"]
    assert all("error" in sites[n] for n in ("3", "4", "5", "6"))
    assert "refused" in sites["7"]["update"]
    assert sites["1"]["evaluate"]["metrics"]["local_auc"] is None   # NaN, stored as null
    assert event.detail["coordinator_round"] == rnd.id
    # Flower's own result: the round's example count; no new global head (unpublished).
    assert result.train_metrics_clientapp[1]["examples"] == 20


def test_a_node_that_is_behind_gets_the_bundle_files(coord, enroll):
    enroll("pi-1")

    def behind(msg: Message) -> Message:
        status = rec.status_record("pi-1", 0, [], {})
        return Message(RecordDict({rec.STATUS: ConfigRecord(status)}), reply_to=msg)

    grid = ScriptedGrid({1: behind})
    strategy = strategy_of(coord, min_nodes=1, node_wait=1)
    strategy.start(grid, strategy.global_head(), num_rounds=1, timeout=5)

    first, second = (m.content[rec.BUNDLE] for m in grid.sent)
    version, files = rec.read_bundle_record(second)
    assert set(first) == {"version"} and version == 1
    assert {"manifest.json", "signature", "model.tflite", "head.npz"} <= set(files)
    assert files["model.tflite"] == (coord.bundles.latest().path / "model.tflite").read_bytes()
    assert not coord.store.list_rounds()   # no update: no round


def test_a_node_that_refused_the_latest_bundle_is_not_sent_it_again(coord, enroll):
    enroll("pi-1")

    def refusing(msg: Message) -> Message:
        status = rec.status_record("pi-1", 0, [], {"bundle": "refused", "version": 1})
        return Message(RecordDict({rec.STATUS: ConfigRecord(status)}), reply_to=msg)

    grid = ScriptedGrid({1: refusing})
    strategy = strategy_of(coord, min_nodes=1, node_wait=1)
    strategy.start(grid, strategy.global_head(), num_rounds=1, timeout=5)

    assert all(set(m.content[rec.BUNDLE]) == {"version"} for m in grid.sent)


def test_a_node_one_version_behind_gets_only_the_files_that_changed(coord, enroll):
    # Prepare: v2 re-signs v1's files (as a round that changed nothing but the manifest);
    # the node is on v1, then says it could not fill the gaps in its copy
    from models.core.bundle import resign_bundle
    resign_bundle(coord.bundles.path(1), coord.bundles.path(2), coord.bundles.key, version=2,
                  parent_version=1)
    assert coord.bundles.latest().version == 2
    enroll("pi-1")
    answers = iter([{}, {}, {"bundle": "refused", "version": 2, "reason":
                             "download of model.tflite failed: the message carries no file"},
                    {}])

    def on_v1(msg: Message) -> Message:
        status = rec.status_record("pi-1", 1, [], next(answers))
        return Message(RecordDict({rec.STATUS: ConfigRecord(status)}), reply_to=msg)

    grid = ScriptedGrid({1: on_v1})
    strategy = strategy_of(coord, min_nodes=1, node_wait=1)
    # Execute: two rounds (train and evaluate each)
    strategy.start(grid, strategy.global_head(), num_rounds=2, timeout=5)
    # Assert: once it said v1, the manifest and the signature only; after it said it
    # could not fill the gaps, every file
    offered = [set(rec.read_bundle_record(m.content[rec.BUNDLE])[1]) for m in grid.sent]
    assert offered[1] == {"manifest.json", "signature"}, offered
    assert {"model.tflite", "head.npz", "manifest.json", "signature"} <= offered[3], offered
