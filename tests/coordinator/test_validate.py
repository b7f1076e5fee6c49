"""Validation of a device's head update before it is used: shapes, dtypes,
finiteness, norm and example count, each refusal with its reason."""
from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.aggregation import UpdateRejected, validate_update
from models.core.weights import head_shapes


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
