"""Composition root of the coordinator: state, key, bundles, rounds, publishing."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from coordinator.bundles import BundleRegistry
from coordinator.config import Settings
from models.core.crash_points import crash_point
from coordinator.rounds import RoundManager
from coordinator.store.sqlite import SQLiteCoordinatorStore
from coordinator.telemetry import Telemetry
from models.core.signing import generate_signing_key, load_signing_key, save_signing_key

logger = logging.getLogger(__name__)
KEY_FILE = "signing.key"


def signing_key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def ensure_signing_key(state_dir: Path) -> SigningKey:
    """Load the coordinator's key; create it (mode 0600) only if there is none."""
    path = signing_key_path(state_dir)
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_signing_key(generate_signing_key(), path)
        logger.warning("created a new signing key %s; devices must trust %s.pub", path, path)
    return load_signing_key(path)


@dataclass
class Services:
    """Everything the API, the Flower ServerApp and the CLI need, built once."""

    settings: Settings
    store: SQLiteCoordinatorStore
    key: SigningKey
    bundles: BundleRegistry
    rounds: RoundManager
    telemetry: Telemetry = field(default_factory=Telemetry)

    def close(self) -> None:
        self.rounds.close()
        self.store.close()


def load_eval_data(settings: Settings, bundles: BundleRegistry):
    """The coordinator's own images for int8 calibration and the publishing gate."""
    if settings.data is None:
        logger.warning("no coordinator data configured: rounds aggregate but do not publish")
        return None
    from coordinator.publish import EvalData
    from models.training.dataset import load_images, load_samples
    from models.core.preprocess import InputSpec
    spec = InputSpec.from_dict(bundles.latest().manifest["input"])
    x, y, _ = load_images(load_samples(settings.data), spec)
    return EvalData(calibration=x, x_val=x, y_val=y)


def make_publisher(settings: Settings, store, bundles: BundleRegistry, key: SigningKey,
                   data) -> callable:
    def publisher(delta: dict[str, np.ndarray], round_id: int):
        from coordinator.publish import Outcome, publish
        note = f"round {round_id}"
        done = next((b for b in store.list_bundles() if b.reason == note), None)
        if done is not None:  # published, then killed before the round's outcome
            return Outcome(done.published, done.version, "published before a restart",
                           done.metrics)
        current = bundles.latest()
        head = {k: v + delta[k] for k, v in current.load_head().items()}
        block = current.load_block()
        if current.adapter_shapes:  # the clinics trained the block's adapter too
            block = {k: v + delta[k] if k in current.adapter_shapes else v
                     for k, v in block.items()}
        outcome = publish(current, bundles.weights_path(current.version), head, data, key,
                          bundles.staging, sparsity=settings.sparsity,
                          margin=settings.publish_margin, block=block)
        if outcome.published:
            crash_point("publish.staged")
            store.add_bundle(outcome.version, current.version,
                             str(bundles.path(outcome.version)), outcome.metrics, True, note)
            crash_point("publish.recorded")
            bundles.promote(outcome.version)
            crash_point("publish.promoted")
        return outcome
    return publisher if data is not None else None


def build_services(settings: Settings) -> Services:
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = SQLiteCoordinatorStore(settings.state_dir)
    key = ensure_signing_key(settings.state_dir)
    bundles = BundleRegistry(settings.state_dir / "bundles", key)
    first = bundles.initialise(settings.initial_bundle, settings.initial_weights)
    if store.latest_bundle() is None:
        store.add_bundle(1, None, str(first.path), first.manifest.get("metrics", {}), True,
                         "initial bundle re-signed")
        store.audit("bundle_published", None, {"version": 1, "reason": "initial"})
    bundles.recover({b.version for b in store.list_bundles()})
    data = load_eval_data(settings, bundles)
    rounds = RoundManager(settings, store, bundles,
                          make_publisher(settings, store, bundles, key, data))
    rounds.resume()
    return Services(settings, store, key, bundles, rounds)
