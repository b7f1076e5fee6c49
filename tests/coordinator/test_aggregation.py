"""Aggregation, robustness to poisoning, central DP and update validation (pure NumPy)."""
from __future__ import annotations

import importlib
import math
import tracemalloc

import numpy as np
import pytest

from coordinator.aggregation import (PrivacyLedger, StreamingMean, UpdateRejected, aggregate,
                                     clip_by_norm, clipped_fedavg, coordinate_median,
                                     dp_fedavg, epsilon_for, gaussian_mechanism, trimmed_mean,
                                     validate_update, weighted_fedavg)
from coordinator.aggregation.privacy import ORDERS, rdp_per_round
from models.core.weights import flatten, head_shapes, unflatten

# The package exports the function ``aggregate``, which shadows the module's name.
agg = importlib.import_module("coordinator.aggregation.aggregate")


def upd(w, b):
    return {"w": np.array(w, np.float32), "b": np.array(b, np.float32)}


def assert_arrays(result, expected):
    assert set(result) == set(expected)
    for name, want in expected.items():
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], want, rtol=1e-6, atol=1e-7)


# --- FedAvg ------------------------------------------------------------------------------

def test_fedavg_two_updates_by_hand():
    deltas, weights = [upd([1, 2], [0]), upd([3, 6], [4])], [1, 3]
    result = weighted_fedavg(deltas, weights)
    # (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5];  (0 + 12) / 4 = 3
    assert_arrays(result, {"w": [2.5, 5.0], "b": [3.0]})


def test_fedavg_three_updates_by_hand_from_a_generator():
    deltas = (d for d in [upd([1, 2], [0]), upd([3, 6], [4]), upd([-1, 0], [2])])
    result = weighted_fedavg(deltas, [1, 3, 4])
    # w: ([1,2] + [9,18] + [-4,0]) / 8 = [0.75, 2.5];  b: (0 + 12 + 8) / 8 = 2.5
    assert_arrays(result, {"w": [0.75, 2.5], "b": [2.5]})


@pytest.mark.parametrize("deltas, weights", [
    ([], []),                                        # nothing to aggregate
    ([upd([1, 2], [0])], [1, 2]),                    # lengths differ
    ([upd([1, 2], [0])], [0]),                       # zero weight
    ([upd([1, 2], [0])], [float("nan")]),            # non-finite weight
    ([upd([1, 2], [0]), upd([1, 2, 3], [0])], [1, 1]),   # shapes differ
    ([upd([1, 2], [0]), {"w": np.zeros(2)}], [1, 1]),    # names differ
])
def test_fedavg_refuses_inconsistent_input(deltas, weights):
    with pytest.raises(ValueError):
        weighted_fedavg(deltas, weights)


def test_streaming_mean_equals_the_batch_weighted_mean():
    rng = np.random.default_rng(0)
    shapes = head_shapes(50, 8)
    deltas = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
              for _ in range(30)]
    weights = rng.integers(1, 500, size=30)
    acc = StreamingMean()
    for delta, weight in zip(deltas, weights):
        acc.add(delta, weight)
    result = acc.result()
    for name in shapes:
        batch = np.average(np.stack([d[name] for d in deltas]).astype(np.float64), axis=0,
                           weights=weights)
        np.testing.assert_allclose(result[name], batch, rtol=1e-6, atol=1e-6)
    assert acc.count == 30 and acc.total_weight == pytest.approx(float(weights.sum()))


def test_streaming_mean_memory_does_not_grow_with_the_number_of_updates():
    pool = [{"w": np.full(100_000, float(i), np.float32)} for i in range(3)]
    tracemalloc.start()
    acc = StreamingMean()
    for i in range(300):
        acc.add(pool[i % 3], 1.0)
    result = acc.result()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # float64 sum + float64 scratch + float32 result = 5 float32 updates, whatever n
    assert peak < 6 * 100_000 * 4
    np.testing.assert_allclose(result["w"], 1.0)


def test_streaming_mean_result_can_be_taken_between_updates():
    acc = StreamingMean()
    acc.add(upd([2, 4], [0]), 1)
    first = acc.result()
    acc.add(upd([4, 8], [2]), 1)
    assert_arrays(first, {"w": [2, 4], "b": [0]})
    assert_arrays(acc.result(), {"w": [3, 6], "b": [1]})


def test_streaming_mean_without_updates_raises():
    with pytest.raises(ValueError, match="nothing to aggregate"):
        StreamingMean().result()


# --- Robust aggregators ---------------------------------------------------------------------

FIVE = [upd([1, -1], [0]), upd([5, -2], [1]), upd([2, -3], [2]), upd([100, -4], [3]),
        upd([3, 50], [4])]


