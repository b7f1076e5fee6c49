"""Publishing: a new head on the frozen backbone -> int8, evaluated, signed bundle.

The coordinator keeps the float Keras weights of the current model (devices only ever
get the int8 TFLite). It sets the aggregated head (its hidden layer magnitude-pruned
when ``sparsity`` > 0; not by default: it cost the clinics, docs/experiments.md),
converts to full int8 calibrated on its own images (a bundle with a NumPy block keeps
its model.tflite, which a round does not change), evaluates on its own validation
images, and publishes only if the result is not worse than the current bundle by more
than a margin.
It never sees a device's images.

A new version keeps the current bundle's threshold and uncertain band: the operating
point belongs to the recipe. Re-choosing it on the coordinator's images, which the
initial model was trained on, moved it over 0.10-0.87 in simulated federations (0.40,
0.87, 0.50 in three rounds of one) at no gain in test accuracy (README: The
coordinator, Protocol).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from models.core import metrics
from models.core.bundle import Bundle, write_bundle
from models.core.runtime import BundleModel, TFLiteModel, bundle_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """The coordinator's own images: calibration for int8, validation for the gate."""

    calibration: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass
class Outcome:
    """What publishing decided, for the round record and the audit log."""

    published: bool
    version: int | None
    reason: str
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_model(model: BundleModel, data: EvalData, threshold: float) -> dict:
    """Validation figures of a model as a device runs it."""
    prob, _ = model.predict(data.x_val)
    return metrics.binary_metrics(data.y_val, prob, threshold)


def carried_fields(current: Bundle) -> dict:
    """What a new version keeps of the current one besides the model: its "not a
    slice" check, its block's description and the record of its data and licences
    (a model derived from non-commercial data stays non-commercial)."""
    return {k: current.manifest[k] for k in ("slice_check", "block", "data")
            if k in current.manifest}


def publish(current: Bundle, float_weights: Path, head: dict[str, np.ndarray],
            data: EvalData, key: SigningKey, out_dir: Path, *, sparsity: float,
            margin: float, block: dict[str, np.ndarray] | None = None) -> Outcome:
    """Rebuild ``current``'s architecture with ``head`` (and ``block``, the last block
    with its adapter averaged, when the bundle has one); write bundle v+1 if it passes.

    The gate compares validation AUC and accuracy, at the current bundle's threshold, of
    the candidate with the current bundle's model on the same images.
    """
    from models.training.architectures import build_model, set_head
    from models.training.compress import prune_head
    from models.training.export import to_tflite
    start = time.perf_counter()
    model = build_model(current.manifest["architecture"])
    model.load_weights(str(float_weights))
    set_head(model, pruned := prune_head(head, sparsity))
    block = current.load_block() if block is None else block
    # With a block, model.tflite runs only up to the block's input, which a round does
    # not change: its bytes are carried. Without a block the head is in the model.
    tflite = current.read_file("model.tflite") if block is not None else \
        to_tflite(model, "int8", calibration=data.calibration)
    try:
        candidate_model = BundleModel(TFLiteModel(tflite), pruned, block)
        prob, _ = candidate_model.predict(data.x_val)
    except (RuntimeError, ValueError) as exc:  # e.g. a degenerate head XNNPACK refuses
        reason = f"candidate does not run in LiteRT: {exc}"
        logger.warning("not publishing: %s", reason)
        return Outcome(False, None, reason, {}, time.perf_counter() - start)
    candidate = metrics.binary_metrics(data.y_val, prob, current.threshold)
    baseline = evaluate_model(bundle_model(current), data, current.threshold)
    drop_auc = baseline["auc"] - candidate["auc"]
    drop_acc = baseline["accuracy"] - candidate["accuracy"]
    summary = metrics.json_safe({"candidate": candidate, "current": baseline})
    if drop_auc > margin or drop_acc > margin:
        reason = (f"candidate worse than v{current.version} on validation: AUC "
                  f"{candidate['auc']:.3f} vs {baseline['auc']:.3f}, accuracy "
                  f"{candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f} "
                  f"(margin {margin})")
        logger.warning("not publishing: %s", reason)
        return Outcome(False, None, reason, summary, time.perf_counter() - start)
    version = current.version + 1
    fields = {
        "version": version, "parent_version": current.version,
        "architecture": current.manifest["architecture"], "input": current.manifest["input"],
        "labels": current.manifest["labels"], "threshold": current.threshold,
        "uncertain_logit_band": current.uncertain_logit_band,
        "metrics": {"validation": summary["candidate"]},
        "training": {"source": "federated round", "head_sparsity": sparsity, "format":
                     "int8", "model_bytes": len(tflite), "model_from_version":
                     current.version if block is not None else None},
        **carried_fields(current),
    }
    slice_check = current.load_slice_check()
    write_bundle(out_dir / f"v{version}", tflite, pruned, fields, key,
                 slice_head=slice_check[0] if slice_check else None, block=block)
    model.save_weights(str(out_dir / f"v{version}.weights.h5"))
    seconds = time.perf_counter() - start
    logger.info("published v%d in %.1f s: validation AUC %.3f accuracy %.3f", version,
                seconds, candidate["auc"], candidate["accuracy"])
    return Outcome(True, version, "published", summary, seconds)
