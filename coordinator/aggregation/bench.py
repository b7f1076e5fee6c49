"""Time and memory of the aggregators at the paper's head size (not a test).

``python -m coordinator.aggregation.bench [n_stream] [n_robust]`` prints, for
StreamingMean over ``n_stream`` updates (default 1,000) and for median / trimmed mean
over ``n_robust`` updates (default 50), the seconds taken and the peak memory the
aggregation itself allocated (tracemalloc; NumPy reports its buffers to it).
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from typing import Callable, Iterator

import numpy as np

from .aggregate import StreamingMean, coordinate_median, trimmed_mean

PAPER_HEAD_PARAMS = 692_289  # Dense(21632 -> 32) + Dense(32 -> 1)


def _shapes(params: int) -> dict[str, tuple[int, ...]]:
    """Paper-like head shapes with ``params`` parameters in total (hidden = 32)."""
    embed = max(1, (params - 32 - 32 - 1) // 32)
    rest = params - 32 - 32 - 1 - embed * 32  # any remainder goes into the output bias
    return {"hidden/kernel": (embed, 32), "hidden/bias": (32 + rest,),
            "output/kernel": (32, 1), "output/bias": (1,)}


def _pool(k: int, params: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape, dtype=np.float32)
             for name, shape in _shapes(params).items()} for _ in range(k)]


def _measure(fn: Callable[[], object]) -> tuple[float, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def bench_streaming(n: int = 1000, params: int = PAPER_HEAD_PARAMS) -> dict[str, float]:
    """StreamingMean over ``n`` updates, drawn in turn from a pool of 4 pre-made ones.

    Cycling a pool keeps data generation out of the timing; the aggregation cannot
    tell, since it holds one update at a time anyway.
    """
    pool = _pool(4, params)

    def stream() -> Iterator[dict[str, np.ndarray]]:
        return (pool[i % len(pool)] for i in range(n))

    def run() -> None:
        acc = StreamingMean()
        for i, delta in enumerate(stream()):
            acc.add(delta, 1 + i % 7)
        acc.result()
    seconds, peak = _measure(run)
    return {"seconds": seconds, "peak_bytes_estimate": peak, "update_bytes": params * 4}


def bench_robust(n: int = 50, params: int = PAPER_HEAD_PARAMS) -> dict[str, dict]:
    """Median and trimmed mean (trim 0.2) over ``n`` distinct updates held in memory."""
    deltas = _pool(n, params, seed=1)
    out = {}
    for name, fn in (("median", lambda: coordinate_median(deltas)),
                     ("trimmed_mean", lambda: trimmed_mean(deltas, 0.2))):
        seconds, peak = _measure(fn)
        out[name] = {"seconds": seconds, "peak_bytes_estimate": peak,
                     "inputs_bytes": n * params * 4}
    return out


def main(argv: list[str]) -> None:
    n_stream = int(argv[0]) if argv else 1000
    n_robust = int(argv[1]) if len(argv) > 1 else 50
    mib = 1024 * 1024
    s = bench_streaming(n_stream)
    print(f"StreamingMean: {n_stream} updates x {PAPER_HEAD_PARAMS:,} params: "
          f"{s['seconds']:.2f} s, peak {s['peak_bytes_estimate'] / mib:.1f} MiB "
          f"(one update is {s['update_bytes'] / mib:.1f} MiB)")
    for name, r in bench_robust(n_robust).items():
        print(f"{name}: {n_robust} updates: {r['seconds']:.2f} s, extra peak "
              f"{r['peak_bytes_estimate'] / mib:.1f} MiB, plus the inputs held in memory "
              f"{r['inputs_bytes'] / mib:.1f} MiB (n x params x 4 bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
