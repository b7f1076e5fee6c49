"""From a dataset to a signed bundle: split, train, prune, int8-quantize, evaluate, sign."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from nacl.signing import SigningKey

from models.core import metrics
from models.training.architectures import get_architecture, get_head
from models.core.bundle import write_bundle
from models.training.compress import prune, sparsity_of
from models.training.dataset import Sample, load_grouped
from models.training.export import gzip_size, to_tflite
from models.core.runtime import TFLiteModel
from models.training.splits import train_val_test_split
from models.training.train import TrainConfig, operating_threshold, predict, recipe, train_model

logger = logging.getLogger(__name__)

# Probabilities within this many logits of the threshold are shown as "uncertain" on the
# device: 0.35-0.65 around a threshold of 0.5, 0.15-0.38 around 0.25.
UNCERTAIN_LOGIT_BAND = round(math.log(0.65 / 0.35), 4)


@dataclass
class BuildConfig:
    """What to build: architecture, pruning target and training hyper-parameters."""

    arch: str = "edge"
    sparsity: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def for_arch(cls, arch: str, epochs: int | None = None, seed: int = 0,
                 overrides: dict[str, str] | None = None) -> "BuildConfig":
        """``arch`` with its own training recipe and pruning target."""
        return cls(arch, get_architecture(arch).sparsity, recipe(arch, seed, epochs, overrides))


@dataclass
class Trained:
    """A model trained on the grouped train split, with the data and split it used."""

    model: keras.Model
    x: np.ndarray
    y: np.ndarray
    kept: list[Sample]
    role: np.ndarray

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.role == name)
        return self.x[idx], self.y[idx]


def train_on_split(data: str | Path, arch: str, cfg: TrainConfig, verbose: int = 0) -> Trained:
    """Train ``arch`` on the train part of a grouped, stratified 70/15/15 split."""
    x, y, groups, kept = load_grouped(data, get_architecture(arch).input_spec)
    role = train_val_test_split(y, groups, seed=cfg.seed)
    trained = Trained(None, x, y, kept, role)  # type: ignore[arg-type]
    sites = np.array([s.site for s in kept])[role == "train"]
    trained.model, _, _ = train_model(arch, *trained.part("train"), *trained.part("val"),
                                      cfg, verbose, sites=sites)
    return trained


def build_bundle(data: str | Path, out: str | Path, key: SigningKey, cfg: BuildConfig,
                 verbose: int = 0, float_out: str | Path | None = None
                 ) -> dict:
    """Train ``cfg.arch`` on a grouped 70/15/15 split of ``data`` and write bundle version 1.

    The model is pruned to ``cfg.sparsity`` (:func:`models.training.compress.prune`, fine-tuned by
    distillation from the unpruned model) and int8-quantized; the
    threshold is the recipe's, or chosen on the validation split with the int8 model
    (what devices run) when the recipe leaves it open;
    test metrics come from the test split, which no duplicate of a training image
    reaches. The test files are listed in the manifest so anyone can re-check.
    ``float_out`` keeps the float Keras weights: the coordinator rebuilds and
    re-quantizes the model from them when it publishes a new head.
    """
    t = train_on_split(data, cfg.arch, cfg.train, verbose)
    (x_tr, _), (x_va, y_va), (x_te, y_te) = (t.part(r) for r in ("train", "val", "test"))
    float_test = predict(t.model, x_te)
    prune(t.model, cfg.sparsity, x_tr, cfg.train)
    tflite = to_tflite(t.model, "int8", calibration=x_tr)
    lite = TFLiteModel(tflite)
    val_prob, test_prob = lite.predict(x_va)[0], lite.predict(x_te)[0]
    threshold = operating_threshold(cfg.train, y_va, val_prob)
    test = metrics.binary_metrics(y_te, test_prob, threshold)
    test["agreement_with_float"] = float(np.mean((test_prob >= threshold)
                                                 == (float_test >= threshold)))
    fields = {
        "version": 1, "parent_version": None, "architecture": cfg.arch,
        "input": get_architecture(cfg.arch).input_spec.to_dict(),
        "threshold": round(float(threshold), 6), "uncertain_logit_band": UNCERTAIN_LOGIT_BAND,
        "metrics": metrics.json_safe({"test": test, "validation": metrics.binary_metrics(
            y_va, val_prob, threshold)}),
        "training": {
            "config": cfg.train.to_dict(), "sparsity": round(sparsity_of(t.model), 4),
            "format": "int8", "model_bytes": len(tflite), "model_gzip_bytes": gzip_size(tflite),
            "split": {"method": "grouped stratified 70/15/15 by duplicate group",
                      "seed": cfg.train.seed,
                      "counts": {r: int((t.role == r).sum()) for r in ("train", "val", "test")},
                      "test_files": sorted(s.rel for s, r in zip(t.kept, t.role)
                                           if r == "test")},
        },
    }
    manifest = write_bundle(out, tflite, get_head(t.model), fields, key)
    if float_out:
        t.model.save_weights(str(float_out))
    logger.info("bundle v1: test accuracy %.3f AUC %.3f sensitivity %.3f, %d bytes",
                test["accuracy"], test["auc"], test["sensitivity"], len(tflite))
    return manifest
