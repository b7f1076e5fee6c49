"""Heat maps drawn after the answer: a bounded queue and one background thread.

An upload is answered as soon as its case is stored. Its heat map (169 occluded copies, in
batched inferences) is drawn afterwards, once no upload has been in progress for
:data:`IDLE_S`, so that it does not slow the next slice of a series, and is ready when
the case page asks for it. The queue holds at most ``capacity`` jobs; when it is full
the oldest is dropped, and that map is drawn when first viewed, as before.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from device.inference.predictor import Predictor
from models.core.preprocess import Crop

logger = logging.getLogger(__name__)

IDLE_S = 0.02   # no upload in progress for this long: draw
CAPACITY = 32   # queued heat maps (each holds its model input: 64 KB at 128x128x1)


@dataclass(frozen=True, eq=False)
class HeatmapJob:
    """What drawing a case's heat map needs, kept from its analysis."""

    case_id: str
    predictor: Predictor
    image: np.ndarray
    probability: float
    crop: Crop


class HeatmapQueue:
    """Jobs waiting for the appliance to be idle, drawn one at a time by ``draw``.

    Parameters
    ----------
    capacity : int
        Most jobs kept; a new job pushes the oldest out.
    idle_s : float
        How long no upload must have been in progress before a job is drawn.
    """

    def __init__(self, capacity: int = CAPACITY, idle_s: float = IDLE_S) -> None:
        self.capacity, self.idle_s = capacity, idle_s
        self._jobs: OrderedDict[str, HeatmapJob] = OrderedDict()
        self._wake = threading.Condition()
        self._uploads = 0
        self._last_upload = 0.0
        self._closed = False
        self._drawing = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self, draw: Callable[[HeatmapJob], None]) -> None:
        """Draw queued jobs with ``draw`` in a background thread from now on."""
        self._thread = threading.Thread(target=self._loop, args=(draw,), name="heatmaps",
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def upload(self) -> Iterator[None]:
        """Mark an upload in progress: nothing is drawn until it is over, and idle."""
        with self._wake:
            self._uploads += 1
        try:
            yield
        finally:
            with self._wake:
                self._uploads -= 1
                self._last_upload = time.monotonic()
                self._wake.notify()

    def submit(self, job: HeatmapJob) -> None:
        """Queue ``job``; the oldest job is dropped when the queue is full."""
        with self._wake:
            if self._closed:
                return
            self._jobs[job.case_id] = job
            while len(self._jobs) > self.capacity:
                self._jobs.popitem(last=False)
                self.dropped += 1
            self._wake.notify()

    def take(self, case_id: str) -> HeatmapJob | None:
        """Remove and return the queued job of ``case_id`` (a viewer draws it now)."""
        with self._wake:
            return self._jobs.pop(case_id, None)

    def pending(self) -> int:
        """Jobs waiting or being drawn."""
        with self._wake:
            return len(self._jobs) + self._drawing

    def close(self) -> None:
        """Stop the thread; queued jobs are dropped (drawn when viewed)."""
        with self._wake:
            self._closed = True
            self._jobs.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _next(self) -> HeatmapJob | None:
        """The oldest job once idle; None when closed."""
        with self._wake:
            self._drawing = False
            while not self._closed:
                idle_in = self._last_upload + self.idle_s - time.monotonic()
                if self._jobs and self._uploads == 0 and idle_in <= 0:
                    self._drawing = True
                    return self._jobs.popitem(last=False)[1]
                self._wake.wait(timeout=idle_in if self._jobs and not self._uploads
                                else None)
            return None

    def _loop(self, draw: Callable[[HeatmapJob], None]) -> None:
        while (job := self._next()) is not None:
            try:
                draw(job)
            except Exception:  # noqa: BLE001 - one map failing must not stop the others
                logger.exception("drawing a heat map in the background failed")