def test_coordinate_median_by_hand():
    result = coordinate_median(FIVE)
    # w0: sorted [1,2,3,5,100] -> 3;  w1: [-4,-3,-2,-1,50] -> -2;  b: [0..4] -> 2
    assert_arrays(result, {"w": [3, -2], "b": [2]})


def test_coordinate_median_of_an_even_count_averages_the_middle_pair():
    assert_arrays(coordinate_median(FIVE[:4]), {"w": [3.5, -2.5], "b": [1.5]})


def test_trimmed_mean_by_hand():
    result = trimmed_mean(FIVE, trim=0.2)
    # k = floor(0.2*5) = 1: w0 (2+3+5)/3;  w1 (-3-2-1)/3;  b (1+2+3)/3
    assert_arrays(result, {"w": [10 / 3, -2], "b": [2]})


def test_trimmed_mean_without_trimming_is_the_plain_mean():
    assert_arrays(trimmed_mean(FIVE, trim=0.1), {"w": [111 / 5, 40 / 5], "b": [2]})


@pytest.mark.parametrize("trim", [0.5, -0.1, 0.7])
def test_trimmed_mean_refuses_a_trim_that_leaves_nothing(trim):
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(FIVE, trim=trim)


def test_trim_count_is_robust_to_float_error():
    assert agg.trim_count(100, 0.29) == 29 and agg.trim_count(10, 0.1) == 1


def test_robust_aggregators_agree_with_numpy_across_chunk_boundaries(monkeypatch):
    rng = np.random.default_rng(1)
    deltas = [{"w": rng.standard_normal((7, 13)).astype(np.float32),
               "b": rng.standard_normal(5).astype(np.float32)} for _ in range(9)]
    monkeypatch.setattr(agg, "CHUNK_BYTES", 8 * 9 * 4)  # 4 coordinates per block
    median, trimmed = coordinate_median(deltas), trimmed_mean(deltas, trim=0.2)
    for name in ("w", "b"):
        stack = np.stack([d[name] for d in deltas]).astype(np.float64)
        np.testing.assert_allclose(median[name], np.median(stack, axis=0), rtol=1e-6)
        middle = np.sort(stack, axis=0)[1:8]  # k = floor(0.2 * 9) = 1
        np.testing.assert_allclose(trimmed[name], middle.mean(axis=0), rtol=1e-5, atol=1e-6)


# --- Clipping and dispatch ------------------------------------------------------------------

def test_clip_by_norm_scales_down_to_the_bound_and_reports_the_original_norm():
    delta = {"a": np.array([3, 0], np.float32), "b": np.array([4], np.float32)}
    clipped, norm = clip_by_norm(delta, 2.5)
    assert norm == pytest.approx(5.0)
    assert_arrays(clipped, {"a": [1.5, 0], "b": [2]})
    assert delta["a"][0] == 3  # input untouched


def test_clip_by_norm_leaves_small_and_zero_updates_alone():
    small, norm = clip_by_norm(upd([0.3, 0.4], [0]), 1.0)
    zero, zero_norm = clip_by_norm(upd([0, 0], [0]), 1.0)
    assert norm == pytest.approx(0.5) and zero_norm == 0.0
    assert_arrays(small, {"w": [0.3, 0.4], "b": [0]})
    assert_arrays(zero, {"w": [0, 0], "b": [0]})


@pytest.mark.parametrize("delta, max_norm", [(upd([1, 2], [0]), 0.0),
                                             (upd([1, 2], [0]), float("inf")),
                                             (upd([float("nan"), 2], [0]), 1.0)])
def test_clip_by_norm_refuses_bad_input(delta, max_norm):
    with pytest.raises(ValueError):
        clip_by_norm(delta, max_norm)


def test_clipped_fedavg_by_hand():
    deltas = [{"a": np.array([3, 0], np.float32), "b": np.array([4], np.float32)},
              {"a": np.array([0, 1], np.float32), "b": np.array([0], np.float32)}]
    result = clipped_fedavg(deltas, [1, 1], max_norm=1.0)
    # first clipped from norm 5 to 1: [0.6, 0], [0.8]; second kept (norm 1)
    assert_arrays(result, {"a": [0.3, 0.5], "b": [0.4]})


@pytest.mark.parametrize("method, params, expected", [
    ("fedavg", {}, {"w": [22.2, 8.0], "b": [2]}),
    ("median", {}, {"w": [3, -2], "b": [2]}),
    ("trimmed_mean", {"trim": 0.2}, {"w": [10 / 3, -2], "b": [2]}),
    ("clipped_fedavg", {"max_norm": 1e6}, {"w": [22.2, 8.0], "b": [2]}),
])
def test_aggregate_dispatches_by_name(method, params, expected):
    assert_arrays(aggregate(method, FIVE, [1] * 5, **params), expected)


