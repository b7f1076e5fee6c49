"""The appliance's side of the federation: train the head, send the delta, take bundles.

Orchestration only (the head maths is :mod:`models.core.head`, the wire format
:mod:`models.core.update_codec`, the transport a :class:`~device.sync.link.CoordinatorLink`,
the held-out cases :mod:`device.gate`). Training runs in the background and never holds
a lock that predictions need.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device import adapter_training
from device.config import Settings
from device.gate import held_out
from device.hw.status import Indicator, State
from device.imaging import stored_model_input
from device.inference.slot import ModelSlot
from device.personal import Personalisation
from device.store.base import CaseStore
from device.sync.link import CoordinatorLink
from device.sync.outbox import FlushResult, Outbox
from device.sync.retry import after_refusal, why_not_now
from device.sync.updater import BundleUpdater, UpdateResult
from device.telemetry import Telemetry
from models.core.head import predict
from models.core.head_training import TrainConfig, train_head
from models.core import metrics
from models.core.update_codec import decode, encode
from models.core import weights
from models.core.files import write_atomic

logger = logging.getLogger(__name__)
MAX_BUNDLE_FILE = 64 * 2**20  # bytes: a bundle file larger than this is refused


@dataclass(frozen=True)
class FederationStatus:
    """What the admin page and the API show of the federation."""

    pending: int                  # updates waiting in the outbox
    refused: int                  # updates the coordinator refused (kept for the admin)
    bytes_up: int                 # bodies sent to / received from the coordinator
    bytes_down: int
    last_training: dict = field(default_factory=dict)  # since start: when, on what, result
    last_sync: dict = field(default_factory=dict)      # since start: sent, offered, outcome


class Federation:
    """Local training, the update outbox and bundle updates of one appliance.

    Parameters
    ----------
    link : CoordinatorLink
        The coordinator, over HTTP or in one Flower message.
    outbox : Outbox
        Updates waiting for the coordinator.
    updater : BundleUpdater
        Judges and installs the coordinator's bundles.
    settings : Settings
        Data folder, update encoding, privacy, schedule.
    store, slot, status, telemetry
        The confirmed cases, the model in service, the LED and the health figures.
    """

    def __init__(self, link: CoordinatorLink, outbox: Outbox, updater: BundleUpdater, *,
                 settings: Settings, store: CaseStore, slot: ModelSlot, status: Indicator,
                 telemetry: Telemetry, train_config: TrainConfig | None = None) -> None:
        self.link, self.outbox, self.updater = link, outbox, updater
        self.settings, self.store, self.slot = settings, store, slot
        self.status, self.telemetry = status, telemetry
        self.train_config = train_config or TrainConfig()
        self.state_dir = settings.data_dir / "federation"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._train_lock = threading.Lock()  # one training at a time; predictions unaffected
        self.personalisation = Personalisation(slot, self.state_dir)
        self.last_result: dict = {}
        self.last_sync: dict = {}

    def overview(self) -> FederationStatus:
        """Counts and figures for the admin page and ``GET /api/v1/federation``."""
        return FederationStatus(len(self.outbox.pending()), len(self.outbox.refused()),
                                self.link.bytes_up, self.link.bytes_down,
                                dict(self.last_result), dict(self.last_sync))

    # --- data -------------------------------------------------------------------------
    def examples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_gate, y_gate): confirmed-case embeddings of this backbone.
        Gate cases (see :mod:`device.gate`) judge new bundles and are never trained on.
        """
        _, x, y, gate = self._examples()
        return x[~gate], y[~gate], x[gate], y[gate]

    def _examples(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(case ids, embeddings, labels, gate mask) of every confirmed case. Embeddings
        are cached per case and backbone; cases confirmed under an older backbone are
        re-embedded from their stored image."""
        store, predictor = self.store, self.slot.current.global_predictor
        backbone = predictor.backbone_id
        for case_id in store.cases_missing_embedding(backbone):
            case = store.get(case_id)
            try:
                image = stored_model_input(store.image_path(case), predictor.input_spec)
            except (OSError, ValueError) as exc:  # e.g. a colour image older software kept
                logger.warning("case %s left out of training: %s", case_id, exc)
                continue
            store.set_embedding(case_id, backbone, predictor.predict(image).embedding)
        ids, x, y = store.confirmed_examples(backbone)
        return ids, x, y, held_out(store, ids)

    def confirmed_since_training(self, state: dict | None = None) -> int:
        trained = (self._state() if state is None else state).get("trained_cases", 0)
        return self._confirmed() - trained

    def _new_cases(self, state: dict) -> bool:
        return self.confirmed_since_training(state) >= self.settings.train_min_new_cases

    def training_due(self) -> bool:
        """Enough newly confirmed cases; or, with ``train_rounds_per_cases`` above 1, a
        newer version installed since the last run, which had fewer runs on its cases:
        more rounds of shorter training, between two batches of cases, bring a
        federation closer to training on every clinic's cases pooled."""
        state = self._state()
        return self._new_cases(state) or (
            "trained_version" in state
            and self.slot.current.version > state["trained_version"]
            and state.get("runs_on_cases", 1) < self.settings.train_rounds_per_cases)

    def _confirmed(self) -> int:
        return self.store.count("confirmed") + self.store.count("disagreed")

    # --- training ---------------------------------------------------------------------
    def train_now(self) -> dict:
        """Train the head on confirmed cases and queue the delta; returns a summary."""
        if not self._train_lock.acquire(blocking=False):
            return {"action": "busy", "reason": "a training run is in progress"}
        try:
            with self.status.activity(State.TRAINING):
                return self._train()
        except ValueError as exc:  # too few confirmed cases, or only one class
            logger.info("training skipped: %s", exc)
            self.last_result = {"action": "skipped", "reason": str(exc), "at": time.time(),
                                "version": self.slot.current.version, "reported": False}
            return {"action": "skipped", "reason": str(exc)}
        finally:
            self._train_lock.release()

    def _train(self) -> dict:
        predictor = self.slot.current.global_predictor  # updates start from the bundle
        bundle = predictor.bundle
        confirmed, state = self._confirmed(), self._state()
        # Runs on the same cases count once per newer version ("Train now" on the same
        # version uses none of them); enough new cases start the count again.
        runs = 1 if self._new_cases(state) else state.get("runs_on_cases", 1) + int(
            predictor.version > state.get("trained_version", predictor.version))
        ids, x_all, y_all, gate = self._examples()
        x, y, x_gate, y_gate = x_all[~gate], y_all[~gate], x_all[gate], y_all[gate]
        if len(y) < self.train_config.min_examples:
            raise ValueError(f"need at least {self.train_config.min_examples} confirmed "
                             f"training examples, have {len(y)}")
        if bundle.adapter_shapes:  # the head with the block's adapter
            trained = adapter_training.train(self.store, bundle, ids, y_all, gate,
                                             self.train_config)
            arrays, start, epochs = trained.arrays, trained.start, trained.epochs
            local = self._local(trained.gate_y, trained.gate_before, trained.gate_after,
                                predictor.threshold)
        else:
            start = bundle.load_head()
            result = train_head(start, x, y, self.train_config)  # ValueError: one class
            arrays, epochs = result.head, result.epochs
            local = self._local(y_gate, predict(start, x_gate), predict(arrays, x_gate),
                                predictor.threshold)
        personal = self.personalisation.after_training(
            predictor, start, arrays, x_gate, y_gate, len(y)) \
            if self.settings.personalise and not bundle.adapter_shapes else None
        delta = self._privatise(weights.delta(arrays, start))
        residual = self._residual()  # what top-k left out last time, where it still fits
        delta = {k: v + residual[k] if k in residual and residual[k].shape == v.shape else v
                 for k, v in delta.items()}
        s = self.settings
        payload, extra = encode(delta, s.update_encoding, s.update_topk or None)
        sent = decode(payload, extra, bundle.update_shapes)
        self._save_residual({k: delta[k] - sent[k] for k in delta} if s.update_topk else {})
        meta = {"device_id": s.device_id, "base_version": predictor.version,
                "examples": int(len(y)), "update_id": uuid.uuid4().hex,
                "metrics": {"train_epochs": epochs, **local}, **extra}
        self.outbox.put(meta["update_id"], payload, meta)
        self._save_state(trained_cases=confirmed, last_train_at=time.time(),
                         trained_version=predictor.version, runs_on_cases=runs)
        self.last_result = {"action": "queued", "at": time.time(),
                            "update_id": meta["update_id"],
                            "examples": int(len(y)), "payload_bytes": len(payload),
                            "base_version": predictor.version, **local,
                            **({"personal": personal} if personal else {})}
        logger.info("%s trained on %d cases; update %s queued (%d bytes)",
                    "head and adapter" if bundle.adapter_shapes else "head", len(y),
                    meta["update_id"], len(payload))
        return self.last_result

    def _privatise(self, delta: dict) -> dict:
        """Optional local DP: clip the delta's norm, add Gaussian noise."""
        s = self.settings
        if not (s.dp_clip > 0 and s.dp_noise > 0):
            return delta
        scale = min(1.0, s.dp_clip / max(weights.l2_norm(delta), 1e-12))
        rng = np.random.default_rng()
        return {k: (v * scale + rng.normal(0, s.dp_noise * s.dp_clip, v.shape)).astype(
            np.float32) for k, v in delta.items()}

    @staticmethod
    def _local(y: np.ndarray, before: np.ndarray, after: np.ndarray,
               threshold: float) -> dict:
        """Accuracy on this site's held-out (gate) cases before and after training."""
        if len(y) == 0:
            return {}
        return {"local_accuracy_before": metrics.binary_metrics(y, before, threshold)
                ["accuracy"],
                "local_accuracy_after": metrics.binary_metrics(y, after, threshold)
                ["accuracy"],
                "local_n": int(len(y))}

    def evaluate_local(self) -> dict:
        """The bundle in service (its own head, even where this clinic's serves) on this
        site's held-out (gate) confirmed cases: what the coordinator's dashboard shows per
        version."""
        predictor = self.slot.current
        _, _, x, y = self.examples()
        if len(y) == 0:
            return {"local_n": 0}
        m = metrics.binary_metrics(y, predict(predictor.bundle.load_head(), x),
                                   predictor.threshold)
        return {"local_accuracy": m["accuracy"], "local_auc": m["auc"], "local_n": int(len(y))}

    # --- sync -------------------------------------------------------------------------
    def flush(self, force: bool = True) -> FlushResult:
        """Send queued updates now (``force`` ignores the outbox backoff)."""
        return self.outbox.flush(self.link, force=force)

    def sync_in_background(self) -> None:
        """The button: sync now without holding up the caller; failures are logged and
        shown on the LED and /healthz (sync_now records them)."""
        def quietly() -> None:
            try:
                self.sync_now()
            except Exception as exc:  # never fatal
                logger.warning("sync failed: %s", exc)

        threading.Thread(target=quietly, daemon=True, name="sync-now").start()

    def sync_now(self, force: bool = True) -> dict:
        """Send queued updates, then take a newer bundle if one passes every check.

        ``force`` (a person asked: button, admin page, API) ignores the outbox's and the
        bundle's backoff; the background loop passes False. A version whose model was
        refused is not fetched again; one that failed on the way is (:mod:`retry`).
        """
        try:
            with self.status.activity(State.SYNCING):
                flushed = self.flush(force)
                self._report_skipped()
                current = self.slot.current.version
                latest = self.link.latest(current)
                wait = why_not_now(self._state(), latest.get("version"), time.time(), force)
                if wait is not None:
                    outcome = UpdateResult("none", latest["version"], wait, {})
                else:
                    outcome = self.updater.check_and_install(latest, functools.partial(
                        self.link.download, max_bytes=MAX_BUNDLE_FILE))
        except Exception as exc:
            self.telemetry.record_error("sync", f"sync failed: {type(exc).__name__}",
                                        detail=str(exc)[:200] or None)
            raise
        if outcome.action == "refused":
            self.status.set(State.UPDATE_AVAILABLE)
            self._save_state(**after_refusal(self._state(), outcome, current, time.time()))
            self._report("bundle_refused", outcome.version, outcome.reason)
        elif outcome.action == "installed":
            self.status.set(State.READY)
            self._save_state(retry=None)
            self.personalisation.serve_global(f"v{outcome.version} was installed")
            self._report("bundle_installed", outcome.version, "")
        self.telemetry.last_sync_at = time.time()
        self.last_sync = {"at": self.telemetry.last_sync_at, "sent": flushed.sent,
                          "deferred": flushed.deferred, "refused_updates": flushed.refused,
                          "bundle": outcome.action, "version": outcome.version,
                          "reason": outcome.reason}
        return {**{k: v for k, v in self.last_sync.items() if k != "at"},
                "bytes_up": self.link.bytes_up, "bytes_down": self.link.bytes_down}

    def _report_skipped(self) -> None:
        """Tell the coordinator, once, why the last training run did not happen: its
        dashboard shows a clinic that sends nothing, and why."""
        last = self.last_result
        if last.get("action") == "skipped" and not last.get("reported"):
            self._report("training_skipped", last["version"], last["reason"])
            last["reported"] = True

    def _report(self, kind: str, version: int | None, reason: str) -> None:
        """Tell the coordinator; a failure to report never undoes what was done."""
        try:
            self.link.report(kind, version, reason)
        except Exception as exc:
            logger.warning("could not report %s of v%s: %s", kind, version, exc)

    def run(self, stop: threading.Event) -> None:
        """Background loop: sync every ``sync_interval_s``; train when enough is new."""
        while not stop.wait(self.settings.sync_interval_s):
            try:
                idle = self.status.state in (State.READY, State.UPDATE_AVAILABLE)
                if idle and self.training_due():
                    self.train_now()
                self.sync_now(force=False)
            except Exception as exc:  # the loop must survive a coordinator outage
                logger.warning("federation cycle failed: %s", exc)

    # --- small persistent state -------------------------------------------------------
    def _state(self) -> dict:
        path = self.state_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_state(self, **values: object) -> None:
        write_atomic(self.state_dir / "state.json",
                     json.dumps({**self._state(), **values}).encode())

    def _residual(self) -> dict:
        path: Path = self.state_dir / "residual.npz"
        return weights.read_npz(path.read_bytes()) if path.exists() else {}

    def _save_residual(self, residual: dict) -> None:
        path = self.state_dir / "residual.npz"
        if not residual:
            path.unlink(missing_ok=True)
            return
        write_atomic(path, weights.arrays_to_bytes(residual))
