"""``python -m coordinator simulate``: a real federation on one machine.

A coordinator and N appliance processes on loopback, each with its own data folder and
token. Each site's images go through the appliance's own JSON API (upload, then
confirm the label). With ``--transport http`` rounds are driven through the
appliances' federation API (train + sync), exactly what the button or the schedule
would do; with ``--transport flower`` a real ``flower-superlink``, one
``flower-supernode`` per site and ``flwr run`` carry them (:class:`FlowerCluster`).
The global model is judged on a held-out test partition that no site and not the
coordinator trains on. Baselines on the same partition: centralized (one head trained
on all sites' data) and local-only (each site's head alone), both with the same NumPy
head trainer.
"""
from __future__ import annotations

import csv
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.cluster import Cluster, FlowerCluster
from models.core import metrics
from models.core.bundle import Bundle, read_manifest
from models.training.dataset import Sample, load_images, load_samples
from models.core.preprocess import InputSpec
from models.core.runtime import bundle_model
from models.training.splits import (duplicate_groups, paper_partition, parse_partition,
                                    site_partition, train_val_test_split)

logger = logging.getLogger(__name__)


@dataclass
class Partition:
    """Who holds which images: the coordinator, each site, and the held-out test set."""

    coordinator: list[Sample]
    sites: list[list[Sample]]
    test: list[Sample]


def partition(samples: list[Sample], spec: str, n_sites: int, seed: int) -> Partition:
    """Grouped partitions: ``paper`` (main 60% at the coordinator, Pi1, Pi2; each part's
    test share is the held-out test), ``iid`` or ``dirichlet:ALPHA`` (test 15% and the
    coordinator's 30% carved first by duplicate group, the rest split over the sites)."""
    y = np.array([s.label for s in samples])
    groups = duplicate_groups(samples)
    scheme, alpha = parse_partition(spec)
    if scheme == "paper":
        site, role = paper_partition(y, groups, seed=seed)
        pick = lambda cond: [s for s, c in zip(samples, cond) if c]  # noqa: E731
        return Partition(pick((site == "main") & (role != "test")),
                         [pick((site == p) & (role != "test")) for p in ("pi1", "pi2")],
                         pick(role == "test"))
    # The backbone is frozen on devices, so it is only as good as the coordinator's share.
    role = train_val_test_split(y, groups, fractions=(0.55, 0.30, 0.15), seed=seed)
    rest = np.flatnonzero(role == "train")
    owner = site_partition(y[rest], groups[rest], n_sites, scheme=scheme,
                           alpha=alpha or 0.5, seed=seed)
    return Partition([s for s, r in zip(samples, role) if r == "val"],
                     [[samples[i] for i, o in zip(rest, owner) if o == k]
                      for k in range(n_sites)],
                     [s for s, r in zip(samples, role) if r == "test"])


def write_csv(samples: list[Sample], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "labels"])
        w.writerows([[str(s.path.resolve()), s.label] for s in samples])
    return path


def dev_key() -> Path:
    """The development signing key: the simulations' initial bundles are signed with it
    (the coordinator re-signs them with its own)."""
    return Path(__file__).resolve().parents[1] / "models" / "dev_keys" / "dev_signing.key"


def feed(cluster: Cluster, k: int, samples: list[Sample]) -> None:
    """Upload each slice through the appliance's API and confirm its true label."""
    for s in samples:
        case = cluster.call(k, "POST", "/api/v1/predictions",
                            files={"image": ("slice", s.path.read_bytes())})
        cluster.call(k, "POST", f"/api/v1/cases/{case['case_id']}/label",
                     json={"label": int(s.label)})


def _model(bundle_dir: Path):
    """The bundle's model as a device runs it (hashes checked, not the signature)."""
    return bundle_model(Bundle(bundle_dir, read_manifest(bundle_dir)))


def evaluate_bundle(bundle_dir: Path, x: np.ndarray, y: np.ndarray) -> dict:
    prob, _ = _model(bundle_dir).predict(x)
    return metrics.binary_metrics(y, prob, read_manifest(bundle_dir)["threshold"])


