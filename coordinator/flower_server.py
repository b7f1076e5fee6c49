"""The coordinator's Flower ServerApp (transport "flower"; needs the ``flower`` extra).

Run through a Flower SuperLink with ``flwr run`` (see README "Flower transport"): the
run config names the coordinator's state folder, settings file and images, so this is
the same coordinator -- SQLite state, enrolled devices, validation, aggregation,
pruned int8 signed publishing, audit log -- with Flower carrying the messages:

1. ``train`` to every connected node, with the latest signed bundle (its files only to
   nodes not known to have it); each reply's update goes through
   :func:`coordinator.intake.receive_update` (devices must be enrolled and not revoked)
   and its reports through :func:`~coordinator.intake.receive_report`;
2. the round ends (:meth:`RoundManager.end_now`): aggregate with the configured method
   and publish v+1 if it passes the coordinator's gate;
3. ``evaluate`` to every node with the (new) latest bundle: devices install it through
   their own checks and evaluate it on their held-out cases;
4. a ``flower_round`` audit event records, per device, bytes each way, the training
   and evaluation figures and what it did with the bundle.

Record layout: :mod:`models.message_records`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from coordinator.config import load_settings
from coordinator.exc import CoordinatorError, NotFoundError
from coordinator.intake import receive_report, receive_update
from coordinator.services import Services, build_services
from models import message_records as rec
from models.bundle import MANIFEST, SIGNATURE

logger = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if not cfg.get("state-dir"):
        raise ValueError("run config needs state-dir (the coordinator's state folder)")
    settings = load_settings(Path(str(cfg["config"])) if cfg.get("config") else None,
                             state_dir=Path(str(cfg["state-dir"])),
                             data=Path(str(cfg["data"])) if cfg.get("data") else None)
    svc = build_services(settings)
    try:
        FlowerRounds(svc, grid, timeout=float(cfg["round-timeout"])).run(
            int(cfg["num-rounds"]), int(cfg["min-nodes"]), float(cfg["node-wait"]))
    finally:
        svc.close()


class FlowerRounds:
    """Drives rounds over a Flower ``Grid`` with the coordinator's services."""

    def __init__(self, svc: Services, grid: Grid, timeout: float) -> None:
        self.svc, self.grid, self.timeout = svc, grid, timeout
        self.known: dict[int, int] = {}  # node id -> bundle version it reported

    def run(self, rounds: int, min_nodes: int, node_wait: float) -> None:
        for r in range(1, rounds + 1):
            nodes = self._nodes(min_nodes, node_wait)
            sites: dict[int, dict] = {}
            for node, reply, down in self._exchange(nodes, "train", r):
                sites[node] = {"bytes_down": down, **self._take(node, reply, train=True)}
            job = self.svc.rounds.end_now(f"Flower round {r}")
            if job is not None:
                job.result()  # aggregation and publishing of the round just ended
            ids = [s["update"]["round"] for s in sites.values() if "round" in s.get("update", {})]
            last = self.svc.store.get_round(max(ids)) if ids else None
            for node, reply, down in self._exchange(nodes, "evaluate", r):
                site = sites.setdefault(node, {"bytes_down": 0})
                site["bytes_down"] += down
                evaluated = self._take(node, reply, train=False)
                site["bytes_up"] = site.get("bytes_up", 0) + evaluated.pop("bytes_up")
                site.update(evaluated)
            self.svc.store.audit("flower_round", None, {
                "round": r, "coordinator_round": last.id if last else None,
                "outcome": last.reason if last else "no update received",
                "published_version": last.published_version if last else None,
                "latest_version": self.svc.bundles.latest().version,
                "sites": list(sites.values())})
            logger.info("Flower round %d done: %s", r,
                        last.reason if last else "no update received")

    def _nodes(self, min_nodes: int, wait: float) -> list[int]:
        deadline = time.monotonic() + wait
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= min_nodes or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if not nodes:
            raise RuntimeError(f"no Flower node connected within {wait:.0f} s")
        if len(nodes) < min_nodes:
            logger.warning("only %d of %d nodes connected; going on", len(nodes), min_nodes)
        return nodes

    def _exchange(self, nodes: list[int], kind: str, r: int):
        """Send ``kind`` with the latest bundle to each node; yield (node, reply, bytes
        of bundle files sent to it) for every reply that came back in time."""
        latest = self.svc.bundles.latest()
        names = [MANIFEST, SIGNATURE, *latest.manifest["files"]]
        files = {name: (latest.path / name).read_bytes() for name in names}
        messages, sent = [], {}
        for node in nodes:
            # Files only to a node known to be behind: every node starts from a shipped
            # or installed bundle, and says which in each reply.
            give = files if self.known.get(node, latest.version) < latest.version else {}
            sent[node] = sum(len(b) for b in give.values())
            messages.append(Message(RecordDict({rec.BUNDLE: ConfigRecord(
                rec.bundle_record(latest.version, give))}), dst_node_id=node,
                message_type=kind, group_id=str(r)))
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            yield node, reply, sent.get(node, 0)
        missing = set(nodes) - {r.metadata.src_node_id for r in replies}
        if missing:
            logger.warning("round %d %s: no reply from node(s) %s within %.0f s", r, kind,
                           sorted(missing), self.timeout)

    def _take(self, node: int, reply: Message, train: bool) -> dict:
        """Audit and apply one reply; returns what the round record keeps of it."""
        if reply.has_error():
            logger.warning("node %s failed: %s", node, reply.error.reason)
            self.svc.store.audit("flower_error", None, {"node": str(node),
                                                        "reason": reply.error.reason[:500]})
            return {"node": str(node), "error": reply.error.reason[:300], "bytes_up": 0}
        try:
            status = rec.read_status_record(reply.content.config_records.get(rec.STATUS))
            device = self.svc.store.get_device(status["device_id"])
            if not device.active:
                raise NotFoundError(f"device {device.id} is revoked")
        except (ValueError, NotFoundError) as exc:
            self.svc.store.audit("update_refused", None, {"reason": "identity",
                                                          "message": str(exc)[:300],
                                                          "node": str(node)})
            return {"node": str(node), "error": str(exc)[:300], "bytes_up": 0}
        device_id = status["device_id"]
        self.known[node] = status["model_version"]
        up = len(str(status["reports"]))
        for report in status["reports"]:
            try:
                receive_report(self.svc, device_id, report)
            except CoordinatorError as exc:
                logger.warning("report of %s ignored: %s", device_id, exc)
        metrics = dict(reply.content.metric_records.get(rec.METRICS) or {})
        site = {"device_id": device_id, "node": str(node),
                "model_version": status["model_version"]}
        update = reply.content.config_records.get(rec.UPDATE)
        if update is not None:
            payload, meta = update.get("payload"), update.get("meta")
            up += len(payload or b"") + len(meta or "")
            try:
                receipt = receive_update(self.svc, device_id, meta if isinstance(
                    meta, str) else None, payload if isinstance(payload, bytes) else None)
                site["update"] = {"update_id": receipt.update_id, "round": receipt.round_id,
                                  "bytes": len(payload)}
            except CoordinatorError as exc:  # audited by receive_update
                site["update"] = {"refused": str(exc)[:300]}
        site["bytes_up"] = up
        site["train" if train else "evaluate"] = {"sync": status["sync"], "metrics": metrics}
        return site
