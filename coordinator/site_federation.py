"""``python -m coordinator simulate --partition sites``: clinics on real, different
scanners adapt a vendor's model together (issue 23).

Each site of the manifest named by ``clinics`` is one clinic: a real ``device serve``
appliance on loopback (:class:`coordinator.cluster.Cluster`), fed through its own API.
A clinic keeps a third of its patients (at least two) as its test part; the rest arrive
in a random order, ``cases_per_round`` more confirmed cases before every
``rounds_per_arrival``-th round (the appliances train the same cases again in between,
as their own schedule does after each newer version), as a clinic would live it. The
initial model is the vendor's, learned from ``initial_sites`` only (or given with
``initial``); the coordinator's own images, for its calibration and publishing gate,
are those sites' too. ``holdout_site`` never joins: it measures generalisation
(specificity when it has no tumour). With ``transport="flower"`` the rounds go through
Flower (one ``flwr run`` of one round each, the cases arriving between them).

Baselines on the same test parts, with the device's own NumPy trainer from the initial
model: each clinic alone, and all clinics' confirmed cases pooled (centralized), both on
the cases the federation had seen by its last round. With ``adapter_rank`` the vendor's
bundle carries a low-rank adapter on its last block
(:mod:`models.training.adapter_bundle`): clinics train and share it with the head, and
the baselines train the same.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from coordinator.cluster import Cluster, FlowerCluster
from coordinator.simulate import dev_key, feed, initial_model, write_csv
from models.core import metrics
from models.core.bundle import Bundle, read_manifest
from models.core.head_training import TrainConfig
from models.core.preprocess import InputSpec
from models.core.runtime import bundle_model
from models.training.dataset import Sample, load_grouped
from models.training.splits import clinic_split


def _figures(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    m = metrics.binary_metrics(y, prob, threshold)
    return {k: m[k] for k in ("n", "balanced_accuracy", "auc", "sensitivity", "specificity")}


def _open(bundle_dir: Path) -> Bundle:
    """A bundle of the coordinator's state (hashes checked when read, not the signature)."""
    return Bundle(bundle_dir, read_manifest(bundle_dir))


def _summary(per_clinic: dict[str, dict]) -> float:
    return float(np.mean([r["balanced_accuracy"] for r in per_clinic.values()]))


class SiteEvaluation:
    """A bundle version's figures on each clinic's test part and on the held-out site."""

    def __init__(self, x: np.ndarray, y: np.ndarray, tests: dict[str, np.ndarray],
                 holdout: np.ndarray) -> None:
        self.x, self.y, self.tests, self.holdout = x, y, tests, holdout

    def __call__(self, bundle_dir: Path) -> dict:
        bundle = _open(bundle_dir)
        model, threshold = bundle_model(bundle), bundle.threshold
        per_clinic = {c: _figures(self.y[t], model.predict(self.x[t])[0], threshold)
                      for c, t in self.tests.items()}
        report = {"per_clinic": per_clinic, "mean_balanced_accuracy": _summary(per_clinic)}
        if len(self.holdout):
            report["holdout_site"] = _figures(self.y[self.holdout],
                                              model.predict(self.x[self.holdout])[0],
                                              threshold)
        return report

    def trained_heads(self, bundle_dir: Path, seen: dict[str, np.ndarray],
                      cfg: TrainConfig) -> dict:
        """Local-only and centralized models from ``bundle_dir``'s, on the cases each
        clinic confirmed, training what the devices train (the head, with the block's
        adapter if the bundle has one) with their ``cfg``, judged like a version."""
        from models.core import block as B
        from models.core.adapt import adapt
        from models.core.head import predict
        bundle = _open(bundle_dir)
        model, threshold = bundle_model(bundle), bundle.threshold
        head, block = bundle.load_head(), bundle.load_block()
        mode = "adapter" if bundle.adapter_shapes else "head"
        inputs = {c: model.features(self.x[i]) for c, i in seen.items()}
        test_inputs = {c: model.features(self.x[t]) for c, t in self.tests.items()}

        def judge(x: np.ndarray, y: np.ndarray, clinics: Sequence[str]) -> dict:
            trained = adapt(head, block, x, y, mode, cfg)
            return {c: _figures(self.y[self.tests[c]], predict(
                trained.head, B.embed(trained.block, test_inputs[c])), threshold)
                for c in clinics}

        local, skipped = {}, {}
        for clinic, idx in seen.items():
            try:
                local.update(judge(inputs[clinic], self.y[idx], [clinic]))
            except ValueError as exc:  # one class, too few cases: as the device skips
                skipped[clinic] = str(exc)
        pooled = np.concatenate(list(seen.values()))
        central = judge(np.concatenate(list(inputs.values())), self.y[pooled],
                        list(self.tests))
        return {"local_only": {"per_clinic": local, "skipped": skipped,
                               "mean_balanced_accuracy": _summary(local) if local else None},
                "centralized": {"per_clinic": central,
                                "mean_balanced_accuracy": _summary(central)}}

    def personalised(self, bundle_dir: Path, decisions: dict[str, dict],
                     heads: dict[str, dict | None]) -> dict:
        """Each clinic on its test part with the head its appliance chose to serve on
        ``bundle_dir``'s version (its own where ``heads`` has one, else the bundle's)."""
        from models.core.head import predict
        bundle = _open(bundle_dir)
        model, threshold = bundle_model(bundle), bundle.threshold
        per_clinic = {}
        for clinic, t in self.tests.items():
            prob, emb = model.predict(self.x[t])
            own = heads.get(clinic)
            per_clinic[clinic] = _figures(self.y[t], prob if own is None
                                          else predict(own, emb), threshold)
        return {"per_clinic": per_clinic, "mean_balanced_accuracy": _summary(per_clinic),
                "decisions": decisions}


