"""Pure aggregation of head-weight deltas: weighted FedAvg and robust alternatives.

A delta is a mapping ``name -> float array`` (new head minus base head); every delta
in one call must have the same names and shapes. Results are ``dict[str, float32]``.
Nothing here does I/O or keeps state between calls, like Flower's ``aggregate.py``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]
# Robust methods copy one block of coordinates from every delta at a time (float64);
# this caps that block so the extra memory stays bounded whatever n and the head size.
CHUNK_BYTES = 8 * 1024 * 1024


def _norm(delta: Mapping[str, np.ndarray]) -> float:
    with np.errstate(over="ignore"):  # overflow gives inf, which callers refuse
        return math.sqrt(sum(float(np.vdot(a, a)) for a in
                             (np.asarray(v, np.float64).ravel() for v in delta.values())))


def _check_like(delta: Mapping[str, np.ndarray], shapes: Mapping[str, tuple]) -> None:
    if set(delta) != set(shapes):
        raise ValueError(f"delta names {sorted(delta)} differ from {sorted(shapes)}")
    for name, shape in shapes.items():
        if np.shape(delta[name]) != shape:
            raise ValueError(f"{name}: shape {np.shape(delta[name])}, expected {shape}")


class StreamingMean:
    """Running weighted mean of deltas, holding only a float64 sum and one scratch buffer.

    ``mean = sum_i w_i * delta_i / sum_i w_i``; memory is ``params * 8`` bytes for the
    sum plus ``params * 8`` for one scratch buffer, whatever the number of updates
    (plus the float32 result). ``result`` may be called again after more ``add`` calls.
    """

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] | None = None
        self._scratch: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Accumulate ``weight * delta``; ``weight`` must be finite and > 0."""
        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and > 0, got {weight}")
        if self._sum is None:
            self._sum = {k: np.zeros(np.shape(v), np.float64) for k, v in delta.items()}
            self._scratch = {k: np.empty_like(v) for k, v in self._sum.items()}
        _check_like(delta, {k: v.shape for k, v in self._sum.items()})
        for name, acc in self._sum.items():
            # multiply into scratch, then add: no temporaries allocated per update
            np.multiply(delta[name], weight, out=self._scratch[name], dtype=np.float64)
            acc += self._scratch[name]
        self.total_weight += weight
        self.count += 1

    def result(self) -> Arrays:
        """The weighted mean as float32 arrays; ValueError if nothing was added."""
        if self._sum is None:
            raise ValueError("nothing to aggregate: no delta was added")
        out = {}
        for name, acc in self._sum.items():  # divide into scratch: no float64 temporary
            out[name] = np.divide(acc, self.total_weight, out=self._scratch[name]).astype(
                np.float32)
        return out


def weighted_fedavg(deltas: Iterable[Mapping[str, np.ndarray]],
                    weights: Iterable[float]) -> Arrays:
    """Weighted FedAvg of deltas (McMahan et al. 2017).

    .. math:: \\bar\\Delta = \\sum_i n_i \\Delta_i / \\sum_i n_i

    Parameters
    ----------
    deltas : iterable of mapping str -> ndarray
        Head deltas with identical names and shapes; may be a generator, consumed once.
    weights : iterable of float
        Example count ``n_i`` of each delta (> 0), same length as ``deltas``.

    Returns
    -------
    dict of str to numpy.ndarray
        The mean delta (float32). Memory is that of :class:`StreamingMean`.
    """
    acc = StreamingMean()
    for delta, weight in zip(deltas, weights, strict=True):
        acc.add(delta, weight)
    return acc.result()


