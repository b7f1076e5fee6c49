"""Leakage-free k-fold cross-validation over duplicate groups."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from models.core import metrics
from models.training.architectures import get_architecture
from models.training.dataset import Sample, load_grouped
from models.training.parallel import run_jobs
from models.training.shifts import load_shifted, shift_report
from models.training.splits import stratified_group_kfold
from models.training.train import TrainConfig, predict, recipe, train_model

logger = logging.getLogger(__name__)

# Share of each training fold held out (by group): for early stopping and the threshold
# where the recipe asks for them (the `edge` recipe does neither; it keeps the split, as
# dropping it was no better in AUC: README), else only for the validation figures logged.
VAL_FOLDS = 6  # one of six groups' folds, about 17%
# An out-of-fold probability this far from a file's label puts the file on the review list.
REVIEW_MARGIN = 0.9


def inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grouped, stratified train/validation indices inside a training set."""
    inner = stratified_group_kfold(y, groups, k=VAL_FOLDS, seed=seed)
    return np.flatnonzero(inner != 0), np.flatnonzero(inner == 0)


def by_file(kept: list[Sample], prob: np.ndarray) -> dict[str, float]:
    """Probabilities keyed by file (relative to the dataset), as the JSON carries them:
    unrounded, so that a rescore of the saved run reproduces its figures (rounding made
    ties that moved the AUC)."""
    return {s.rel: float(p) for s, p in zip(kept, prob)}


def review_list(files: list[str], y: np.ndarray, prob: np.ndarray,
                margin: float = REVIEW_MARGIN) -> list[dict]:
    """Files whose out-of-fold probability contradicts their label by ``margin`` or more,
    most confident first: either the model is wrong or the label is, for an expert to say.
    """
    gap = np.abs(y - prob)
    return [{"file": files[i], "label": int(y[i]), "probability": round(float(prob[i]), 3)}
            for i in np.argsort(-gap, kind="stable") if gap[i] >= margin]


def _fold(arch: str, cfg: TrainConfig, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
          kept: list[Sample], fold_of: np.ndarray, f: int, shifts: Sequence[str]
          ) -> tuple[np.ndarray, np.ndarray, float, dict, dict]:
    """Train fold ``f``'s model; its test indices, probabilities, threshold, shifted
    probabilities (shift -> probabilities) and metrics."""
    start = time.perf_counter()
    train, test = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
    tr, va = inner_split(y[train], groups[train], cfg.seed + f)
    sites = np.array([s.site for s in kept])[train] if kept else None
    model, threshold, _ = train_model(arch, x[train][tr], y[train][tr], x[train][va],
                                      y[train][va], cfg, sites=None if sites is None
                                      else sites[tr])
    prob = predict(model, x[test])
    shifted = {}
    if shifts:
        spec = get_architecture(arch).input_spec
        images = load_shifted([kept[i] for i in test], spec, shifts, cfg.seed)
        shifted = {name: predict(model, batch) for name, batch in images.items()}
    result = metrics.binary_metrics(y[test], prob, threshold)
    result["fold"], result["seconds"] = f, round(time.perf_counter() - start, 1)
    logger.info("fold %d: accuracy %.3f AUC %.3f sensitivity %.3f (%.0f s)", f,
                result["accuracy"], result["auc"], result["sensitivity"], result["seconds"])
    return test, prob, threshold, shifted, result


def cross_validate(data: str | Path, arch: str, folds: int = 5, cfg: TrainConfig | None = None,
                   shifts: Sequence[str] = (), jobs: int = 1, site: str | None = None
                   ) -> dict:
    """Train ``folds`` models, each tested on a fold none of its duplicates trained on.

    Returns
    -------
    dict with ``<metric>_mean``/``<metric>_std`` over folds, ``per_fold`` metrics and
    ``folds`` mapping each file (relative to ``data``) to its test fold, and
    ``predictions`` its out-of-fold tumour probability (from the model that never saw it),
    ``review`` the files whose prediction contradicts their label (:func:`review_list`).
    With ``shifts`` (names in :data:`models.training.shifts.SHIFTS`), ``shifts`` holds each fold
    model's decisions on its test fold after each acquisition shift, pooled over folds
    (:func:`models.training.shifts.shift_report`), and ``shift_predictions`` the probabilities
    behind them (shift -> file -> probability), to re-score at another threshold.

    ``jobs`` > 1 trains that many folds at once, each in its own process, the cores
    shared among them (:func:`models.training.parallel.run_jobs`); the folds, seeds and
    results' layout are those of ``jobs=1``. With ``site``, only that site's slices are
    cut into folds and tested; the other sites' are in every training set (the Kaggle
    set's CV, comparable with the paper, beside the other sites).
    """
    cfg = cfg or recipe(arch)
    x, y, groups, kept = load_grouped(data, get_architecture(arch).input_spec)
    fold_of = np.full(len(y), -1)
    tested = np.array([site is None or s.site == site for s in kept])
    if not tested.any():
        raise ValueError(f"no slices of site {site!r} in the data")
    fold_of[tested] = stratified_group_kfold(y[tested], groups[tested], k=folds, seed=cfg.seed)
    args = [(arch, cfg, x, y, groups, kept, fold_of, f, shifts) for f in range(folds)]
    outcomes = run_jobs(_fold, args, jobs, [f"fold {f}" for f in range(folds)])
    per_fold, prob, thresholds = [], np.full(len(y), np.nan), np.zeros(len(y))
    prob_shifted = {name: np.zeros(len(y)) for name in shifts}
    for test, p, threshold, shifted, result in outcomes:
        prob[test], thresholds[test] = p, threshold
        for name, q in shifted.items():
            prob_shifted[name][test] = q
        per_fold.append(result)
    summary = metrics.summarize(per_fold, keys=["accuracy", "balanced_accuracy", "auc",
                                                "sensitivity", "specificity", "f1", "brier",
                                                "ece", "threshold"])
    kept_t = [s for s, t in zip(kept, tested) if t]
    y, prob, groups, thresholds = y[tested], prob[tested], groups[tested], thresholds[tested]
    out = {"arch": arch, "n": len(y), "n_groups": int(len(np.unique(groups))),
           "k": folds, "site": site, "config": cfg.to_dict(), **summary, "per_fold": per_fold,
           "folds": {s.rel: int(f) for s, f in zip(kept_t, fold_of[tested])},
           "predictions": by_file(kept_t, prob),
           "review": review_list([s.rel for s in kept_t], y, prob)}
    if shifts:
        prob_shifted = {name: p[tested] for name, p in prob_shifted.items()}
        out["shifts"] = shift_report(y, prob, prob_shifted, thresholds)
        out["shift_predictions"] = {name: by_file(kept_t, p) for name, p in prob_shifted.items()}
    return out
