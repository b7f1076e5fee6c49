"""Leave-one-site-out: the honest estimate of how the model does at a clinic it has never
seen. For each held-out site, train on every other site, fit the temperature and the
threshold on a validation part of those sites only, and judge on the held-out site.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from models.core import metrics
from models.training import calibration
from models.training.architectures import get_architecture
from models.training.cv import by_file, inner_split
from models.training.dataset import DataSource, load_grouped
from models.training.parallel import run_jobs
from models.training.train import TrainConfig, operating_threshold, predict, recipe, train_model

logger = logging.getLogger(__name__)
REPORT_KEYS = ("auc", "balanced_accuracy", "sensitivity", "specificity")


def _holdout(arch: str, cfg: TrainConfig, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
             site_of: np.ndarray, site: str) -> dict:
    """Train on every site but ``site``; its calibrated probabilities on ``site``."""
    start = time.perf_counter()
    train = np.flatnonzero(site_of != site)
    tr, va = inner_split(y[train], groups[train], cfg.seed)
    tr, va = train[tr], train[va]
    model, _, _ = train_model(arch, x[tr], y[tr], x[va], y[va], cfg, sites=site_of[tr])
    val_raw = predict(model, x[va])
    temperature = 1.0  # a validation part of one class (tiny data) cannot fit one
    if len(np.unique(y[va])) == 2:
        temperature = calibration.fit_temperature(y[va], val_raw)
    val = calibration.apply_temperature(val_raw, temperature)
    threshold = operating_threshold(cfg, y[va], val)
    raw = predict(model, x[site_of == site])
    logger.info("held out %s: trained on %d, validated on %d slices, T %.2f (%.0f s)",
                site, len(tr), len(va), temperature, time.perf_counter() - start)
    return {"site": site, "raw": raw, "prob": calibration.apply_temperature(raw, temperature),
            "temperature": temperature, "threshold": threshold,
            "validation": metrics.binary_metrics(y[va], val, threshold),
            "seconds": round(time.perf_counter() - start, 1)}


def _ci(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, threshold: float,
        key: str, n: int) -> list[float]:
    def metric(yy: np.ndarray, pp: np.ndarray) -> float:
        if key == "auc":
            return metrics.roc_auc(yy, pp)
        return metrics.binary_metrics(yy, pp, threshold)[key]
    return [round(v, 4) for v in calibration.patient_bootstrap(y, prob, groups, metric, n)]


def site_report(y: np.ndarray, prob: np.ndarray, raw: np.ndarray, groups: np.ndarray,
                sequences: Sequence[str], threshold: float, bootstrap: int = 1000) -> dict:
    """A held-out site's figures at ``threshold``: n, patients, AUC, balanced accuracy,
    sensitivity, specificity (each with a 95 % patient-bootstrap interval), ECE after
    and before calibration, reliability bins, and the same figures per sequence."""
    m = metrics.binary_metrics(y, prob, threshold)
    bins = metrics.calibration_bins(y, prob)
    report = {"n": int(len(y)), "patients": int(len(np.unique(groups))),
              "tumour": int(y.sum()), **{k: m[k] for k in REPORT_KEYS},
              "ece": m["ece"], "ece_uncalibrated": metrics.expected_calibration_error(y, raw),
              "brier": m["brier"], "threshold": threshold, "confusion": m["confusion"],
              "ci95": {k: _ci(y, prob, groups, threshold, k, bootstrap) for k in REPORT_KEYS
                       if np.isfinite(m[k])},
              "reliability": {k: np.round(v, 4).tolist() for k, v in bins.items()}}
    seqs = np.asarray(sequences)
    report["by_sequence"] = {
        s: {k: metrics.binary_metrics(y[seqs == s], prob[seqs == s], threshold)[k]
            for k in ("n", *REPORT_KEYS)} for s in sorted(set(sequences))}
    return report


def leave_one_site_out(data: str | Path | DataSource, arch: str,
                       cfg: TrainConfig | None = None,
                       holdouts: Sequence[str] | None = None, jobs: int = 1,
                       bootstrap: int = 1000) -> dict:
    """Train one model per held-out site and report each site (:func:`site_report`).

    ``holdouts`` defaults to every site; a site with one class only (a tumour-free
    site) is reported by specificity alone. Returns ``{"sites": {site: report},
    "worst": the lowest of each figure over two-class sites, "predictions": file ->
    calibrated probability, ...}``.
    """
    cfg = cfg or recipe(arch)
    x, y, groups, kept = load_grouped(data, get_architecture(arch).input_spec)
    site_of = np.array([s.site for s in kept])
    names = sorted(set(site_of))
    holdouts = list(holdouts or names)
    unknown = sorted(set(holdouts) - set(names))
    if unknown or len(names) < 2:
        raise ValueError(f"cannot hold out {', '.join(unknown) or 'the only site'}: the "
                         f"data has sites {', '.join(names)}")
    calls = [(arch, cfg, x, y, groups, site_of, s) for s in holdouts]
    outcomes = run_jobs(_holdout, calls, jobs, [f"held-out site {s}" for s in holdouts])
    reports, predictions = {}, {}
    for out in outcomes:
        sel = site_of == out["site"]
        reports[out["site"]] = {
            **site_report(y[sel], out["prob"], out["raw"], groups[sel],
                          [kept[i].sequence for i in np.flatnonzero(sel)], out["threshold"],
                          bootstrap),
            "temperature": out["temperature"], "seconds": out["seconds"],
            "validation": out["validation"]}
        predictions.update(by_file([kept[i] for i in np.flatnonzero(sel)], out["prob"]))
    return {"arch": arch, "config": cfg.to_dict(), "n": int(len(y)), "sites": reports,
            "worst": _worst(reports), "predictions": predictions}


def rescore(result: dict, data: str | Path | DataSource, threshold: float,
            bootstrap: int = 1000) -> dict:
    """A saved :func:`leave_one_site_out` result judged at another fixed ``threshold``,
    from its held-out predictions (no training; the threshold must not come from the
    held-out sites)."""
    _, y, groups, kept = load_grouped(data, get_architecture(result["arch"]).input_spec)
    site_of = np.array([s.site for s in kept])
    reports = {}
    for site, old in result["sites"].items():
        sel = np.flatnonzero(site_of == site)
        prob = np.array([result["predictions"][kept[i].rel] for i in sel])
        report = site_report(y[sel], prob, prob, groups[sel],
                             [kept[i].sequence for i in sel], threshold, bootstrap)
        reports[site] = {**report, "ece_uncalibrated": old["ece_uncalibrated"],
                         "temperature": old["temperature"], "seconds": old["seconds"],
                         "validation": old["validation"]}
    return {**result, "config": {**result["config"], "threshold": threshold},
            "sites": reports, "worst": _worst(reports), "rescored_at": threshold}


def _worst(reports: dict) -> dict:
    """The lowest of each figure, and the highest ECE, over the two-class sites."""
    two_class = [r for r in reports.values() if 0 < r["tumour"] < r["n"]]
    worst = {k: min(r[k] for r in two_class) for k in REPORT_KEYS} if two_class else {}
    worst["ece"] = max((r["ece"] for r in two_class), default=float("nan"))
    return worst


def format_table(result: dict) -> str:
    """One line per held-out site: n, patients, AUC, balanced accuracy, sensitivity and
    specificity with 95 % intervals, ECE."""
    def cell(r: dict, k: str) -> str:
        v, ci = r.get(k), r["ci95"].get(k)
        if v is None or not np.isfinite(v):
            return "—"
        return f"{v:.3f} [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else f"{v:.3f}"
    head = (f"{'held-out site':<20} {'n':>5} {'pts':>4} {'AUC':>18} {'bal. acc.':>18} "
            f"{'sensitivity':>18} {'specificity':>18} {'ECE':>6}")
    rows = [head]
    for site, r in sorted(result["sites"].items()):
        rows.append(f"{site:<20} {r['n']:>5} {r['patients']:>4} "
                    + " ".join(f"{cell(r, k):>18}" for k in REPORT_KEYS)
                    + f" {r['ece']:>6.3f}")
    return "\n".join(rows)
