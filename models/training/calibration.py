"""Calibration and uncertainty of held-out figures, pure NumPy.

Temperature scaling divides the model's logit by one number fitted on validation data
(it keeps the ranking, so AUC, and the 0.5 point); :func:`patient_bootstrap` gives a 95 %
interval for a metric by resampling whole patients, since slices of one patient are not
independent.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

EPS = 1e-7


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    return 1.0 / (1.0 + np.exp(-logit(prob) / temperature))


def fit_temperature(y: np.ndarray, prob: np.ndarray, low: float = 0.05, high: float = 20.0
                    ) -> float:
    """The temperature in [low, high] minimising the log-loss of ``prob`` on labels ``y``
    (golden-section search on log T; the loss is convex in 1/T)."""
    y = np.asarray(y, np.float64)
    s = logit(prob)
    if len(np.unique(y)) < 2:
        raise ValueError("fitting a temperature needs both classes")

    def loss(log_t: float) -> float:
        z = s / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - y * z))

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(60):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(np.exp((a + b) / 2))


def patient_bootstrap(y: np.ndarray, prob: np.ndarray, groups: np.ndarray,
                      metric: Callable[[np.ndarray, np.ndarray], float],
                      n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of ``metric(y, prob)`` over ``n`` resamples of whole
    groups (patients) with replacement; resamples where the metric is undefined (NaN,
    e.g. one class only) are left out."""
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    values = []
    for _ in range(n):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        values.append(metric(y[pick], prob[pick]))
    values = np.array(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
