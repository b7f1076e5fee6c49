"""The coordinator's Flower ServerApp (transport "flower"; needs the ``flower`` extra).

Run through a Flower SuperLink with ``flwr run`` (see README "Flower transport"): the
run config names the coordinator's state folder, settings file and images, so this is
the same coordinator -- SQLite state, enrolled devices, validation, aggregation,
int8 signed publishing, audit log -- with Flower carrying the messages and
:class:`NeuroEdgeStrategy` (a Flower ``Strategy``) running the rounds:

1. ``train`` to every connected node, with the latest signed bundle (its files only to
   nodes not known to have it); each reply's update goes through
   :func:`coordinator.intake.receive_update` (devices must be enrolled, not revoked,
   and speak from the Flower node first seen for them) and its reports through
   :func:`~coordinator.intake.receive_report`;
2. the round ends (:meth:`RoundManager.end_now`): aggregate with the configured method
   and publish v+1 if it passes the coordinator's gate;
3. ``evaluate`` to every node with the (new) latest bundle: devices install it through
   their own checks and evaluate it on their held-out cases;
4. a ``flower_round`` audit event records, per device, bytes each way, the training
   and evaluation figures and what it did with the bundle.

Record layout: :mod:`models.core.message_records`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from coordinator.bundles import BundleRegistry
from coordinator.config import Settings, load_settings
from coordinator.exc import CoordinatorError, NotFoundError
from coordinator.intake import receive_report, receive_update
from coordinator.rounds import RoundManager
from coordinator.services import build_services
from coordinator.store.base import CoordinatorStore
from coordinator.telemetry import Telemetry
from models.core import message_records as rec
from models.core.metrics import json_safe
from models.core.files import write_atomic
from models.core.bundle import MANIFEST, SIGNATURE

logger = logging.getLogger(__name__)
app = ServerApp()
PINS_FILE = "flower_nodes.json"  # device id -> the Flower node id that speaks for it
ONE_ROUND = 2**31 - 1  # min_updates under Flower: only the end of a Flower round closes


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if not cfg.get("state-dir"):
        raise ValueError("run config needs state-dir (the coordinator's state folder)")
    settings = load_settings(Path(str(cfg["config"])) if cfg.get("config") else None,
                             state_dir=Path(str(cfg["state-dir"])),
                             data=Path(str(cfg["data"])) if cfg.get("data") else None)
    # One Flower round is one coordinator round: it ends when the replies are in, not
    # when min_updates have arrived (later replies would meet a newer bundle).
    settings.min_updates = ONE_ROUND
    svc = build_services(settings)
    try:
        strategy = NeuroEdgeStrategy(svc.settings, svc.store, svc.bundles, svc.rounds,
                                     svc.telemetry, int(cfg["min-nodes"]),
                                     float(cfg["node-wait"]))
        strategy.start(grid, strategy.global_head(), num_rounds=int(cfg["num-rounds"]),
                       timeout=float(cfg["round-timeout"]))
    finally:
        svc.close()


class NeuroEdgeStrategy(Strategy):
    """A Flower strategy whose maths and state are the coordinator's.

    ``configure_*`` offer the latest signed bundle; ``aggregate_train`` feeds replies to
    :mod:`coordinator.intake` and ends the round with :class:`RoundManager` (the
    configured aggregation, then publishing), returning the global head as arrays;
    ``aggregate_evaluate`` records the round (``flower_round`` audit event).
    """

    def __init__(self, settings: Settings, store: CoordinatorStore, bundles: BundleRegistry,
                 rounds: RoundManager, telemetry: Telemetry, min_nodes: int = 1,
                 node_wait: float = 120.0) -> None:
        self.settings, self.store, self.bundles = settings, store, bundles
        self.rounds, self.telemetry = rounds, telemetry
        self.min_nodes, self.node_wait = min_nodes, node_wait
        self.known: dict[int, int] = {}  # node id -> bundle version it reported
        self.whole: set[int] = set()      # nodes that could not fill the gaps: send all
        self.sites: dict[int, dict] = {}  # this round's record per node
        self.sent: dict[int, int] = {}    # bundle bytes in the last message per node
        self.round_id: int | None = None

    def summary(self) -> None:
        s = self.settings
        logger.info("NeuroEdge strategy: %s, min_updates %d, quorum %d, publish margin %s",
                    s.method, s.min_updates, s.min_quorum, s.publish_margin)

    def global_head(self) -> ArrayRecord:
        return ArrayRecord({k: Array(np.ascontiguousarray(v))
                            for k, v in self.bundles.latest().load_head().items()})

    # -- train ---------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sites, self.round_id = {}, None
        return self._offer(grid, "train", server_round)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        examples = 0
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self._take(node, reply, train=True)
            self.sites[node] = {**site, "bytes_down": self.sent.get(node, 0)}
            if "round" in site.get("update", {}):
                self.round_id = site["update"]["round"]
                examples += site["update"]["examples"]
        job = self.rounds.end_now(f"Flower round {server_round}")
        if job is not None:
            job.result()  # aggregation and publishing of the round just ended
        rnd = self.store.get_round(self.round_id) if self.round_id else None
        if rnd is None or rnd.published_version is None:
            return None, MetricRecord({"examples": examples})
        return self.global_head(), MetricRecord({"examples": examples,
                                                 "version": rnd.published_version})

    # -- evaluate ------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self._offer(grid, "evaluate", server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        accuracies = []
        for reply in replies:
            node = reply.metadata.src_node_id
            evaluated = self._take(node, reply, train=False)
            site = self.sites.setdefault(node, {"bytes_down": 0, "bytes_up": 0})
            site["bytes_down"] += self.sent.get(node, 0)
            site["bytes_up"] = site.get("bytes_up", 0) + evaluated.pop("bytes_up")
            site.update(evaluated)
            local = evaluated.get("evaluate", {}).get("metrics", {})
            if isinstance(local.get("local_accuracy"), float):
                accuracies.append(local["local_accuracy"])
        rnd = self.store.get_round(self.round_id) if self.round_id else None
        self._audit("flower_round", {
            "round": server_round, "coordinator_round": rnd.id if rnd else None,
            "outcome": rnd.reason if rnd else "no update received",
            "published_version": rnd.published_version if rnd else None,
            "latest_version": self.bundles.latest().version,
            "sites": list(self.sites.values())})
        logger.info("Flower round %d done: %s", server_round,
                    rnd.reason if rnd else "no update received")
        return MetricRecord({"local_accuracy_mean": float(np.mean(accuracies))}) \
            if accuracies else None

    # -- messages ------------------------------------------------------------------------
    def _nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.node_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.min_nodes or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if not nodes:
            raise RuntimeError(f"no Flower node connected within {self.node_wait:.0f} s")
        if len(nodes) < self.min_nodes:
            logger.warning("only %d of %d nodes connected; going on", len(nodes),
                           self.min_nodes)
        return nodes

    def _offer(self, grid: Grid, kind: str, server_round: int) -> list[Message]:
        """A ``kind`` message with the latest bundle for each connected node."""
        latest = self.bundles.latest()
        nodes = self._nodes(grid)
        # Files only to a node known to be behind: every node starts from a shipped or
        # installed bundle, and says which in each reply.
        behind = {n for n in nodes if self.known.get(n, latest.version) < latest.version}
        names = [MANIFEST, SIGNATURE, *latest.manifest["files"]] if behind else []
        files = {name: (latest.path / name).read_bytes() for name in names}
        messages, self.sent = [], {}
        for node in nodes:
            give = self._changed(files, latest, node) if node in behind else {}
            self.sent[node] = sum(len(b) for b in give.values())
            messages.append(Message(RecordDict({rec.BUNDLE: ConfigRecord(
                rec.bundle_record(latest.version, give))}), dst_node_id=node,
                message_type=kind, group_id=str(server_round)))
        return messages

    def _changed(self, files: dict[str, bytes], latest, node: int) -> dict[str, bytes]:
        """``files`` without those the ``node``'s version holds with the same SHA-256 (it
        copies them; a round changes the head only): all of them if that version is
        unknown here, or the node could not fill the gaps last time."""
        version = self.known.get(node)
        base = self.bundles.get(version) if isinstance(version, int) else None
        if base is None or node in self.whole:
            return files
        same = {name for name, entry in latest.manifest["files"].items()
                if base.manifest["files"].get(name, {}).get("sha256") == entry["sha256"]}
        return {name: data for name, data in files.items() if name not in same}

    def _pin(self, device_id: str, node: int) -> None:
        """Bind a device id to the first Flower node that speaks for it (with SuperNode
        authentication a node id stands for a registered key); another node claiming it
        is refused. Moving a device to a new Pi: delete its line in the pins file."""
        path = self.settings.state_dir / PINS_FILE
        pins = json.loads(path.read_text()) if path.exists() else {}
        if device_id not in pins:
            pins[device_id] = str(node)
            write_atomic(path, json.dumps(pins, indent=1).encode())
        elif pins[device_id] != str(node):
            raise NotFoundError(f"device {device_id} is bound to Flower node "
                                f"{pins[device_id]}, not {node} (see {path})")

    def _take(self, node: int, reply: Message, train: bool) -> dict:
        """Audit and apply one reply; returns what the round record keeps of it. A reply
        that breaks anything is audited and skipped: one node never stops the run."""
        try:
            return self._apply(node, reply, train)
        except Exception as exc:
            logger.exception("reply of node %s skipped", node)
            self._audit("flower_error", {"node": str(node),
                                         "reason": f"malformed reply: {exc!r}"[:500]})
            return {"node": str(node), "error": f"malformed reply: {exc!r}"[:300],
                    "bytes_up": 0}

    def _audit(self, kind: str, detail: dict, device_id: str | None = None) -> None:
        try:
            self.store.audit(kind, device_id, json_safe(detail))
        except CoordinatorError as exc:  # e.g. a detail too large: keep the essentials
            logger.warning("audit %s shortened: %s", kind, exc)
            self.store.audit(kind, device_id, {k: v for k, v in detail.items()
                                               if not isinstance(v, (list, dict))})

    def _apply(self, node: int, reply: Message, train: bool) -> dict:
        if reply.has_error():
            logger.warning("node %s failed: %s", node, reply.error.reason)
            self._audit("flower_error", {"node": str(node),
                                         "reason": reply.error.reason[:500]})
            return {"node": str(node), "error": reply.error.reason[:300], "bytes_up": 0}
        try:
            status = rec.read_status_record(reply.content.config_records.get(rec.STATUS))
            device = self.store.get_device(status["device_id"])
            if not device.active:
                raise NotFoundError(f"device {device.id} is revoked")
            self._pin(device.id, node)
        except (ValueError, NotFoundError) as exc:
            self._audit("reply_refused", {"reason": "identity", "message": str(exc)[:300],
                                          "node": str(node)})
            return {"node": str(node), "error": str(exc)[:300], "bytes_up": 0}
        device_id = status["device_id"]
        # What the node has, or was offered and refused: do not send those files again.
        sync = status["sync"]
        refused = sync.get("version") if sync.get("bundle") == "refused" else None
        if refused is not None and "carries no file" in str(sync.get("reason")):
            self.whole.add(node)  # its copy of its version differs: send it all
            refused = None
        self.known[node] = max(status["model_version"],
                               refused if type(refused) is int else 0)
        up = len(json.dumps(status["reports"]))
        for report in status["reports"]:
            try:
                receive_report(device_id, report, bundles=self.bundles,
                               store=self.store)
            except CoordinatorError as exc:
                logger.warning("report of %s ignored: %s", device_id, exc)
        metrics = json_safe(dict(reply.content.metric_records.get(rec.METRICS) or {}))
        site = {"device_id": device_id, "node": str(node),
                "model_version": status["model_version"]}
        update = reply.content.config_records.get(rec.UPDATE)
        if update is not None:
            payload, meta = update.get("payload"), update.get("meta")
            payload = payload if isinstance(payload, bytes) else None
            meta = meta if isinstance(meta, str) else None
            up += len(payload or b"") + len(meta or "")
            try:
                receipt = receive_update(device_id, meta, payload, rounds=self.rounds,
                                         store=self.store, telemetry=self.telemetry)
                site["update"] = {"update_id": receipt.update_id, "round": receipt.round_id,
                                  "bytes": len(payload), "examples": int(json.loads(meta)[
                                      "examples"])}
            except CoordinatorError as exc:  # audited by receive_update
                site["update"] = {"refused": str(exc)[:300]}
        site["bytes_up"] = up
        site["train" if train else "evaluate"] = {"sync": json_safe(sync), "metrics": metrics}
        return site