# Where an appliance keeps its own head in its data folder (device.personal.HEAD_FILE in
# its federation folder; the coordinator does not import the appliance's package).
PERSONAL_HEAD = "federation/personal-head.npz"


def _toml(device_settings: Sequence[str]) -> str:
    """``NAME=TOML_VALUE`` lines as lines of a device.toml."""
    return "".join(f"{line.replace('=', ' = ', 1)}\n" for line in device_settings)


def _personalised(cluster: Cluster, evaluation: SiteEvaluation, final: Path,
                  clinics: Sequence[str], device_settings: Sequence[str]) -> dict | None:
    """The clinics with the heads their appliances serve on ``final`` when they
    personalise (:meth:`SiteEvaluation.personalised`); None when they do not."""
    if "personalise=true" not in device_settings:
        return None
    return evaluation.personalised(final, *_served_heads(cluster, clinics,
                                                         _open(final).head_shapes))


def _served_heads(cluster: Cluster, clinics: Sequence[str], shapes: dict
                  ) -> tuple[dict[str, dict], dict[str, dict | None]]:
    """Train each clinic once more on the final version (all its confirmed cases) and
    read which head its appliance then serves: its decision and its own head, if any."""
    from models.core import weights
    decisions, heads = {}, {}
    for k, clinic in enumerate(clinics):
        trained = cluster.call(k, "POST", "/api/v1/federation/train")
        decisions[clinic] = trained.get("personal") or {"served": "global",
                                                        "reason": trained.get("reason")}
        path = cluster.root / f"site-{k}" / PERSONAL_HEAD
        heads[clinic] = weights.load_arrays(path.read_bytes(), shapes) \
            if decisions[clinic]["served"] == "personal" else None
    return decisions, heads


def _check_roles(clinics: Sequence[str], initial_sites: Sequence[str],
                 holdout_site: str | None) -> None:
    """ValueError unless two or more clinics take part, none of them the held-out site or
    one the initial model learned from."""
    overlap = set(clinics) & ({holdout_site} | set(initial_sites))
    if overlap or len(clinics) < 2:
        raise ValueError(f"need two or more clinics, none of them the held-out or an "
                         f"initial site (overlap: {', '.join(sorted(overlap)) or 'none'})")


