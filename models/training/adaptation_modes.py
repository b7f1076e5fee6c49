"""Which part of the model should clinics adapt together? An in-process federation of
real sites (:mod:`models.core.adapt`'s modes, FedAvg weighted by cases), against each
clinic alone and all clinics' cases pooled, on the same held-out patients.

Each clinic (a site of the manifest) keeps a third of its patients (at least two) as its
test part; the rest arrive in a random order, ``cases_per_round`` more confirmed cases
per arrival. The backbone up to the last block runs once, in TensorFlow; everything a
device would train runs in NumPy. Reported: balanced accuracy at the model's threshold
per clinic, for the initial model, federated, local-only and centralized (the last two
on all the cases the federation saw by its last round, with the full trainer); and the
specificity of the initial and federated models on a site that never joins
(``holdout``: the MS site, tumour-free slices only), a measure of generalisation.

:class:`Replay` can replay what the appliances do instead of an idealised federation:
``gate_share`` of each clinic's cases (drawn at random, as the devices' image hashes
draw them for slices uploaded one by one) held out for its local gate and never trained
on, and ``rounds_per_arrival`` federated rounds of at most ``local_epochs`` epochs each
between two arrivals, and ``sparsity``: the averaged head's hidden kernel pruned by
magnitude after each round, as the coordinator prunes each version it publishes. Many
seeds run on one load of the data: the appliance simulation (``coordinator simulate
--partition sites``) is the real measurement, this one is cheap enough for 30 seeds.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
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
HOLDOUT = "site_ljubljana_ms"
SHORT = TrainConfig(epochs=60, learning_rate=1e-3, patience=10, val_fraction=0.2)


@dataclass(frozen=True)
class Replay:
    """How the federation runs: the trainer (the appliances': ``TrainConfig()`` with
    ``local_epochs=20`` and ``rounds_per_arrival=5``), the share of cases a device holds
    out for its gate, rounds between two arrivals, and the share of the averaged head's
    hidden kernel pruned after each round."""
    cfg: TrainConfig = field(default_factory=lambda: SHORT)
    gate_share: float = 0.0
    rounds_per_arrival: int = 1
    local_epochs: int | None = None  # a federated round's cap (default: cfg.epochs)
    sparsity: float = 0.0  # of the averaged head's hidden kernel, each round

    def prune(self, head: H.Head) -> H.Head:
        """``head`` with its hidden kernel pruned as a published version's is."""
        from models.training.compress import prune_head
        return prune_head(head, self.sparsity)

    def local(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.cfg, seed=seed,
                                   epochs=self.local_epochs or self.cfg.epochs)


