"""Rounds: accept validated updates, close on quorum or deadline, aggregate, publish.

Orchestration only: the maths is in :mod:`coordinator.aggregation` and the model work
in :mod:`coordinator.publish`. Every received update is on disk before it is
acknowledged, so a coordinator killed mid-round resumes with the updates it had.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from coordinator.aggregation import aggregate
from coordinator.aggregation.privacy import PrivacyLedger, dp_fedavg
from coordinator.aggregation.validate import UpdateRejected, validate_update
from coordinator.bundles import BundleRegistry
from coordinator.config import Settings
from coordinator.exc import InputError, RejectedError
from models.core.update_codec import decode
from models.core.weights import WeightsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    """What the device is told about its update."""

    update_id: str
    round_id: int
    duplicate: bool
    round_closed: bool


def parse_time(iso: str) -> float:
    """Seconds since the epoch of a stored ISO-8601 time (UTC when no offset is given)."""
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class RoundManager:
    """Decides when a round closes and what happens then; thread-safe."""

    def __init__(self, settings: Settings, store, bundles: BundleRegistry,
                 publisher: Callable[[dict, int], object] | None) -> None:
        self.settings = settings
        self.store = store
        self.bundles = bundles
        self.publisher = publisher  # (aggregated delta, round id) -> Outcome
        self.ledger = PrivacyLedger(settings.dp_delta) if settings.dp_noise_multiplier else None
        self._lock = threading.RLock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="round")
        self.pending: Future | None = None

    # --- receiving -------------------------------------------------------------------
    def submit(self, device_id: str, meta: dict, payload: bytes) -> Receipt:
        """Validate and persist one update; close the round if it reached ``min_updates``.

        Raises :class:`InputError` (malformed) or :class:`RejectedError` (refused, with a
        reason); both are audited by the caller.
        """
        update_id, base_version, examples = self._meta(device_id, meta)
        base = self.bundles.get(base_version)
        if base is None:
            raise RejectedError(f"unknown base version {base_version}", "base_version")
        latest = self.bundles.latest()
        if latest.version - base_version > self.settings.max_staleness:
            raise RejectedError(f"base version {base_version} is more than "
                                f"{self.settings.max_staleness} behind v{latest.version}",
                                "stale")
        try:
            delta = decode(payload, meta, base.update_shapes,
                           max_bytes=int(self.settings.max_update_mb * 2**20))
            norm = validate_update(delta, base.update_shapes, max_norm=self.settings.max_norm,
                                   examples=examples, max_examples=self.settings.max_examples)
        except WeightsError as exc:
            raise RejectedError(str(exc), "payload") from None
        except UpdateRejected as exc:
            raise RejectedError(str(exc), exc.reason) from None
        with self._lock:
            rnd = self.store.current_round() or self.store.open_round(latest.version)
            update, created = self.store.add_update(
                update_id, rnd.id, device_id, base_version, examples, norm,
                meta.get("metrics") or {}, payload, meta)
            rnd = self.store.get_round(rnd.id)
            closing = created and rnd.n_updates >= self.settings.min_updates
            if closing:
                self._close(rnd.id, f"{rnd.n_updates} updates (min_updates)")
        return Receipt(update.id, update.round_id, not created, closing)

    def _meta(self, device_id: str, meta: dict) -> tuple[str, int, int]:
        if meta.get("device_id") != device_id:
            raise InputError("meta.device_id does not match the authenticated device")
        update_id = meta.get("update_id")
        base_version, examples = meta.get("base_version"), meta.get("examples")
        if not isinstance(update_id, str) or len(update_id) != 32:
            raise InputError("meta.update_id must be a 32-character hex id")
        if not isinstance(base_version, int) or isinstance(base_version, bool):
            raise InputError("meta.base_version must be an integer")
        if not isinstance(examples, int) or isinstance(examples, bool):
            raise InputError("meta.examples must be an integer")
        return update_id, base_version, examples

    # --- closing ----------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Apply the deadline to the open round (called periodically)."""
        now = time.time() if now is None else now
        with self._lock:
            rnd = self.store.current_round()
            if rnd is not None and \
                    now - parse_time(rnd.opened_at) >= self.settings.round_deadline_s:
                self._end(rnd, "deadline")

    def end_now(self, why: str) -> Future | None:
        """End the open round now, as its deadline would (a transport that drives rounds
        itself, Flower, calls this once replies are in); returns the latest aggregation
        job (also one that ``min_updates`` started), None if there was never one."""
        with self._lock:
            rnd = self.store.current_round()
            if rnd is not None:
                self._end(rnd, why)
            return self.pending

    def _end(self, rnd, why: str) -> None:
        if rnd.n_updates >= self.settings.min_quorum:
            self._close(rnd.id, f"{why} with {rnd.n_updates} updates (quorum)")
        elif self.settings.carry_over and rnd.n_updates:
            self.store.close_round(rnd.id, "expired", f"{why} below quorum; carried over")
            nxt = self.store.open_round(rnd.base_version)
            moved = self.store.carry_over(rnd.id, nxt.id)
            self.store.audit("round_carried_over", None, {"round": rnd.id, "to": nxt.id,
                                                          "updates": moved})
        else:
            self.store.close_round(rnd.id, "expired", f"{why} below quorum")
            self.store.audit("round_expired", None, {"round": rnd.id,
                                                     "updates": rnd.n_updates})

    def _close(self, round_id: int, reason: str) -> None:
        self.store.close_round(round_id, "closed", reason)
        self.store.audit("round_closed", None, {"round": round_id, "reason": reason})
        self.pending = self._worker.submit(self.finish, round_id)

    def resume(self) -> None:
        """After a restart: finish rounds that closed but were never aggregated."""
        for rnd in self.store.list_rounds():
            if rnd.status == "closed" and not rnd.metrics and rnd.published_version is None \
                    and not (rnd.reason or "").startswith("outcome:"):
                logger.info("resuming round %d after a restart", rnd.id)
                self.pending = self._worker.submit(self.finish, rnd.id)

    def aggregate_round(self, round_id: int) -> tuple[dict, float | None]:
        """The round's aggregated delta (and the ε spent, with DP)."""
        updates = self.store.updates_for_round(round_id)
        deltas, weights = [], []
        for u in updates:
            base = self.bundles.get(u.base_version)
            deltas.append(decode(self.store.load_payload(u), u.meta, base.update_shapes))
            weights.append(float(u.examples))
        s = self.settings
        if self.ledger is not None:
            rng = np.random.default_rng()
            delta = dp_fedavg(deltas, s.clip_norm, s.dp_noise_multiplier, rng)
            epsilon, _ = self.ledger.spend(s.dp_noise_multiplier)
            return delta, epsilon
        params = {"trim": s.trim} if s.method == "trimmed_mean" else \
            {"max_norm": s.clip_norm} if s.method == "clipped_fedavg" else {}
        return aggregate(s.method, deltas, weights, **params), None

    def finish(self, round_id: int) -> None:
        """Aggregate, publish (or keep the current bundle), record the outcome."""
        try:
            delta, epsilon = self.aggregate_round(round_id)
            outcome = self.publisher(delta, round_id) if self.publisher else None
            if outcome is None:
                self.store.record_outcome(round_id, None, {}, "outcome: aggregated; "
                                          "publishing disabled (no coordinator data)", epsilon)
                return
            self.store.record_outcome(round_id, outcome.version, outcome.metrics,
                                      f"outcome: {outcome.reason}", epsilon)
            self.store.audit("bundle_published" if outcome.published else "bundle_kept",
                             None, {"round": round_id, "version": outcome.version,
                                    "reason": outcome.reason,
                                    "seconds": round(outcome.seconds, 1)})
        except Exception as exc:  # a failed round must not stop the service
            logger.exception("round %d failed", round_id)
            self.store.record_outcome(round_id, None, {}, f"outcome: failed: {exc}"[:500], None)
            self.store.audit("round_failed", None, {"round": round_id,
                                                    "error": json.dumps(str(exc))})

    def close(self) -> None:
        self._worker.shutdown(wait=True)
