"""Which part of the model should clinics adapt together? An in-process federation of
real sites (:mod:`models.core.adapt`'s modes, FedAvg weighted by cases), against each
clinic alone and all clinics' cases pooled, on the same held-out patients.

Each clinic (a site of the manifest) keeps a third of its patients (at least two) as its
test part; the rest arrive in a random order, ``cases_per_round`` more confirmed cases
per round. The backbone up to the last block runs once, in TensorFlow; everything a
device would train runs in NumPy. Reported: balanced accuracy at the model's threshold
per clinic, for the initial model, federated, local-only and centralized (the last two
on all the cases the federation saw by its last round).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from models.core import block as B
from models.core import head as H
from models.core import metrics
from models.core.adapt import MODES, adapt, shared_names
from models.core.head_training import TrainConfig
from models.training.dataset import DataSource, load_grouped
from models.training.splits import clinic_split

CLINICS = ("site_tcga_lgg_du", "site_tcga_lgg_ht", "site_tcga_lgg_cs", "site_tcga_lgg_fg")


def _federate(mode: str, head0: H.Head, block0: B.Block, x: np.ndarray, y: np.ndarray,
              parts: dict, k: int, rounds: int, cfg: TrainConfig) -> tuple[H.Head, dict]:
    """FedAvg of the head and the mode's shared block arrays; local arrays stay."""
    head, shared = dict(head0), {}
    local = {c: dict(block0) for c in parts}
    for r in range(1, rounds + 1):
        updates = []
        for clinic, (cases, _) in parts.items():
            confirmed = cases[:k * r]
            try:
                result = adapt(head, {**local[clinic], **shared}, x[confirmed], y[confirmed],
                               mode, cfg)
            except ValueError:  # one class or too few cases so far: skips the round
                continue
            local[clinic] = result.block
            updates.append((len(confirmed), result.head,
                            {n: result.block[n] for n in shared_names(mode)}))
        if updates:
            w = np.array([u[0] for u in updates], float) / sum(u[0] for u in updates)
            head = {n: sum(wi * u[1][n] for wi, u in zip(w, updates)) for n in head0}
            shared = {n: sum(wi * u[2][n] for wi, u in zip(w, updates))
                      for n in shared_names(mode)}
    return head, {c: {**local[c], **shared} for c in parts}


def compare(data: str | Path | DataSource, weights: str | Path, threshold: float,
            clinics: Sequence[str] = CLINICS, seed: int = 0, cases_per_round: int = 10,
            rounds: int = 6, modes: Sequence[str] = MODES) -> list[dict]:
    """One result per mode (and one for the initial model), balanced accuracies per
    clinic and their mean."""
    import keras

    from models.training.architectures import ARCHITECTURES, build_model, get_block, \
        get_head, with_embedding
    x, y, groups, samples = load_grouped(data, ARCHITECTURES["edge"].input_spec)
    sites = np.array([s.site for s in samples])
    model = build_model("edge")
    model.load_weights(weights)
    to_block = keras.Model(model.inputs, with_embedding(model).outputs[2])
    chosen = np.isin(sites, clinics)
    inputs = np.zeros((len(y), *to_block.output.shape[1:]), np.float32)
    inputs[chosen] = to_block.predict(x[chosen], batch_size=64, verbose=0)
    head0, block0 = get_head(model), get_block(model)
    parts = clinic_split(groups, sites, clinics, seed)
    cfg = TrainConfig(epochs=60, learning_rate=1e-3, patience=10, val_fraction=0.2, seed=seed)

    def scores(head: H.Head, blocks: dict) -> dict[str, float]:
        return {c: round(metrics.binary_metrics(
            y[test], H.predict(head, B.embed(blocks[c], inputs[test])), threshold)
            ["balanced_accuracy"], 4) for c, (_, test) in parts.items()}

    results = [_row("initial", scores(head0, {c: block0 for c in parts}))]
    for mode in modes:
        start = time.perf_counter()
        fed = scores(*_federate(mode, head0, block0, inputs, y, parts, cases_per_round,
                                rounds, cfg))
        seen = {c: cases[:cases_per_round * rounds] for c, (cases, _) in parts.items()}
        local = {}
        for clinic, confirmed in seen.items():
            result = adapt(head0, block0, inputs[confirmed], y[confirmed], mode, cfg)
            local[clinic] = scores(result.head, {c: result.block for c in parts})[clinic]
        pooled = np.concatenate(list(seen.values()))
        central = adapt(head0, block0, inputs[pooled], y[pooled], mode, cfg)
        results.append({**_row(mode, fed), "local": _row(mode, local)["mean"],
                        "central": scores(central.head,
                                          {c: central.block for c in parts}),
                        "per_clinic_local": local,
                        "seconds": round(time.perf_counter() - start, 1)})
        results[-1]["central_mean"] = round(float(np.mean(list(results[-1]["central"]
                                                               .values()))), 4)
    return results


def _row(mode: str, per_clinic: dict[str, float]) -> dict:
    return {"mode": mode, "per_clinic": per_clinic,
            "mean": round(float(np.mean(list(per_clinic.values()))), 4)}