def _federate(mode: str, head0: H.Head, block0: B.Block, x: np.ndarray, y: np.ndarray,
              parts: dict, gates: dict, k: int, arrivals: int, replay: Replay, seed: int
              ) -> tuple[H.Head, dict, dict]:
    """FedAvg of the head and the mode's shared block arrays; local arrays stay. Returns
    the head, the shared arrays and each clinic's block."""
    head, shared, cfg = dict(head0), {}, replay.local(seed)
    local = {c: dict(block0) for c in parts}
    for r in range(1, arrivals * replay.rounds_per_arrival + 1):
        arrived = k * ((r - 1) // replay.rounds_per_arrival + 1)
        updates = []
        for clinic, (cases, _) in parts.items():
            confirmed = cases[:arrived][~gates[clinic][:arrived]]
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
            head = replay.prune({n: sum(wi * u[1][n] for wi, u in zip(w, updates))
                                 for n in head0})
            shared = {n: sum(wi * u[2][n] for wi, u in zip(w, updates))
                      for n in shared_names(mode)}
    return head, shared, {c: {**local[c], **shared} for c in parts}


def compare(data: str | Path | DataSource, weights: str | Path, threshold: float,
            clinics: Sequence[str] = CLINICS, seeds: Sequence[int] = (0,),
            cases_per_round: int = 10, rounds: int = 6, modes: Sequence[str] = MODES,
            replay: Replay = Replay(), holdout: str | None = HOLDOUT) -> list[dict]:
    """Per seed, one result for the initial model and one per mode: balanced accuracies
    per clinic and their mean, and the specificity on ``holdout`` (None without it)."""
    if holdout in clinics:
        raise ValueError(f"{holdout} is a clinic: the held-out site must never join")
    import keras

    from models.training.architectures import ARCHITECTURES, build_model, get_block, \
        get_head, with_embedding
    x, y, groups, samples = load_grouped(data, ARCHITECTURES["edge"].input_spec)
    sites = np.array([s.site for s in samples])
    model = build_model("edge")
    model.load_weights(weights)
    to_block = keras.Model(model.inputs, with_embedding(model).outputs[2])
    unseen = np.flatnonzero((sites == holdout) & (y == 0))  # its tumour-free slices
    chosen = np.isin(sites, [*clinics, holdout])
    inputs = np.zeros((len(y), *to_block.output.shape[1:]), np.float32)
    inputs[chosen] = to_block.predict(x[chosen], batch_size=64, verbose=0)
    head0, block0 = get_head(model), get_block(model)
    results = []
    for seed in seeds:
        parts = clinic_split(groups, sites, clinics, seed)
        rng = np.random.default_rng([seed, 23])
        gates = {c: rng.random(len(cases)) < replay.gate_share
                 for c, (cases, _) in parts.items()}

        def scores(head: H.Head, blocks: dict) -> dict[str, float]:
            return {c: round(metrics.binary_metrics(
                y[test], H.predict(head, B.embed(blocks[c], inputs[test])), threshold)
                ["balanced_accuracy"], 4) for c, (_, test) in parts.items()}

        def specificity(head: H.Head, block: B.Block) -> float | None:
            """On the site that never joins, with the bundle's own block arrays where a
            clinic keeps its own."""
            if not unseen.size:
                return None
            prob = H.predict(head, B.embed(block, inputs[unseen]))
            return round(float(np.mean(prob < threshold)), 4)

        results.append({**_row("initial", scores(head0, {c: block0 for c in parts})),
                        "seed": seed, "holdout_specificity": specificity(head0, block0)})
        for mode in modes:
            start = time.perf_counter()
            head, shared, blocks = _federate(mode, head0, block0, inputs, y, parts, gates,
                                             cases_per_round, rounds, replay, seed)
            results.append({**_row(mode, scores(head, blocks)), "seed": seed,
                            "holdout_specificity": specificity(head, {**block0, **shared}),
                            **_baselines(
                mode, head0, block0, inputs, y, parts, cases_per_round * rounds,
                dataclasses.replace(replay.cfg, seed=seed), scores),
                "seconds": round(time.perf_counter() - start, 1)})
    return results


def _baselines(mode: str, head0: H.Head, block0: B.Block, inputs: np.ndarray,
               y: np.ndarray, parts: dict, seen: int, cfg: TrainConfig, scores) -> dict:
    """Each clinic alone and all clinics pooled, on every case seen (no gate held out)."""
    confirmed = {c: cases[:seen] for c, (cases, _) in parts.items()}
    local = {}
    for clinic, idx in confirmed.items():
        result = adapt(head0, block0, inputs[idx], y[idx], mode, cfg)
        local[clinic] = scores(result.head, {c: result.block for c in parts})[clinic]
    pooled = np.concatenate(list(confirmed.values()))
    central = adapt(head0, block0, inputs[pooled], y[pooled], mode, cfg)
    central_scores = scores(central.head, {c: central.block for c in parts})
    return {"local": _row(mode, local)["mean"], "per_clinic_local": local,
            "central": central_scores, "central_mean": _row(mode, central_scores)["mean"]}


def summary(results: list[dict]) -> list[dict]:
    """Per mode over the seeds: mean federated, alone, pooled and initial; federated
    minus alone, minus pooled, minus initial; the worst clinic's federated minus alone;
    the held-out site's specificity, initial and federated."""
    initial = {r["seed"]: r["mean"] for r in results if r["mode"] == "initial"}
    specificity = {r["seed"]: r.get("holdout_specificity") for r in results
                   if r["mode"] == "initial"}
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in results if r["mode"] != "initial"):
        runs = [r for r in results if r["mode"] == mode]

        def mean(values) -> float:
            return round(float(np.mean(list(values))), 4)
        worst = [min(r["per_clinic"][c] - r["per_clinic_local"][c] for c in r["per_clinic"])
                 for r in runs]
        rows.append({"mode": mode, "seeds": len(runs),
                     "initial": mean(initial[r["seed"]] for r in runs),
                     "federated": mean(r["mean"] for r in runs),
                     "alone": mean(r["local"] for r in runs),
                     "pooled": mean(r["central_mean"] for r in runs),
                     "federated_minus_alone": mean(r["mean"] - r["local"] for r in runs),
                     "federated_minus_pooled": mean(r["mean"] - r["central_mean"]
                                                    for r in runs),
                     "federated_minus_initial": mean(r["mean"] - initial[r["seed"]]
                                                     for r in runs),
                     "pooled_minus_alone": mean(r["central_mean"] - r["local"] for r in runs),
                     "worst_clinic": mean(worst),
                     "worst_clinic_within_2": round(float(np.mean(np.array(worst) >= -0.02)),
                                                    3),
                     **_holdout_means(runs, specificity)})
    return rows


def _holdout_means(runs: list[dict], initial: dict[int, float | None]) -> dict:
    """Mean specificity on the held-out site over ``runs``, initial (``initial``: per
    seed) and federated; None where a run has none."""
    pairs = [(initial[r["seed"]], r.get("holdout_specificity")) for r in runs]
    return {f"holdout_specificity_{k}": None if None in v else round(float(np.mean(v)), 4)
            for k, v in zip(("initial", "federated"), zip(*pairs))}


def _row(mode: str, per_clinic: dict[str, float]) -> dict:
    return {"mode": mode, "per_clinic": per_clinic,
            "mean": round(float(np.mean(list(per_clinic.values()))), 4)}
