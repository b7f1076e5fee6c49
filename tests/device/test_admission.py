"""Admission by memory (device.admission): small slices are analysed side by side, large
camera frames take turns, so eight at once cannot take the appliance's memory."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from device.admission import BUDGET_BYTES, MemoryBudget, analysis_bytes
from tests.device.images import slice_like


def _jpeg(width: int, height: int, colour: bool = False) -> bytes:
    grey = cv2.resize(slice_like(), (width, height))
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) if colour else grey
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_a_slice_is_cheap_and_a_camera_frame_is_not() -> None:
    # Execute
    slice_cost = analysis_bytes(_jpeg(512, 512))
    frame_cost = analysis_bytes(_jpeg(4056, 3040, colour=True))
    # Assert: ten slices fit in the budget; a 12-megapixel colour frame needs it all
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


PEAK_SCRIPT = """
import re, sys, threading
from pathlib import Path
import cv2
from device.config import load_settings
from device.services import build_services

def kb(key):
    return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))

svc = build_services(load_settings(data_dir=Path(sys.argv[1]), gpio=False, secret_key='x'))
slice_ = cv2.imread(sys.argv[2], cv2.IMREAD_GRAYSCALE)
frame = cv2.imencode('.jpg', cv2.resize(slice_, (3000, 2250), interpolation=cv2.INTER_CUBIC),
                     [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
before = kb('VmRSS')
threads = [threading.Thread(target=svc.analyser.analyse, args=(frame, 'api'))
           for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print((kb('VmHWM') - before) // 1024, svc.store.count())
svc.close()
"""


def test_eight_camera_frames_at_once_leave_the_memory_bounded(
        tmp_path, data_dir) -> None:
    # Prepare: a fresh process (its own allocator) with the appliance's services, and a
    # real slice photographed as a 7-megapixel frame
    import subprocess
    import sys
    from tests.device.store.contract import ROOT
    # Execute: eight such uploads at once
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path),
                           str(data_dir / "yes" / "Y41.jpg")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    # Assert: all stored; the peak grew by 125 MB (measured), not by eight frames' working
    # memory (they take turns), nor by what glibc keeps of freed buffers without
    # bound_allocator (483 MB measured)
    assert done.returncode == 0, done.stderr[-2000:]
    growth_mb, stored = map(int, done.stdout.split())
    assert stored == 8 and growth_mb < 250
