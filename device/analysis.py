"""One slice through the appliance: decode, preprocess, predict, store; heat maps.

The browser upload, the JSON API and the camera all call :func:`analyse`, so they
share validation, the training preprocessing and the crash-safe store. The heat map
(49 occluded inferences) is rendered on first view by :func:`case_heatmap`, so scripts
that never look at it do not pay for it.
"""
from __future__ import annotations

import logging
import time

from device.exc import UnusableImageError
from device.imaging import decode_upload, stored_model_input
from device.inference.heatmap import heatmap_png
from device.hw.status import State
from models import preprocess as mp

logger = logging.getLogger(__name__)


def analyse(svc, data: bytes, source: str):
    """Analyse one image's bytes and store it as a new case; returns the case.

    Raises the :mod:`device.exc` input errors (400/413/415/422) before anything is
    written: a refused image leaves no trace but a counter.
    """
    upload = decode_upload(data, svc.settings.max_upload_bytes)
    predictor = svc.slot.current  # this request keeps this model even if a swap happens
    with svc.status.activity(State.BUSY):
        start = time.perf_counter()
        try:
            image = mp.preprocess(upload.pixels, predictor.input_spec)
        except mp.UnusableImageError as exc:
            raise UnusableImageError(str(exc)) from None
        result = predictor.predict(image)
        latency_ms = (time.perf_counter() - start) * 1000
        case = svc.store.add_case(
            upload.png(), source=source, width=upload.width, height=upload.height,
            probability=result.probability, predicted_label=result.label,
            threshold=predictor.threshold, uncertain=result.uncertain,
            model_version=predictor.version, latency_ms=latency_ms)
        svc.store.set_embedding(case.id, svc.backbone_id(predictor), result.embedding)
    svc.telemetry.predictions.labels("tumour" if result.label else "no_tumour").inc()
    logger.info("case %s: p=%.3f v%d %.1f ms", case.id, result.probability, predictor.version,
                latency_ms)
    return case


def case_heatmap(svc, case):
    """Path of the case's heat map, rendering and storing it on first request.

    Rendered with the serving model; after a model update that may differ from the
    model that made the prediction, which the page states (``case.model_version``).
    """
    path = svc.store.heatmap_path(case)
    if path is not None and path.exists():
        return path
    predictor = svc.slot.current
    with svc.status.activity(State.BUSY):
        try:
            image = stored_model_input(svc.store.image_path(case), predictor.input_spec)
        except mp.UnusableImageError as exc:  # e.g. a colour image older software kept
            raise UnusableImageError(f"no heat map for this case: {exc}") from None
        probability = predictor.predict(image).probability
        case = svc.store.set_heatmap(case.id, heatmap_png(predictor, image, probability))
    return svc.store.heatmap_path(case)
