"""Transport "flower": the serving process adopts what the Flower ClientApp installed.

The ClientApp (another process on the same data folder) verifies, gates and installs
bundles; the process that serves the web UI only notices a changed ``CURRENT`` pointer
and swaps the installed bundle into its model slot.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from device.inference.predictor import Predictor
from device.inference.slot import ModelSlot
from device.sync.bundles import InstalledBundles
from device.telemetry import Telemetry

logger = logging.getLogger(__name__)


class InstalledFollower:
    """Swaps the installed bundle into ``slot`` when another process changed it.

    ``load`` verifies a bundle folder against the trusted keys and makes its predictor.
    """

    def __init__(self, bundles: InstalledBundles, slot: ModelSlot,
                 load: Callable[[Path], Predictor], telemetry: Telemetry,
                 poll_s: float) -> None:
        self.bundles, self.slot, self.load = bundles, slot, load
        self.telemetry, self.poll_s = telemetry, poll_s
        self._adopted: str | None = None  # the CURRENT pointer last looked at

    def adopt(self) -> bool:
        """Serve the installed bundle if it is not the one in service; whether it swapped.
        Only a changed ``CURRENT`` pointer is looked at (verifying a bundle costs a read)."""
        name = self.bundles.current_name()
        if name == self._adopted:
            return False
        self._adopted = name
        path = self.bundles.current_path().resolve()
        if path == Path(self.slot.current.bundle.path).resolve():
            return False
        predictor = self.load(path)
        self.slot.swap(predictor)
        logger.info("now serving bundle version %d (installed by another process of this "
                    "appliance)", predictor.version)
        return True

    def run(self, stop: threading.Event) -> None:
        """Background loop: adopt installed bundles every ``poll_s`` seconds."""
        while not stop.wait(self.poll_s):
            try:
                self.adopt()
            except Exception as exc:  # a bad install must not stop serving
                logger.warning("could not adopt the installed bundle: %s", exc)
                self.telemetry.record_error("sync", f"adopt failed: {type(exc).__name__}")
