"""``make bench`` for models/: every TFLite format of each architecture, side by side.

For each architecture: train on the grouped train split, export float, dynamic-range,
int8 and pruned+int8, and report file size, gzip size, held-out accuracy, label
agreement with the float model (on the held-out slices, and on every slice: agreement
measures what quantization changes, and 38 slices resolve it only to 2.6 points), and
LiteRT latency as a ratio to the float model measured in the same process (this machine
is shared and noisy: ratios, not absolutes).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from models.core import metrics
from models.training.architectures import ARCHITECTURES
from models.training.build import BuildConfig, train_on_split
from models.training.compress import prune
from models.training.export import gzip_size, to_tflite
from models.core.runtime import TFLiteModel
from models.training.train import predict

LATENCY_RUNS = 50


def latency_ms(lite: TFLiteModel, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median single-image LiteRT latency in ms (after one warm-up run)."""
    lite.run(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        lite.run(image)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_arch(data: str | Path, cfg: BuildConfig) -> list[dict]:
    """One row per format for ``cfg.arch``: sizes, test accuracy, agreement (test and
    all slices), latency."""
    arch, sparsity = cfg.arch, cfg.sparsity
    t = train_on_split(data, arch, cfg.train)
    (x_tr, _), (x_te, y_te) = t.part("train"), t.part("test")
    test = t.role == "test"
    float_all = predict(t.model, t.x) >= 0.5
    models = {kind: to_tflite(t.model, kind, x_tr) for kind in ("float", "dynamic", "int8")}
    prune(t.model, sparsity, x_tr, cfg.train)
    models[f"pruned{int(sparsity * 100)}+int8"] = to_tflite(t.model, "int8", x_tr)
    rows = []
    for kind, blob in models.items():
        lite = TFLiteModel(blob)
        prob_all = lite.predict(t.x)[0]
        prob = prob_all[test]
        rows.append({"arch": arch, "format": kind, "bytes": len(blob), "gzip": gzip_size(blob),
                     "accuracy": metrics.binary_metrics(y_te, prob, 0.5)["accuracy"],
                     "auc": metrics.roc_auc(y_te, prob),
                     "agreement": float(np.mean((prob >= 0.5) == float_all[test])),
                     "agreement_all": float(np.mean((prob_all >= 0.5) == float_all)),
                     "latency_ms": latency_ms(lite, x_te[0])})
    base = rows[0]["latency_ms"]
    for row in rows:
        row["latency_ratio"] = row["latency_ms"] / base
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'arch':<7}{'format':<16}{'bytes':>9}{'gzip':>9}{'acc':>7}{'AUC':>7}"
          f"{'agree':>7}{'all':>7}{'ms':>8}{'x float':>9}")
    for r in rows:
        print(f"{r['arch']:<7}{r['format']:<16}{r['bytes']:>9}{r['gzip']:>9}"
              f"{r['accuracy']:>7.3f}{r['auc']:>7.3f}{r['agreement']:>7.3f}"
              f"{r['agreement_all']:>7.3f}"
              f"{r['latency_ms']:>8.2f}{r['latency_ratio']:>9.2f}")


def run_bench(data: str | Path, seed: int = 0, epochs: int | None = None) -> list[dict]:
    """Bench every architecture's formats (its own recipe and sparsity); print the table."""
    rows = []
    for arch in ARCHITECTURES:
        rows += bench_arch(data, BuildConfig.for_arch(arch, epochs, seed))
    print(f"held-out test split of {data} (grouped by duplicates), threshold 0.5; "
          "'all': agreement with float on every slice, trained on or not; "
          f"latency = median of {LATENCY_RUNS} single-image LiteRT runs; 'x float' is "
          "the ratio to the same architecture's float model in this process")
    print_rows(rows)
    return rows
