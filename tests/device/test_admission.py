"""Admission by memory (device.admission): small slices are analysed side by side, large
camera frames take turns, so eight at once cannot take the appliance's memory."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from device.admission import BUDGET_BYTES, MemoryBudget, analysis_bytes
from tests.device.images import slice_like


def _jpeg(width: int, height: int) -> bytes:
    return cv2.imencode(".jpg", cv2.resize(slice_like(), (width, height)))[1].tobytes()


def test_a_slice_is_cheap_and_a_camera_frame_is_not() -> None:
    # Execute
    slice_cost, frame_cost = analysis_bytes(_jpeg(512, 512)), analysis_bytes(_jpeg(4056, 3040))
    # Assert: ten slices fit in the budget; a 12-megapixel frame needs it all
    assert slice_cost * 10 < BUDGET_BYTES < frame_cost
    assert 90 << 20 < frame_cost < 200 << 20  # 93 MB measured


def _peak_concurrency(budget: MemoryBudget, costs: list[int]) -> int:
    running, peak, lock = [0], [0], threading.Lock()

    def work(cost: int) -> None:
        with budget.hold(cost):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
    threads = [threading.Thread(target=work, args=(cost,)) for cost in costs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return peak[0]


def test_small_analyses_run_together_and_large_ones_take_turns() -> None:
    # Prepare
    budget = MemoryBudget(100)
    # Execute
    small = _peak_concurrency(budget, [10] * 8)
    large = _peak_concurrency(budget, [60] * 8)
    oversize = _peak_concurrency(budget, [500] * 3)
    # Assert: all ran; the budget bounded how many at once; nothing is left held
    assert small == 8 and large == 1 and oversize == 1
    assert budget.used == 0


def test_the_budget_is_released_when_an_analysis_fails() -> None:
    budget = MemoryBudget(100)
    try:
        with budget.hold(80):
            raise ValueError("refused upload")
    except ValueError:
        pass
    assert budget.used == 0
    assert np.isclose(_peak_concurrency(budget, [80]), 1)
