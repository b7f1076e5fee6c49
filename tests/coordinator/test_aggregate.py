"""Aggregation (pure NumPy): FedAvg by hand and streamed, the robust aggregators,
clipping, and what one poisoning device can do to each."""
from __future__ import annotations

import importlib
import math
import tracemalloc

import numpy as np
import pytest

from coordinator.aggregation import (
    StreamingMean, aggregate, clip_by_norm, clipped_fedavg, coordinate_median, trimmed_mean,
    weighted_fedavg,
)
from models.core.weights import flatten, head_shapes, unflatten
from tests.coordinator.arrays import assert_arrays, upd


# The package exports the function ``aggregate``, which shadows the module's name.
agg = importlib.import_module("coordinator.aggregation.aggregate")


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
