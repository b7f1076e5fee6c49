"""Predictor on LiteRT (``ai_edge_litert``; ``tflite_runtime`` as fallback)."""
from __future__ import annotations

import numpy as np

from device.inference.predictor import Predictor, register
from models.core.bundle import Bundle
from models.core.runtime import bundle_model

# Occluded copies run in batches on a second interpreter: a row of the heat map's 13 x 13
# positions per invoke (device.inference.heatmap sends them so). As fast on one core as
# batches of 49 (115 vs 114 ms for the 169 copies), and 10 MB less resident: the
# interpreter's buffers grow with the batch.
HEATMAP_BATCH = 13


@register("litert")
class LiteRTPredictor(Predictor):
    """The interpreter is created once per bundle and reused for every request."""

    def __init__(self, bundle: Bundle, num_threads: int = 2) -> None:
        super().__init__(bundle)
        # One image takes a fraction of a millisecond: waking a second thread costs more
        # than it saves, and keeps a core from the next request. The batch uses them.
        # (Files are re-checked against their sha256 as they are read.)
        self._single = bundle_model(bundle, num_threads=1)
        self._batch = bundle_model(bundle, num_threads=num_threads, batch=HEATMAP_BATCH)
        self.embedding_dim = self._single.embedding_dim

    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._single.predict(images)

    def occlusion_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._batch.predict(images)