def test_aggregate_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="fedavg.*median.*trimmed_mean.*clipped_fedavg"):
        aggregate("krum", FIVE, [1] * 5)


# --- Poisoning ---------------------------------------------------------------------------

def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def honest_round():
    """9 honest deltas around a common direction d, each from 50 examples."""
    rng = np.random.default_rng(7)
    shapes = head_shapes(16, 4)  # 73 parameters
    d = rng.standard_normal(sum(math.prod(s) for s in shapes.values()))
    honest = [unflatten(d + rng.normal(0, 0.05, d.size), shapes) for _ in range(9)]
    return d, shapes, honest


@pytest.mark.parametrize("attack", ["sign_flip", "scale"])
def test_one_attacker_ruins_fedavg_but_not_the_robust_aggregators(honest_round, attack):
    d, shapes, honest = honest_round
    factor = -10.0 if attack == "sign_flip" else 50.0
    deltas, weights = honest + [unflatten(factor * d, shapes)], [50] * 10
    bound = 1.5 * np.linalg.norm(d)

    fedavg = flatten(weighted_fedavg(deltas, weights))
    robust = {"median": coordinate_median(deltas),
              "trimmed 0.1": trimmed_mean(deltas, trim=0.1),
              "trimmed 0.2": trimmed_mean(deltas, trim=0.2),
              "clipped": clipped_fedavg(deltas, weights, max_norm=bound)}

    if attack == "sign_flip":  # (9d - 10d) / 10 = -0.1 d
        assert cosine(fedavg, d) < 0
    else:  # (9d + 50d) / 10 = 5.9 d
        assert np.linalg.norm(fedavg - d) > 2 * np.linalg.norm(d)
    for name, result in robust.items():
        vec = flatten(result)
        assert cosine(vec, d) > 0.9, name
        assert np.linalg.norm(vec - d) / np.linalg.norm(d) < 0.3, name


def test_clipping_bounds_one_attackers_pull_to_its_share_of_the_norm(honest_round):
    d, shapes, honest = honest_round
    deltas = honest + [unflatten(-10.0 * d, shapes)]
    result = flatten(clipped_fedavg(deltas, [50] * 10, max_norm=2 * np.linalg.norm(d)))
    # honest deltas are under the bound; the attacker is clipped to exactly -2d, so the
    # mean is (sum(honest) - 2d) / 10, about 0.7 d: relative error (1 + 2) / n
    expected = (sum(flatten(h).astype(np.float64) for h in honest) - 2 * d) / 10
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert np.linalg.norm(result - d) / np.linalg.norm(d) == pytest.approx(0.3, abs=0.02)


def test_robust_aggregators_ignore_inflated_example_counts(honest_round):
    d, shapes, honest = honest_round
    deltas, weights = honest + [unflatten(50.0 * d, shapes)], [50] * 9 + [100_000]
    result = flatten(aggregate("median", deltas, weights))
    assert np.linalg.norm(result - d) / np.linalg.norm(d) < 0.1


# --- Central differential privacy ------------------------------------------------------------

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


def test_epsilon_matches_the_closed_form_rdp_optimum():
    # eps(alpha) = a*alpha + L/(alpha-1), a = T/(2 sigma^2), L = log(1/delta); its minimum
    # over alpha > 1 is at alpha* = 1 + sqrt(L/a), giving a + 2 sqrt(a L).
    a, big_l = 1 / 2, math.log(1e5)
    closed = a + 2 * math.sqrt(a * big_l)   # = 5.2985 for sigma=1, T=1, delta=1e-5
    eps = epsilon_for(1.0, rounds=1, delta=1e-5)
    assert closed == pytest.approx(5.2985, abs=1e-4)
    assert closed <= eps <= closed + 1e-3   # the alpha grid can only be slightly worse


def test_epsilon_depends_on_rounds_over_sigma_squared():
    # T / sigma^2 is all that matters without subsampling: (sigma=2, T=4) == (1, 1)
    assert epsilon_for(2.0, 4, 1e-5) == pytest.approx(epsilon_for(1.0, 1, 1e-5), rel=1e-9)


