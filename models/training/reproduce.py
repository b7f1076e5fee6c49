"""The seed paper's protocol (Chatterjee & Attar), on leakage-free grouped splits.

Main model trained on the "main" 60%; two "Raspberry Pis" each fine-tune its head
(frozen backbone) on their own 20%; the two heads are averaged (the paper's plain mean).
Each Pi's accuracy is measured on its own held-out test part, before fine-tuning (the
main model), after local fine-tuning, and after averaging.
"""
from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from models.core import metrics
from models.training.architectures import (build_model, freeze_backbone, get_architecture,
                                           get_head, set_head)
from models.training.dataset import load_grouped
from models.training.splits import paper_partition
from models.training.train import TrainConfig, fit, predict, recipe, set_seeds, train_model

logger = logging.getLogger(__name__)

PIS = ("pi1", "pi2")
# What the paper reports (its Table/Fig. for main model and the two Pi notebooks).
PAPER = {"main_train_accuracy": 0.88, "pi1_before": 0.80, "pi1_after_average": 0.89,
         "pi2_before": 0.80, "pi2_after_average": 0.89}


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    return metrics.binary_metrics(y, predict(model, x), threshold)["accuracy"]


def _fine_tune(main: keras.Model, arch: str, x_tr: np.ndarray, y_tr: np.ndarray,
               x_va: np.ndarray, y_va: np.ndarray, cfg: TrainConfig) -> keras.Model:
    """A copy of ``main`` whose head alone is trained on one Pi's data."""
    model = build_model(arch)
    model.set_weights(main.get_weights())
    freeze_backbone(model)
    fit(model, x_tr, y_tr, x_va, y_va, cfg)
    return model


def reproduce_paper(data: str | Path, seed: int = 0, epochs: int | None = None) -> dict:
    """Run the protocol with the paper's CNN and its recipe (models.training.architectures);
    returns measured figures beside :data:`PAPER`."""
    arch = "paper"
    cfg = recipe(arch, seed, epochs)
    tune = recipe(arch, seed, min(cfg.epochs, 20))
    x, y, groups, _ = load_grouped(data, get_architecture(arch).input_spec)
    site, role = paper_partition(y, groups, seed=seed)

    def part(s: str, r: str) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero((site == s) & (role == r))
        return x[idx], y[idx]

    main, threshold, _ = train_model(arch, *part("main", "train"), *part("main", "val"), cfg)
    result: dict = {"arch": arch, "seed": seed, "threshold": threshold,
                    "sizes": {s: int((site == s).sum()) for s in ("main", *PIS)},
                    "main_train_accuracy": _accuracy(main, *part("main", "train"), threshold),
                    "main_test_accuracy": _accuracy(main, *part("main", "test"), threshold)}
    heads, tuned = [], {}
    for pi in PIS:
        set_seeds(seed)
        tuned[pi] = _fine_tune(main, arch, *part(pi, "train"), *part(pi, "val"), tune)
        heads.append(get_head(tuned[pi]))
    averaged = build_model(arch)
    averaged.set_weights(main.get_weights())
    set_head(averaged, {k: np.mean([h[k] for h in heads], axis=0) for k in heads[0]})
    for pi in PIS:
        test = part(pi, "test")
        result[f"{pi}_before"] = _accuracy(main, *test, threshold)
        result[f"{pi}_after_finetune"] = _accuracy(tuned[pi], *test, threshold)
        result[f"{pi}_after_average"] = _accuracy(averaged, *test, threshold)
    all_test = np.flatnonzero(role == "test")
    result["averaged_all_test"] = metrics.binary_metrics(
        y[all_test], predict(averaged, x[all_test]), threshold)
    result["paper"] = PAPER
    return result


def print_table(result: dict) -> None:
    """The measured figures beside the paper's, one row each."""
    print(f"{'figure':<26}{'paper':>8}{'measured':>10}   (arch {result['arch']}, "
          f"grouped split, sizes {result['sizes']})")
    rows = ["main_train_accuracy", "main_test_accuracy"]
    for pi in PIS:
        rows += [f"{pi}_before", f"{pi}_after_finetune", f"{pi}_after_average"]
    for name in rows:
        paper = PAPER.get(name)
        print(f"{name:<26}{'' if paper is None else f'{paper:.2f}':>8}{result[name]:>10.3f}")
    a = result["averaged_all_test"]
    print(f"averaged model, all test parts (n={a['n']}): accuracy {a['accuracy']:.3f}, "
          f"AUC {a['auc']:.3f}, sensitivity {a['sensitivity']:.3f}, "
          f"specificity {a['specificity']:.3f}")