def embed(bundle_dir: Path, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    spec = InputSpec.from_dict(read_manifest(bundle_dir)["input"])
    x, y, _ = load_images(samples, spec)
    return _model(bundle_dir).predict(x)[1], y


def baselines(bundle_dir: Path, part: Partition) -> dict:
    """Centralized and local-only heads: the same trainer, the same test partition, and
    the bundle's threshold, which publishing keeps."""
    from models.core.head import predict
    from models.core.head_training import TrainConfig, train_head
    from models.core.weights import load_head
    head = load_head(bundle_dir / "head.npz")
    threshold = read_manifest(bundle_dir)["threshold"]
    x_test, y_test = embed(bundle_dir, part.test)
    sites = [embed(bundle_dir, s) for s in part.sites]

    def accuracy(xs: np.ndarray, ys: np.ndarray) -> float:
        trained = train_head(head, xs, ys, TrainConfig()).head
        return metrics.binary_metrics(y_test, predict(trained, x_test), threshold)["accuracy"]

    local = []
    for xs, ys in sites:
        try:
            local.append(accuracy(xs, ys))
        except ValueError as exc:  # a site with one class cannot train alone
            logger.info("local-only baseline skipped a site: %s", exc)
    return {"centralized_accuracy": accuracy(np.concatenate([x for x, _ in sites]),
                                             np.concatenate([y for _, y in sites])),
            "local_only_accuracy": float(np.mean(local)) if local else None,
            "local_only_per_site": local}


def initial_model(coordinator_csv: Path, arch: str, out: Path, epochs: int | None) -> Path:
    """The coordinator trains the initial model on its own share only (as in the paper),
    so no test or site image has been seen by the backbone the devices freeze."""
    from models.training.build import BuildConfig, build_bundle
    from models.core.signing import load_signing_key
    key = load_signing_key(dev_key())  # the coordinator re-signs it
    cfg = BuildConfig.for_arch(arch, epochs)
    build_bundle(coordinator_csv, out / "bundle", key, cfg,
                 float_out=out / "model.weights.h5")
    return out


def simulate(data: Path, sites: int, rounds: int, spec: str = "iid", method: str = "fedavg",
             arch: str = "edge", seed: int = 0, epochs: int | None = None,
             workdir: Path | None = None, transport: str = "http",
             initial: Path | None = None, publish_margin: float = 0.05) -> dict:
    """Run the federation; returns the report (see the module docstring).

    ``initial``: a folder with ``bundle/`` and ``model.weights.h5`` to start from
    instead of training the initial model on the coordinator's share (it must not have
    seen the test or site images). ``publish_margin``: the coordinator's publishing gate
    (1.0 publishes every version that runs).
    """
    part = partition(load_samples(data), spec, sites, seed)
    n = len(part.sites)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        coordinator_csv = write_csv(part.coordinator, root / "coordinator.csv")
        initial = initial or initial_model(coordinator_csv, arch, root / "initial", epochs)
        kind = {"http": Cluster, "flower": FlowerCluster}[transport]
        cluster = kind(root, n, coordinator_csv, method, initial, publish_margin)
        try:
            for k, site in enumerate(part.sites):
                feed(cluster, k, site)
            bundles = cluster.state / "bundles"
            spec_in = InputSpec.from_dict(read_manifest(bundles / "v1")["input"])
            x_test, y_test, _ = load_images(part.test, spec_in)
            report = {"partition": spec, "sites": n, "method": method, "seed": seed,
                      "arch": arch, "transport": transport,
                      "site_sizes": [len(s) for s in part.sites],
                      "coordinator_images": len(part.coordinator), "test_images": len(y_test),
                      "initial": evaluate_bundle(bundles / "v1", x_test, y_test),
                      **baselines(bundles / "v1", part)}
            report["rounds"] = cluster.run_rounds(rounds, lambda version: evaluate_bundle(
                bundles / f"v{version}", x_test, y_test))
            # What each site should serve: the last version it installed (it may refuse).
            expected = [max([1] + [r["model_version"] for r in report["rounds"]
                                   if r["installed"][k] == "installed"]) for k in range(n)]
            report["served_versions"] = cluster.served_versions(expected)
        finally:
            cluster.stop()
    return report


def print_table(report: dict) -> None:
    print(f"partition {report['partition']}, {report['sites']} sites {report['site_sizes']}, "
          f"coordinator {report['coordinator_images']} images, held-out test "
          f"{report['test_images']}, method {report['method']}")
    print(f"baselines on the test partition: centralized {report['centralized_accuracy']:.3f}"
          f", local-only mean {report['local_only_accuracy'] or float('nan'):.3f}, "
          f"initial model {report['initial']['accuracy']:.3f} (AUC "
          f"{report['initial']['auc']:.3f})")
    print(f"{'round':>5} {'model':>5} {'acc':>6} {'AUC':>6} {'up B/dev':>9} {'down B/dev':>10} "
          f"{'s':>6}  local acc before->after")
    for r in report["rounds"]:
        local = ", ".join(f"{x['local_accuracy_before']:.2f}->{x['local_accuracy_after']:.2f}"
                          for x in r["local"] if x.get("local_n"))
        print(f"{r['round']:>5} {'v%d' % r['model_version']:>5} {r['global_accuracy']:>6.3f} "
              f"{r['global_auc']:>6.3f} {r['bytes_up_per_device']:>9.0f} "
              f"{r['bytes_down_per_device']:>10.0f} {r['seconds']:>6.1f}  {local}")


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