def _per_chunk(deltas: Sequence[Mapping[str, np.ndarray]],
               reduce: Callable[[np.ndarray], np.ndarray]) -> Arrays:
    """Apply ``reduce`` (over axis 0 of an ``n x chunk`` float64 block) per tensor."""
    deltas = list(deltas)
    if not deltas:
        raise ValueError("nothing to aggregate: no deltas")
    shapes = {k: np.shape(v) for k, v in deltas[0].items()}
    for delta in deltas[1:]:
        _check_like(delta, shapes)
    n = len(deltas)
    step = max(1, CHUNK_BYTES // (8 * n))
    out: Arrays = {}
    for name, shape in shapes.items():
        flat = [np.asarray(d[name]).reshape(-1) for d in deltas]  # views, no copies
        res = np.empty(flat[0].size, np.float32)
        for lo in range(0, res.size, step):
            block = np.stack([f[lo:lo + step] for f in flat], dtype=np.float64)
            res[lo:lo + step] = reduce(block)
        out[name] = res.reshape(shape)
    return out


def coordinate_median(deltas: Sequence[Mapping[str, np.ndarray]]) -> Arrays:
    """Coordinate-wise median (Yin et al. 2018): ``out[j] = median_i delta_i[j]``.

    Unweighted: example counts are client claims, so they are not trusted here. Needs
    all deltas in memory (the caller's ``n * params * 4`` bytes for float32); the
    reduction itself adds about ``2 * CHUNK_BYTES`` (a float64 block of coordinates and
    NumPy's working copy) plus the float32 result, whatever ``n`` and the head size.
    """
    return _per_chunk(deltas, lambda b: np.median(b, axis=0, overwrite_input=True))


def trim_count(n: int, trim: float) -> int:
    """``k = floor(trim * n)``, tolerant of float error (0.29 * 100 gives 29, not 28)."""
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    k = math.floor(trim * n + 1e-9)
    if n < 1:
        raise ValueError("nothing to aggregate: no deltas")
    if n <= 2 * k:
        raise ValueError(f"trimmed mean needs n > 2k; n={n}, k={k} (trim={trim})")
    return k


def trimmed_mean(deltas: Sequence[Mapping[str, np.ndarray]], trim: float = 0.2) -> Arrays:
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    .. math:: out_j = \\frac{1}{n - 2k} \\sum_{r=k+1}^{n-k} x_{(r),j},
              \\quad k = \\lfloor trim \\cdot n \\rfloor

    where :math:`x_{(r),j}` is the r-th smallest of the n values at coordinate j.
    Unweighted, and the memory is as for :func:`coordinate_median`.

    Raises
    ------
    ValueError
        If ``trim`` is outside [0, 0.5) or ``n <= 2k``.
    """
    deltas = list(deltas)
    n = len(deltas)
    k = trim_count(n, trim)

    def reduce(block: np.ndarray) -> np.ndarray:
        if k:
            block.partition([k, n - k - 1], axis=0)  # in place: middle rows in between
        return block[k:n - k].mean(axis=0)
    return _per_chunk(deltas, reduce)


def clip_by_norm(delta: Mapping[str, np.ndarray], max_norm: float) -> tuple[Arrays, float]:
    """Scale the whole delta so its global L2 norm is at most ``max_norm``.

    .. math:: \\Delta' = \\Delta \\cdot \\min(1, C / \\lVert\\Delta\\rVert_2)

    Returns
    -------
    (dict, float)
        The clipped float32 delta (a copy) and the original norm. The clipped norm may
        exceed ``C`` by float32 rounding (relative 1e-7).
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm}")
    norm = _norm(delta)
    if not math.isfinite(norm):
        raise ValueError("delta holds NaN/Inf or overflows: validate updates first")
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: (np.asarray(v, np.float64) * scale).astype(np.float32)
            for k, v in delta.items()}, norm


def clipped_fedavg(deltas: Iterable[Mapping[str, np.ndarray]], weights: Iterable[float],
                   max_norm: float) -> Arrays:
    """FedAvg of norm-clipped deltas: ``sum_i n_i clip(Delta_i, C) / sum_i n_i``.

    Streams like :func:`weighted_fedavg`. Clipping bounds each update's norm, but not
    its weight: an attacker claiming many examples keeps a large share, so cap example
    counts (see ``validate_update(max_examples=...)``) or use equal weights.
    """
    return weighted_fedavg((clip_by_norm(d, max_norm)[0] for d in deltas), weights)


METHODS = ("fedavg", "median", "trimmed_mean", "clipped_fedavg")


def aggregate(method: str, deltas: Sequence[Mapping[str, np.ndarray]],
              weights: Sequence[float], **params: float) -> Arrays:
    """Dispatch to an aggregator by name (one of :data:`METHODS`).

    ``params`` go to the method (``trim`` for trimmed_mean, ``max_norm`` for
    clipped_fedavg). ``median`` and ``trimmed_mean`` ignore ``weights``.
    """
    if method == "fedavg":
        return weighted_fedavg(deltas, weights, **params)
    if method == "median":
        return coordinate_median(deltas, **params)
    if method == "trimmed_mean":
        return trimmed_mean(deltas, **params)
    if method == "clipped_fedavg":
        return clipped_fedavg(deltas, weights, **params)
    raise ValueError(f"unknown aggregation method {method!r}; choose one of {list(METHODS)}")
