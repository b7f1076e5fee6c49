"""One slice through the appliance: decode, preprocess, predict, heat map, store.

The browser upload, the JSON API and the camera all call :func:`analyse`, so they
share validation, the training preprocessing and the crash-safe store.
"""
from __future__ import annotations

import logging
import time

from device.exc import UnusableImageError
from device.imaging import decode_upload
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
        heat = heatmap_png(predictor, image, result.probability)
        case = svc.store.add_case(
            upload.png(), source=source, width=upload.width, height=upload.height,
            probability=result.probability, predicted_label=result.label,
            threshold=predictor.threshold, uncertain=result.uncertain,
            model_version=predictor.version, latency_ms=latency_ms, heatmap_png=heat)
        svc.store.set_embedding(case.id, svc.backbone_id(predictor), result.embedding)
    svc.telemetry.predictions.labels("tumour" if result.label else "no_tumour").inc()
    logger.info("case %s: p=%.3f v%d %.1f ms", case.id, result.probability, predictor.version,
                latency_ms)
    return case
