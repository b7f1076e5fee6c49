"""The local gate's rules: which cases are held out, and when a new bundle does worse."""
from __future__ import annotations

import numpy as np

from device.gate import is_gate_key, judge


def test_gate_keys_are_a_deterministic_quarter():
    keys = [f"{i:032x}"[::-1] for i in range(1600)]
    share = sum(map(is_gate_key, keys)) / len(keys)
    assert 0.2 < share < 0.3
    assert is_gate_key("3" + "f" * 31) and not is_gate_key("a" + "0" * 31)
    assert not is_gate_key("")


def test_a_candidate_as_good_as_the_model_in_service_passes():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.6, 0.4])

    verdict = judge(y, p, p, (0.5, 0.5), margin=0.05)

    assert verdict.passed
    assert verdict.current == verdict.candidate and verdict.candidate["accuracy"] == 1.0
    assert "AUC not compared (fewer than 5 of a class)" in verdict.figures


def test_a_candidate_that_misses_more_tumours_than_the_margin_fails():
    y = np.array([1] * 6 + [0] * 6)
    current = np.array([0.9] * 6 + [0.1] * 6)
    misses_two = np.array([0.9] * 4 + [0.1] * 2 + [0.1] * 6)

    verdict = judge(y, current, misses_two, (0.5, 0.5), margin=0.05)

    assert not verdict.passed
    assert "missed tumours 2 vs 0 of 6" in verdict.figures and "AUC" in verdict.figures


def test_one_more_mistake_is_forgiven_on_a_small_gate_set():
    y = np.array([1, 1, 0, 0, 0])
    current = np.array([0.9, 0.9, 0.1, 0.1, 0.1])
    one_false_alarm = np.array([0.9, 0.9, 0.9, 0.1, 0.1])

    assert judge(y, current, one_false_alarm, (0.5, 0.5), margin=0.05).passed
