"""Evaluate a bundle through LiteRT, the device's own inference path. No TensorFlow."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from models.core import metrics
from models.core.bundle import Bundle, read_manifest
from models.training.dataset import Sample, load_images, load_samples
from models.core.preprocess import InputSpec
from models.core.runtime import BundleModel, bundle_model
from models.training.shifts import SHIFTS, load_shifted, shift_report

logger = logging.getLogger(__name__)

SPLITS = ("all", "test")


def select_split(samples: Sequence[Sample], manifest: dict, split: str) -> list[Sample]:
    """``all`` samples, or only the ``test`` files the bundle's manifest says it never saw."""
    if split == "all":
        return list(samples)
    if split != "test":
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    held_out = set(manifest.get("training", {}).get("split", {}).get("test_files", []))
    if not held_out:
        raise ValueError("the bundle's manifest names no held-out test files")
    chosen = [s for s in samples if s.rel in held_out]
    if not chosen:
        raise ValueError("none of the bundle's held-out test files are in this dataset")
    return chosen


def _bundle_and_data(bundle_dir: str | Path, data: str | Path, split: str
                     ) -> tuple[dict, BundleModel, np.ndarray, np.ndarray, list[Sample]]:
    """The bundle's manifest and model as a device runs it (its files checked against
    the manifest's hashes, not its signature), and the ``split`` of ``data``."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    samples = select_split(load_samples(data), manifest, split)
    images, labels, kept = load_images(samples, InputSpec.from_dict(manifest["input"]))
    return manifest, bundle_model(Bundle(bundle_dir, manifest)), images, labels, kept


def evaluate_bundle(bundle_dir: str | Path, data: str | Path, split: str = "all"
                    ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of the bundle's model at its own threshold on ``data``.

    Returns
    -------
    metrics dict (with ``model_version`` and ``split``), labels, probabilities
    """
    manifest, model, images, labels, _ = _bundle_and_data(bundle_dir, data, split)
    prob, _ = model.predict(images)
    result = metrics.binary_metrics(labels, prob, manifest["threshold"])
    result.update(model_version=manifest["version"], architecture=manifest["architecture"],
                  split=split)
    return result, labels, prob


def shift_evaluation(bundle_dir: str | Path, data: str | Path, split: str = "test"
                     ) -> dict[str, dict]:
    """The bundle's decisions on ``data`` clean and after each acquisition shift
    (:mod:`models.training.shifts`), at its own threshold, through LiteRT."""
    manifest, model, images, labels, kept = _bundle_and_data(bundle_dir, data, split)
    shifted = load_shifted(kept, InputSpec.from_dict(manifest["input"]), list(SHIFTS))
    shifted = {name: model.predict(x)[0] for name, x in shifted.items()}
    return shift_report(labels, model.predict(images)[0], shifted, manifest["threshold"])
