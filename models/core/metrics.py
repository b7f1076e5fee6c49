"""Binary classification metrics for tumour screening (label 1 = tumour), pure NumPy.

Common parameters: ``y_true`` is a 1-D array of 0/1 labels; ``prob`` holds finite
probabilities of class 1 in [0, 1] (``scores`` may be any finite reals), same length.
Anything else raises ValueError with a message naming the argument.

Undefined quantities (AUC with one class, sensitivity without positives, precision
without positive predictions, ...) are ``float('nan')``; ``json.dumps`` writes them as
``NaN``; :func:`json_safe` maps them to ``null`` for strict JSON.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

NAN = float("nan")
CLIP = (0.05, 0.95)


def _labels(y: Any, name: str = "y_true") -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 labels")
    return a.astype(np.int64)


def _check(y_true: Any, x: Any, name: str = "prob",
           unit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y, a = _labels(y_true), np.asarray(x)
    if a.ndim != 1 or a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a 1-D numeric array, got shape {a.shape}")
    if a.size != y.size:
        raise ValueError(f"{name} has {a.size} values but y_true has {y.size}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN/inf)")
    if unit and ((a < 0).any() or (a > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]")
    return y, a


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula.

    Tied scores get average ranks, so each tied positive/negative pair counts 0.5.

    Returns
    -------
    float
        NaN when only one class is present (not an error, so per-client or per-fold
        evaluation keeps going; ``summarize`` skips NaN).
    """
    y, s = _check(y_true, scores, "scores", unit=False)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n0 == 0 or n1 == 0:
        return NAN
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank per value
    rank_sum = avg_rank[inverse][y == 1].sum()
    return float((rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(y_true: Sequence[int],
              scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for every distinct score.

    Returns
    -------
    fpr, tpr, thresholds : np.ndarray
        Point ``i`` predicts positive when ``score >= thresholds[i]``; thresholds are
        decreasing and start at ``inf`` (the (0, 0) point). ``fpr``/``tpr`` are NaN when
        the corresponding class is absent.
    """
    y, s = _check(y_true, scores, "scores", unit=False)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.r_[0, np.cumsum(y)[last]]
    fps = np.r_[0, last + 1] - tps
    fpr = fps / (fps[-1] if fps[-1] else NAN)
    tpr = tps / (tps[-1] if tps[-1] else NAN)
    return fpr, tpr, np.r_[np.inf, s[last]]


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    """Counts ``{"tn", "fp", "fn", "tp"}`` (Python ints) of 0/1 predictions ``y_pred``."""
    y, p = _check(y_true, _labels(y_pred, "y_pred"), "y_pred", unit=False)
    counts = np.bincount(2 * y + p.astype(np.int64), minlength=4)
    return dict(zip(("tn", "fp", "fn", "tp"), map(int, counts)))


def brier(y_true: Sequence[int], prob: Sequence[float]) -> float:
    """Brier score: mean squared difference between probability and label."""
    y, p = _check(y_true, prob)
    return float(np.mean((p - y) ** 2))


def calibration_bins(y_true: Sequence[int], prob: Sequence[float],
                     bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width reliability bins: bin ``k`` holds ``k/bins <= p < (k+1)/bins`` (p=1: last).

    Returns
    -------
    dict of np.ndarray
        ``edges`` (bins + 1) and per bin ``count``, ``mean_prob``, ``frac_pos`` (NaN if empty).
    """
    y, p = _check(y_true, prob)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(idx, weights=p, minlength=bins) / count
        frac_pos = np.bincount(idx, weights=y, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count,
            "mean_prob": mean_prob, "frac_pos": frac_pos}


def expected_calibration_error(y_true: Sequence[int], prob: Sequence[float],
                               bins: int = 10) -> float:
    """ECE: sum over non-empty bins of ``count/n * |frac_pos - mean_prob|``."""
    b = calibration_bins(y_true, prob, bins)
    full = b["count"] > 0
    gap = np.abs(b["frac_pos"][full] - b["mean_prob"][full])
    return float(np.sum(b["count"][full] * gap) / b["count"].sum())


def sensitivity_specificity(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray
                            ) -> tuple[float, float]:
    """Sensitivity and specificity of ``p >= threshold`` (one threshold or one per item);
    NaN for a class with no items."""
    pred = p >= threshold
    return (_ratio((pred & (y == 1)).sum(), (y == 1).sum()),
            _ratio((~pred & (y == 0)).sum(), (y == 0).sum()))


def binary_metrics(y_true: Sequence[int], prob: Sequence[float],
                   threshold: float = 0.5) -> dict[str, Any]:
    """Screening metrics at ``threshold`` (positive when ``prob >= threshold``).

    Returns
    -------
    dict
        n, accuracy, balanced_accuracy (mean of sensitivity and specificity), auc,
        sensitivity, specificity, precision, f1, brier, ece (10 bins), threshold and
        confusion (dict of ints); plain Python ints/floats, NaN where undefined.
    """
    y, p = _check(y_true, prob)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    c = confusion(y, (p >= threshold).astype(np.int64))
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {"n": int(y.size), "accuracy": _ratio(tp + tn, y.size),
            "balanced_accuracy": (sens + spec) / 2.0, "auc": roc_auc(y, p),
            "sensitivity": sens, "specificity": spec, "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "brier": brier(y, p),
            "ece": expected_calibration_error(y, p), "threshold": float(threshold),
            "confusion": c}


def choose_threshold(y_true: Sequence[int], prob: Sequence[float],
                     min_sensitivity: float = 0.95, min_specificity: float = 0.0) -> float:
    """Operating threshold favouring sensitivity (a screening tool must not miss tumours).

    Candidates are the midpoints between sorted unique probabilities plus 0.5 and the
    clip bounds 0.05 and 0.95 (0.05 = "almost everything positive"), all clipped into
    [0.05, 0.95] *before* evaluation, so the guarantee holds for the returned value.
    Among candidates with sensitivity >= ``min_sensitivity`` and specificity >=
    ``min_specificity`` pick the highest specificity, then the highest sensitivity,
    then the one closest to 0.5, then the lower one. If none qualifies, maximise
    ``2 * sensitivity + specificity`` (a missed tumour costs twice a false alarm), then
    sensitivity, closest to 0.5, lower. ``min_specificity`` keeps a small validation set
    from pushing the threshold to "everything is a tumour". Raises ValueError unless
    both classes are present.

    Returns
    -------
    float
        The threshold, in [0.05, 0.95]; use it as ``prob >= threshold``.
    """
    y, p = _check(y_true, prob)
    if not 0.0 <= float(min_sensitivity) <= 1.0:
        raise ValueError(f"min_sensitivity must lie in [0, 1], got {min_sensitivity!r}")
    if y.min() == y.max():
        raise ValueError("choose_threshold needs both classes in y_true")
    u = np.unique(p)
    cands = np.unique(np.clip(np.r_[(u[:-1] + u[1:]) / 2.0, 0.5, CLIP], *CLIP))
    best, best_key = 0.5, None
    for t in map(float, cands):
        sens, spec = sensitivity_specificity(y, p, t)
        ok = sens >= min_sensitivity and spec >= min_specificity
        key = (ok, spec, sens) if ok else (ok, 2 * sens + spec, sens)
        key += (-abs(t - 0.5), -t)
        if best_key is None or key > best_key:
            best, best_key = t, key
    return best


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def summarize(results: Iterable[dict[str, Any]],
              keys: Sequence[str] | None = None) -> dict[str, float]:
    """Mean and population std (ddof=0) of scalar metrics over folds/clients/runs.

    ``keys`` defaults to every int/float key (bools and nested dicts skipped), in first
    appearance order. NaN and missing values are ignored (nanmean/nanstd); a key with no
    finite value gives NaN. Returns ``{"<key>_mean": ..., "<key>_std": ...}``.
    """
    rows = list(results)
    if not rows:
        raise ValueError("summarize needs at least one metrics dict")
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if _is_scalar(v)))
    out: dict[str, float] = {}
    for k in keys:
        vals = [NAN if r.get(k) is None else r[k] for r in rows]
        if not all(_is_scalar(v) for v in vals):
            raise ValueError(f"summarize: key {k!r} is not numeric in every dict")
        a = np.asarray(vals, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[f"{k}_mean"] = float(np.nanmean(a))
            out[f"{k}_std"] = float(np.nanstd(a))
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities (undefined metrics) as ``None``, recursively.

    Manifests, round records and ``--json`` outputs are strict JSON.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