def _with_adapter(initial: Path, rank: int, out: Path) -> Path:
    """``initial`` (bundle/ and model.weights.h5) with a rank-``rank`` adapter added to
    its bundle's last block."""
    from models.core.signing import load_signing_key
    from models.training.adapter_bundle import add_adapter
    add_adapter(initial / "bundle", out / "bundle", load_signing_key(dev_key()), rank)
    shutil.copyfile(initial / "model.weights.h5", out / "model.weights.h5")
    return out


def _train_config(device_settings: Sequence[str]) -> TrainConfig:
    """The baselines' trainer: the devices' (their ``train_*`` settings), trained once to
    convergence, so with at least the default epochs (a cap on a federated round's
    training, ``train_epochs=20``, would handicap a clinic alone)."""
    chosen = dict(line.split("=", 1) for line in device_settings)
    return TrainConfig(epochs=max(int(chosen.get("train_epochs", TrainConfig.epochs)),
                                  TrainConfig.epochs),
                       prox_mu=float(chosen.get("train_prox_mu", TrainConfig.prox_mu)))


def _clinics(data: Path, initial: Path | None, arch: str, clinics: Sequence[str],
             holdout_site: str | None, seed: int
             ) -> tuple[list[Sample], dict, SiteEvaluation]:
    """The manifest's slices, each clinic's (arriving cases, test part), and the
    evaluation on the test parts and the held-out site."""
    from models.training.architectures import get_architecture
    spec = InputSpec.from_dict(read_manifest(initial / "bundle")["input"]) if initial \
        else get_architecture(arch).input_spec
    x, y, groups, kept = load_grouped(data, spec)
    sites = np.array([s.site for s in kept])
    parts = clinic_split(groups, sites, clinics, seed)
    holdout = np.flatnonzero(sites == holdout_site) if holdout_site else np.array([], int)
    return kept, parts, SiteEvaluation(x, y, {c: t for c, (_, t) in parts.items()}, holdout)


def _arrivals(cluster: Cluster, kept: list[Sample], parts: dict, cases_per_round: int,
              rounds_per_arrival: int):
    """``before_round(r)``: each clinic's next cases, before every
    ``rounds_per_arrival``-th round (the first included)."""
    if rounds_per_arrival < 1:
        raise ValueError(f"rounds_per_arrival must be at least 1, not {rounds_per_arrival}")

    def arrive(r: int) -> None:
        if (r - 1) % rounds_per_arrival:
            return
        batch = (r - 1) // rounds_per_arrival
        for k, (cases, _) in enumerate(parts.values()):
            feed(cluster, k, [kept[i] for i in cases[
                batch * cases_per_round:(batch + 1) * cases_per_round]])
    return arrive


