"""The "not a brain MRI slice" refusal: a small head on the model's embedding that tells
slices from everything else, fitted on real slices against drawn negatives
(:mod:`models.training.negatives`).

The slice head has the shape of the tumour head (embedding -> 32 ReLU -> 1), with the
embedding's standardisation folded into its first layer, so the device scores it with
the same NumPy code (:func:`models.core.head.predict`) on the embedding it already has.
Its threshold refuses at most ``MAX_REFUSED`` of the validation slices.
"""
from __future__ import annotations

import logging

import numpy as np

from models.core import head as head_math
from models.core.head_training import TrainConfig, train_head
from models.core.preprocess import InputSpec, UnusableImageError, preprocess
from models.training import negatives

logger = logging.getLogger(__name__)
# Of real validation slices; the target is <= 1 % on any site. Refusing none let one
# odd validation slice set the threshold: 77 % of drawn negatives refused instead of
# 99.5 % (docs/experiments.md, 2026-12-07).
MAX_REFUSED = 0.005
# Fewer validation slices cannot place that threshold: a bundle trained on so little data
# (a test's) ships without a slice check rather than refuse real slices.
MIN_VALIDATION_SLICES = 100
HIDDEN = 32
HEAD_CONFIG = TrainConfig(epochs=80, batch_size=64, learning_rate=3e-3, prox_mu=0.0,
                          patience=10, min_examples=2)


def negative_inputs(n_per_category: int, spec: InputSpec, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Drawn negatives through the model's own preprocessing, and their categories. Those
    that preprocessing refuses (blank, too small) are left out: they never reach the
    model."""
    images, cats = [], []
    for cat, img in negatives.generate(n_per_category, seed):
        try:
            images.append(preprocess(img, spec))
        except UnusableImageError:
            continue
        cats.append(cat)
    return np.stack(images), np.array(cats)


def _folded(head: dict[str, np.ndarray], mean: np.ndarray, scale: np.ndarray
            ) -> dict[str, np.ndarray]:
    """``head`` applied to (x - mean) / scale, as a head applied to x."""
    kernel = head["hidden/kernel"] / scale[:, None]
    bias = head["hidden/bias"] - mean @ kernel
    return {**head, "hidden/kernel": kernel.astype(np.float32),
            "hidden/bias": bias.astype(np.float32)}


def fit_slice_head(real: np.ndarray, negative: np.ndarray, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """A head scoring P(slice) from embeddings: ``real`` (slices) against ``negative``."""
    x = np.concatenate([real, negative]).astype(np.float64)
    y = np.r_[np.ones(len(real)), np.zeros(len(negative))].astype(np.int64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    rng = np.random.default_rng(seed)
    dim = x.shape[1]
    init = {"hidden/kernel": rng.normal(0, np.sqrt(2 / dim), (dim, HIDDEN)).astype(np.float32),
            "hidden/bias": np.zeros(HIDDEN, np.float32),
            "output/kernel": rng.normal(0, 0.1, (HIDDEN, 1)).astype(np.float32),
            "output/bias": np.zeros(1, np.float32)}
    cfg = TrainConfig(**{**HEAD_CONFIG.__dict__, "seed": seed})
    result = train_head(init, (x - mean) / scale, y, cfg)
    return _folded(result.head, mean, scale)


def refusal_threshold(head: dict[str, np.ndarray], real_val: np.ndarray,
                      max_refused: float = MAX_REFUSED) -> float:
    """The score below which at most ``max_refused`` of ``real_val`` would be refused."""
    return float(np.quantile(head_math.predict(head, real_val), max_refused))


def refusal_report(head: dict[str, np.ndarray], threshold: float, real: dict[str, np.ndarray],
                   negative: np.ndarray, categories: np.ndarray) -> dict:
    """Share refused of each group of real slices and of each negative category."""
    def refused(x: np.ndarray) -> float:
        return round(float(np.mean(head_math.predict(head, x) < threshold)), 4)
    return {"threshold": round(threshold, 6),
            "slices_refused": {name: refused(x) for name, x in real.items() if len(x)},
            "negatives_refused": {c: refused(negative[categories == c])
                                  for c in sorted(set(categories))},
            "negatives_refused_all": refused(negative)}
