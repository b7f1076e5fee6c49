"""The hand-written RDP accountant the coordinator used before Google's dp-accounting
(issue 26), frozen: the tests check that the library computes the same Renyi DP curve
(Mironov 2017; Mironov, Talwar and Zhang 2019 for Poisson subsampling at integer orders)
and, by the same conversion, the same epsilon."""
from __future__ import annotations

import math

import numpy as np

ORDERS = np.concatenate([np.linspace(1.25, 10.0, 176), np.arange(11.0, 65.0),
                         [80.0, 96.0, 128.0, 192.0, 256.0]])


def _log_a_int(alpha: int, q: float, sigma: float) -> float:
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = np.array([math.lgamma(alpha + 1) - math.lgamma(i + 1)
                          - math.lgamma(alpha - i + 1) for i in range(alpha + 1)])
    terms = log_binom + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (
        2 * sigma ** 2)
    top = terms.max()
    return float(top + math.log(np.exp(terms - top).sum()))


def rdp_per_round(noise_multiplier: float, sampling_rate: float = 1.0) -> np.ndarray:
    """Renyi DP of one round at each of :data:`ORDERS` (inf where not covered)."""
    if sampling_rate == 1:
        return ORDERS / (2 * noise_multiplier ** 2)
    return np.array([_log_a_int(round(a), sampling_rate, noise_multiplier) / (a - 1)
                     if abs(a - round(a)) < 1e-9 else np.inf for a in ORDERS])


def epsilon_for(noise_multiplier: float, rounds: int, delta: float,
                sampling_rate: float = 1.0) -> float:
    """``min_a T * rdp(a) + log(1/delta) / (a - 1)`` (the classic conversion)."""
    rdp = rounds * rdp_per_round(noise_multiplier, sampling_rate)
    return float(np.min(rdp + math.log(1 / delta) / (ORDERS - 1)))