def simulate_sites(data: Path, rounds: int, cases_per_round: int,
                   clinics: Sequence[str], initial_sites: Sequence[str],
                   holdout_site: str | None, method: str = "fedavg", arch: str = "edge",
                   seed: int = 0, epochs: int | None = None, initial: Path | None = None,
                   publish_margin: float = 0.05, sparsity: float = 0.0,
                   device_settings: Sequence[str] = (), workdir: Path | None = None,
                   adapter_rank: int = 0, transport: str = "http",
                   rounds_per_arrival: int = 5) -> dict:
    """Run the federation of clinics; returns the report (module docstring).
    ``device_settings``: ``NAME=TOML_VALUE`` lines for every clinic's device.toml. New
    cases arrive before every ``rounds_per_arrival``-th round (before the first)."""
    _check_roles(clinics, initial_sites, holdout_site)
    kept, parts, evaluation = _clinics(data, initial, arch, clinics, holdout_site, seed)
    vendor: list[Sample] = [s for s in kept if s.site in initial_sites]
    if not vendor:
        raise ValueError(f"the data has no initial site {', '.join(initial_sites)}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        coordinator_csv = write_csv(vendor, root / "coordinator.csv")
        initial = initial or initial_model(coordinator_csv, arch, root / "initial", epochs)
        initial = _with_adapter(initial, adapter_rank, root / "adapter") if adapter_rank \
            else initial
        kind = {"http": Cluster, "flower": FlowerCluster}[transport]
        cluster = kind(root, len(clinics), coordinator_csv, method, initial, publish_margin,
                       sparsity, _toml(device_settings), names=list(clinics))
        bundles = cluster.state / "bundles"
        try:
            rows = cluster.run_rounds(rounds, lambda v: evaluation(bundles / f"v{v}"),
                                      before_round=_arrivals(cluster, kept, parts,
                                                             cases_per_round,
                                                             rounds_per_arrival))
            arrivals = -(-rounds // rounds_per_arrival)
            seen = {c: cases[:arrivals * cases_per_round] for c, (cases, _) in parts.items()}
            final = rows[-1]["model_version"] if rows else 1
            personal = _personalised(cluster, evaluation, bundles / f"v{final}", clinics,
                                     device_settings)
            report = {
                "partition": "sites", "clinics": list(clinics),
                "initial_sites": list(initial_sites), "holdout": holdout_site,
                "method": method, "seed": seed, "arch": arch, "transport": transport,
                "publish_margin": publish_margin, "sparsity": sparsity,
                "device_settings": list(device_settings), "adapter_rank": adapter_rank,
                "cases_per_round": cases_per_round, "rounds_per_arrival": rounds_per_arrival,
                "initial": evaluation(bundles / "v1"),
                "clinic_sizes": {c: {"cases": len(a), "test": len(t)}
                                 for c, (a, t) in parts.items()},
                **evaluation.trained_heads(bundles / "v1", seen,
                                           _train_config(device_settings)), "rounds": rows,
                **({"personalised": personal} if personal else {})}
        finally:
            cluster.stop()
    last = report["rounds"][-1]["global"] if report["rounds"] else report["initial"]
    report.update(federated=last, per_clinic=last["per_clinic"],
                  holdout_site=last.get("holdout_site"))
    return report


def print_sites_table(report: dict) -> None:
    def mean(part: dict | None) -> str:
        value = (part or {}).get("mean_balanced_accuracy")
        return "  —  " if value is None else f"{value:.3f}"

    print(f"clinics {', '.join(report['clinics'])}; initial model from "
          f"{', '.join(report['initial_sites'])}; held out {report['holdout']}; "
          f"{report['cases_per_round']} cases per clinic per round")
    print(f"balanced accuracy, mean over clinics: initial {mean(report['initial'])}, "
          f"local-only {mean(report['local_only'])}, centralized "
          f"{mean(report['centralized'])}, federated {mean(report['federated'])}")
    parts = ["initial", "local_only", "centralized", "federated"] + (
        ["personalised"] if "personalised" in report else [])
    if "personalised" in report:
        print(f"personalised (each clinic's own head where its appliance serves it): "
              f"{mean(report['personalised'])}")
    print(f"{'clinic':<20} {'initial':>8} {'alone':>8} {'pooled':>8} {'federated':>9}"
          + (f" {'own head':>9}" if "personalised" in report else ""))
    for c in report["clinics"]:
        cells = [report[k]["per_clinic"].get(c, {}).get("balanced_accuracy") for k in parts]
        print(f"{c:<20} " + " ".join(f"{'—' if v is None else f'{v:.3f}':>8}"
                                     for v in cells))
    if report.get("holdout_site"):
        print(f"held-out site {report['holdout']}: specificity "
              f"{report['initial'].get('holdout_site', {}).get('specificity', float('nan')):.3f}"
              f" initial, {report['holdout_site']['specificity']:.3f} federated")
    print(f"{'round':>5} {'model':>5} {'mean bal.acc':>12} {'up B/dev':>9} "
          f"{'down B/dev':>10} {'s':>6}  skipped")
    for r in report["rounds"]:
        print(f"{r['round']:>5} {'v%d' % r['model_version']:>5} "
              f"{r['global']['mean_balanced_accuracy']:>12.3f} "
              f"{r['bytes_up_per_device']:>9.0f} {r['bytes_down_per_device']:>10.0f} "
              f"{r['seconds']:>6.1f}  {'; '.join(r['skipped']) or '—'}")
