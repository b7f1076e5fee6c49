"""The appliance's Flower ClientApp (transport "flower"; needs the ``flower`` extra).

A Flower SuperNode on the Pi runs it for each round message, with ``--node-config
'data-dir="/var/lib/neuroedge" config="/etc/neuroedge/device.toml"'``. It opens the
appliance's data folder (LED, button and camera stay with the serving process) and runs
the same :class:`~device.federation.Federation` code as the HTTP transport over a
:class:`~device.sync.message_link.MessageLink`:

- ``train``: take the offered bundle (signature, every SHA-256, newer version, smoke
  test and local gate, then install), train the head on the confirmed cases, and reply
  with the int8 (optionally top-k) delta and its example count -- never an image;
- ``evaluate``: take the offered bundle the same way, then evaluate the model in service
  on the held-out confirmed cases.

The serving appliance adopts a bundle installed here within ``bundle_poll_s``.
Record layout: :mod:`models.core.message_records`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from pathlib import Path
from typing import Iterator

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from device.config import load_settings
from device.services import Services, build_federation, build_services
from device.sync.message_link import MessageLink
from models.core import message_records as rec

logger = logging.getLogger(__name__)
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _round(msg, context, train=True)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _round(msg, context, train=False)


def _round(msg: Message, context: Context, train: bool) -> Message:
    cfg = context.node_config
    if not cfg.get("data-dir"):
        raise ValueError("node_config needs data-dir (the appliance's data folder)")
    settings = load_settings(Path(str(cfg["config"])) if cfg.get("config") else None,
                             data_dir=Path(str(cfg["data-dir"])), gpio=False, camera=False,
                             transport="flower")
    version, files = rec.read_bundle_record(msg.content.config_records.get(rec.BUNDLE))
    link = MessageLink(version, files, max_updates=1 if train else 0)
    with _exclusive(settings.data_dir), _services(settings) as svc:
        fed = build_federation(svc, link)
        sync = fed.sync_now()
        if train:
            trained = fed.train_now()
            if trained.get("action") == "queued":
                fed.flush()
            sync["train"] = trained
            numbers = {k: float(trained[k]) for k in ("examples", "local_accuracy_before",
                                                      "local_accuracy_after", "local_n")
                       if k in trained}
        else:
            numbers = {k: float(v) for k, v in fed.evaluate_local().items()}
        model_version = svc.slot.current.version
    content = RecordDict({rec.STATUS: ConfigRecord(rec.status_record(
        settings.device_id, model_version, link.reports,
        {k: sync.get(k) for k in ("bundle", "version", "reason", "train")})),
        rec.METRICS: MetricRecord({"num-examples": int(numbers.pop("examples", 0)),
                                   **numbers})})
    if link.updates:  # at most one (max_updates)
        payload, meta = link.updates[0]
        content[rec.UPDATE] = ConfigRecord({"payload": payload, "meta": json.dumps(meta)})
    logger.info("round message %s: bundle %s, %d update(s) in the reply",
                msg.metadata.message_type, sync.get("bundle"), len(link.updates))
    return Message(content, reply_to=msg)


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One round message at a time on a data folder (a late ``train`` and the next
    ``evaluate`` can overlap): they share the outbox and the bundle staging folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "flower.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _services(settings) -> Iterator[Services]:
    svc = build_services(settings)
    try:
        yield svc
    finally:
        svc.close()
