"""The model slot: which predictor serves requests, swapped atomically.

A request takes ``slot.current`` once and uses that predictor to the end, so a swap
never changes the model under a request in flight; the old interpreter is freed when
its last request drops it.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from device.inference.predictor import Predictor

logger = logging.getLogger(__name__)


class ModelSlot:
    """Holds the current predictor; ``swap`` replaces it under a lock."""

    def __init__(self, predictor: Predictor) -> None:
        self._current = predictor
        self._lock = threading.Lock()

    @property
    def current(self) -> Predictor:
        return self._current

    def swap(self, predictor: Predictor) -> Predictor:
        """Install ``predictor``; returns the one it replaced."""
        with self._lock:
            old, self._current = self._current, predictor
        logger.info("model swapped: version %s -> %s", old.version, predictor.version)
        return old

    def replace(self, choose: Callable[[Predictor], Predictor | None]) -> bool:
        """Swap in ``choose(current)`` unless it returns None or the current predictor,
        deciding and swapping under the lock (a swap elsewhere cannot come between);
        True if it swapped."""
        with self._lock:
            old = self._current
            new = choose(old)
            if new is None or new is old:
                return False
            self._current = new
        logger.info("model swapped: version %s -> %s", old.version, new.version)
        return True
