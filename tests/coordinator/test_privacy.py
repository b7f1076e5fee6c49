"""Central differential privacy: the Gaussian mechanism, DP-FedAvg and the privacy
accounting (RDP, subsampling, the ledger)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.aggregation import PrivacyLedger, dp_fedavg, epsilon_for, gaussian_mechanism
from coordinator.aggregation.privacy import ORDERS
from tests.coordinator import privacy_reference as reference
from tests.coordinator.arrays import upd


def test_gaussian_mechanism_adds_noise_of_std_z_c_over_n():
    mean = {"w": np.full(100_000, 0.25, np.float32), "b": np.zeros(100_000, np.float32)}
    noisy = gaussian_mechanism(mean, clip_norm=2.0, noise_multiplier=1.5, n_clients=10,
                               rng=np.random.default_rng(3))
    noise = np.concatenate([noisy["w"] - 0.25, noisy["b"]]).astype(np.float64)
    # std 1.5 * 2 / 10 = 0.3; with 200k samples the estimate's relative error is ~0.2%
    assert noise.std() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean()) < 0.005
    assert noisy["w"].dtype == np.float32 and mean["w"][0] == np.float32(0.25)


def test_gaussian_mechanism_is_reproducible_with_a_seeded_rng():
    mean = upd([1, 2], [3])
    first = gaussian_mechanism(mean, 1.0, 1.0, 5, np.random.default_rng(9))
    second = gaussian_mechanism(mean, 1.0, 1.0, 5, np.random.default_rng(9))
    assert all(np.array_equal(first[k], second[k]) for k in mean)


@pytest.mark.parametrize("clip, z, n", [(0.0, 1.0, 5), (1.0, 0.0, 5), (1.0, 1.0, 0)])
def test_gaussian_mechanism_refuses_bad_parameters(clip, z, n):
    with pytest.raises(ValueError):
        gaussian_mechanism(upd([1], [1]), clip, z, n, np.random.default_rng(0))


def test_dp_fedavg_is_the_equal_weight_clipped_mean_plus_noise():
    deltas = [{"w": np.full(50_000, 3.0, np.float32)}, {"w": np.full(50_000, 0.001, np.float32)}]
    clip = float(np.sqrt(50_000))  # first clipped to all-ones, second unchanged
    noisy = dp_fedavg(deltas, clip, noise_multiplier=0.01, rng=np.random.default_rng(4))
    noise = noisy["w"].astype(np.float64) - (1.0 + 0.001) / 2
    assert noise.std() == pytest.approx(0.01 * clip / 2, rel=0.03)
    assert abs(noise.mean()) < 0.01


def test_epsilon_is_below_the_closed_form_of_the_classic_conversion():
    # eps(alpha) = a*alpha + L/(alpha-1), a = T/(2 sigma^2), L = log(1/delta); its minimum
    # over alpha > 1 is at alpha* = 1 + sqrt(L/a), giving a + 2 sqrt(a L). dp-accounting
    # converts RDP by a tighter bound, so its epsilon is lower, by about a tenth here.
    a, big_l = 1 / 2, math.log(1e5)
    closed = a + 2 * math.sqrt(a * big_l)   # = 5.2985 for sigma=1, T=1, delta=1e-5
    eps = epsilon_for(1.0, rounds=1, delta=1e-5)
    assert closed == pytest.approx(5.2985, abs=1e-4)
    assert 0.85 * closed <= eps <= closed
    assert reference.epsilon_for(1.0, 1, 1e-5) == pytest.approx(closed, abs=1e-3)


def test_epsilon_depends_on_rounds_over_sigma_squared():
    # T / sigma^2 is all that matters without subsampling: (sigma=2, T=4) == (1, 1)
    assert epsilon_for(2.0, 4, 1e-5) == pytest.approx(epsilon_for(1.0, 1, 1e-5), rel=1e-9)


def test_epsilon_falls_with_more_noise_and_grows_with_rounds():
    by_sigma = [epsilon_for(s, 10, 1e-5) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    by_rounds = [epsilon_for(1.0, t, 1e-5) for t in (1, 10, 100, 1000)]
    assert all(x > y for x, y in zip(by_sigma, by_sigma[1:]))
    assert all(x < y for x, y in zip(by_rounds, by_rounds[1:]))
    assert epsilon_for(1.0, 0, 1e-5) == 0.0


def test_the_frozen_subsampled_rdp_matches_numerical_integration():
    # A_alpha = E_{z ~ N(0, s^2)} [(1 - q + q exp((2z - 1) / (2 s^2)))^alpha]: the reference
    # the library is compared with below is itself right
    q, s, alpha = 0.1, 1.5, 3
    z = np.linspace(-30 * s, 30 * s, 400_001)
    density = np.exp(-z ** 2 / (2 * s ** 2)) / (s * math.sqrt(2 * math.pi))
    a_alpha = np.trapezoid(density * (1 - q + q * np.exp((2 * z - 1) / (2 * s ** 2))) ** alpha, z)
    rdp = reference.rdp_per_round(s, sampling_rate=q)[np.argmin(np.abs(ORDERS - alpha))]
    assert rdp == pytest.approx(math.log(a_alpha) / (alpha - 1), rel=1e-6)


def test_subsampling_spends_less_privacy():
    assert epsilon_for(1.0, 100, 1e-5, sampling_rate=0.1) < epsilon_for(1.0, 100, 1e-5)


@pytest.mark.parametrize("z, rounds, delta, q", [(0.0, 1, 1e-5, 1.0), (1.0, -1, 1e-5, 1.0),
                                                 (1.0, 1, 0.0, 1.0), (1.0, 1, 1e-5, 0.0)])
def test_epsilon_refuses_bad_parameters(z, rounds, delta, q):
    with pytest.raises(ValueError):
        epsilon_for(z, rounds, delta, q)


def test_privacy_ledger_composes_rounds():
    ledger = PrivacyLedger(delta=1e-5)
    assert ledger.epsilon == 0.0
    for _ in range(3):
        total, delta = ledger.spend(1.0)
    assert total == pytest.approx(epsilon_for(1.0, 3, 1e-5)) and delta == 1e-5
    assert ledger.rounds == 3


def test_privacy_ledger_composes_different_noise_levels_in_rdp():
    ledger = PrivacyLedger(delta=1e-5)
    before = ledger.peek(1.0)
    ledger.spend(1.0)
    total, _ = ledger.spend(2.0)
    # rdp = alpha/2 + alpha/8 = alpha * 5/8 = one round at sigma^2 = 0.8
    assert before == pytest.approx(epsilon_for(1.0, 1, 1e-5))
    assert total == pytest.approx(epsilon_for(math.sqrt(0.8), 1, 1e-5), rel=1e-9)
    assert ledger.peek(4.0) > total == ledger.epsilon  # peek does not spend


GRID = [(0.8, 5, 1.0), (1.0, 1, 1.0), (1.0, 10, 1.0), (2.0, 100, 1.0), (1.0, 100, 0.1),
        (1.3, 50, 0.05), (4.0, 1000, 1.0)]


@pytest.mark.parametrize("z, rounds, q", GRID)
def test_dp_accounting_agrees_with_the_hand_written_accountant(z, rounds, q):
    # Prepare: Google's dp-accounting RDP accountant on the same orders and mechanism
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant
    event = GaussianDpEvent(z) if q == 1 else PoissonSampledDpEvent(q, GaussianDpEvent(z))
    library = RdpAccountant(orders=list(ORDERS)).compose(event, rounds)

    # Execute: epsilon by the frozen hand-written accountant, and by the library
    hand = reference.epsilon_for(z, rounds, 1e-5, sampling_rate=q)
    lib_rdp = np.asarray(library._rdp)
    if q < 1:  # the hand-written one covers integer orders only when subsampling
        lib_rdp = np.where(np.abs(ORDERS - np.round(ORDERS)) < 1e-9, lib_rdp, np.inf)
    classic = float(np.min(lib_rdp + math.log(1e5) / (ORDERS - 1)))  # the same conversion
    improved = epsilon_for(z, rounds, 1e-5, sampling_rate=q)  # what the coordinator reports

    # Assert: the same RDP curve, so the same epsilon by the same conversion; the
    # library's own conversion (Balle et al. 2020, Prop. 12) is tighter, never looser
    assert classic == pytest.approx(hand, rel=1e-9)
    assert improved == pytest.approx(library.get_epsilon(1e-5), rel=1e-12)
    assert 0.75 * hand <= improved <= hand