def test_epsilon_falls_with_more_noise_and_grows_with_rounds():
    by_sigma = [epsilon_for(s, 10, 1e-5) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    by_rounds = [epsilon_for(1.0, t, 1e-5) for t in (1, 10, 100, 1000)]
    assert all(x > y for x, y in zip(by_sigma, by_sigma[1:]))
    assert all(x < y for x, y in zip(by_rounds, by_rounds[1:]))
    assert epsilon_for(1.0, 0, 1e-5) == 0.0


def test_subsampled_rdp_tends_to_the_full_gaussian_as_q_goes_to_one():
    integer = np.abs(ORDERS - np.round(ORDERS)) < 1e-9
    almost_full = rdp_per_round(1.3, sampling_rate=1 - 1e-12)
    np.testing.assert_allclose(almost_full[integer], ORDERS[integer] / (2 * 1.3 ** 2),
                               rtol=1e-6)
    assert np.isinf(almost_full[~integer]).all()  # only integer orders are covered


def test_subsampled_rdp_matches_numerical_integration():
    # A_alpha = E_{z ~ N(0, s^2)} [(1 - q + q exp((2z - 1) / (2 s^2)))^alpha]
    q, s, alpha = 0.1, 1.5, 3
    z = np.linspace(-30 * s, 30 * s, 400_001)
    density = np.exp(-z ** 2 / (2 * s ** 2)) / (s * math.sqrt(2 * math.pi))
    a_alpha = np.trapezoid(density * (1 - q + q * np.exp((2 * z - 1) / (2 * s ** 2))) ** alpha, z)
    rdp = rdp_per_round(s, sampling_rate=q)[np.argmin(np.abs(ORDERS - alpha))]
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


# --- Validation -------------------------------------------------------------------------------

SHAPES = head_shapes(3, 2)  # 6 + 2 + 2 + 1 = 11 parameters


def good_update(value=0.5, dtype=np.float32):
    return {k: np.full(s, value, dtype) for k, s in SHAPES.items()}


def test_validate_update_returns_the_l2_norm():
    norm = validate_update(good_update(0.5), SHAPES, max_norm=10.0, examples=12)
    assert norm == pytest.approx(0.5 * math.sqrt(11))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_validate_update_accepts_other_float_dtypes(dtype):
    assert validate_update(good_update(1.0, dtype), SHAPES, max_norm=10.0,
                           examples=np.int64(3)) == pytest.approx(math.sqrt(11))


def _with(name, value):
    arrays = good_update()
    arrays[name] = value
    return arrays


def _without(name):
    arrays = good_update()
    del arrays[name]
    return arrays


@pytest.mark.parametrize("arrays, examples, reason", [
    (_without("output/bias"), 10, "keys"),
    (_with("evil", np.zeros(1, np.float32)), 10, "keys"),
    (_with("hidden/kernel", np.zeros((2, 3), np.float32)), 10, "shape"),
    (_with("hidden/bias", np.zeros((2, 1), np.float32)), 10, "shape"),
    (_with("hidden/bias", np.zeros(2, np.int32)), 10, "dtype"),
    (_with("hidden/bias", np.zeros(2, np.complex64)), 10, "dtype"),
    (_with("hidden/bias", np.array([None, None])), 10, "dtype"),
    (_with("hidden/bias", [0.0, 0.0]), 10, "dtype"),
    (_with("hidden/bias", np.array([0.0, np.nan], np.float32)), 10, "nonfinite"),
    (_with("output/bias", np.array([-np.inf], np.float32)), 10, "nonfinite"),
    (_with("output/bias", np.array([20.0], np.float32)), 10, "norm"),
    (_with("output/bias", np.array([1e300])), 10, "norm"),  # float64 beyond float32
    (good_update(), 0, "examples"),
    (good_update(), -5, "examples"),
    (good_update(), 100_001, "examples"),
    (good_update(), 12.0, "examples"),
    (good_update(), True, "examples"),
    (good_update(), "12", "examples"),
])
def test_validate_update_refuses_with_a_reason(arrays, examples, reason):
    with pytest.raises(UpdateRejected) as info:
        validate_update(arrays, SHAPES, max_norm=10.0, examples=examples)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError) and str(info.value)


def test_validate_update_message_names_the_problem():
    with pytest.raises(UpdateRejected, match=r"missing \['output/bias'\], extra \[\]"):
        validate_update(_without("output/bias"), SHAPES, max_norm=10.0, examples=1)
    with pytest.raises(UpdateRejected, match=r"hidden/kernel: shape \(2, 3\)"):
        validate_update(_with("hidden/kernel", np.zeros((2, 3), np.float32)), SHAPES,
                        max_norm=10.0, examples=1)


def test_validate_update_respects_a_custom_example_cap():
    with pytest.raises(UpdateRejected, match="outside"):
        validate_update(good_update(), SHAPES, max_norm=10.0, examples=501, max_examples=500)


def test_validate_update_bad_max_norm_is_a_coordinator_error():
    with pytest.raises(ValueError) as info:
        validate_update(good_update(), SHAPES, max_norm=0.0, examples=1)
    assert not isinstance(info.value, UpdateRejected)
