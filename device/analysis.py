"""One slice through the appliance: decode, preprocess, predict, store; heat maps.

The browser upload, the JSON API and the camera all call :meth:`Analyser.analyse`, so
they share validation, the training preprocessing and the crash-safe store. The heat map
(49 occluded inferences) is drawn on first view by :meth:`Analyser.heatmap`, so scripts
that never look at it do not pay for it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from device.exc import UnusableImageError
from device.hw.status import Indicator, State
from device.imaging import decode_upload, stored_model_input
from device.inference.heatmap import FULL_SCALE_DROP, heatmap_png
from device.inference.predictor import Predictor
from device.inference.slot import ModelSlot
from device.store.base import Case, CaseStore
from device.telemetry import Telemetry
from models.core import preprocess as mp

logger = logging.getLogger(__name__)


def heatmap_author(predictor: Predictor) -> str:
    """What a heat map depends on besides the slice: the model and the colour scale."""
    return f"v{predictor.version} {predictor.bundle.signer} {FULL_SCALE_DROP:g}"


@dataclass
class Analyser:
    """Turns image bytes into stored cases with the model in ``slot``."""

    slot: ModelSlot
    store: CaseStore
    status: Indicator
    telemetry: Telemetry
    max_upload_bytes: int

    def analyse(self, data: bytes, source: str) -> Case:
        """Analyse one image's bytes and store it as a new case; returns the case.

        Raises the :mod:`device.exc` input errors (400/413/415/422) before anything is
        written: a refused image leaves no trace but a counter.
        """
        upload = decode_upload(data, self.max_upload_bytes)
        predictor = self.slot.current  # this request keeps this model even if swapped
        with self.status.activity(State.BUSY):
            start = time.perf_counter()
            try:
                image = mp.preprocess(upload.pixels, predictor.input_spec)
            except mp.UnusableImageError as exc:
                raise UnusableImageError(str(exc)) from None
            result = predictor.predict(image)
            latency_ms = (time.perf_counter() - start) * 1000
            case = self.store.add_case(
                upload.png(), source=source, width=upload.width, height=upload.height,
                probability=result.probability, predicted_label=result.label,
                threshold=predictor.threshold, uncertain=result.uncertain,
                model_version=predictor.version, latency_ms=latency_ms)
            self.store.set_embedding(case.id, predictor.backbone_id, result.embedding)
        self.telemetry.predictions.labels("tumour" if result.label else "no_tumour").inc()
        logger.info("case %s: p=%.3f v%d %.1f ms", case.id, result.probability,
                    predictor.version, latency_ms)
        return case

    def heatmap(self, case: Case) -> Path:
        """Path of the case's heat map, drawn and stored on first request by the model in
        service, and drawn again when that model (or the colour scale) has changed."""
        predictor = self.slot.current
        since = self.store.heatmaps_valid_since(heatmap_author(predictor))
        path = self.store.heatmap_path(case)
        # (File times come from the kernel's coarse clock, up to a tick behind
        # time.time(): a map drawn within a tick of a model change is drawn once more.)
        if path is not None and path.exists() and path.stat().st_mtime >= since:
            return path
        with self.status.activity(State.BUSY):
            try:
                image = stored_model_input(self.store.image_path(case), predictor.input_spec)
            except mp.UnusableImageError as exc:  # e.g. a colour image older software kept
                raise UnusableImageError(f"no heat map for this case: {exc}") from None
            probability = predictor.predict(image).probability
            case = self.store.set_heatmap(case.id, heatmap_png(predictor, image, probability))
        return self.store.heatmap_path(case)
