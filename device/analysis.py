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
from device.inference.heatmap import FULL_SCALE_DROP, heatmap_png
from device.hw.status import State
from models.core import preprocess as mp

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


# Settings key: which model and colour scale drew the stored heat maps, and since when.
HEATMAPS_DRAWN_BY = "heatmaps_drawn_by"


def heatmap_author(predictor) -> str:
    """What a heat map depends on besides the slice: the model and the colour scale."""
    return f"v{predictor.version} {predictor.bundle.signer} {FULL_SCALE_DROP:g}"


def _heatmaps_valid_since(svc, author: str) -> float:
    """Epoch seconds since which stored heat maps are ``author``'s (older ones are redrawn
    when next viewed: after a model update, or a change of the colour scale)."""
    stored, _, since = (svc.accounts.get_setting(HEATMAPS_DRAWN_BY) or "").partition("@")
    if stored != author:
        since = repr(time.time())
        svc.accounts.set_setting(HEATMAPS_DRAWN_BY, f"{author}@{since}")
    return float(since)


def case_heatmap(svc, case):
    """Path of the case's heat map, drawn and stored on first request by the model in
    service, and drawn again when that model (or the colour scale) has changed since."""
    predictor = svc.slot.current
    since = _heatmaps_valid_since(svc, heatmap_author(predictor))
    path = svc.store.heatmap_path(case)
    # (File times come from the kernel's coarse clock, up to a tick behind time.time():
    # a map drawn within a tick of a model change is drawn once more.)
    if path is not None and path.exists() and path.stat().st_mtime >= since:
        return path
    with svc.status.activity(State.BUSY):
        try:
            image = stored_model_input(svc.store.image_path(case), predictor.input_spec)
        except mp.UnusableImageError as exc:  # e.g. a colour image older software kept
            raise UnusableImageError(f"no heat map for this case: {exc}") from None
        probability = predictor.predict(image).probability
        case = svc.store.set_heatmap(case.id, heatmap_png(predictor, image, probability))
    return svc.store.heatmap_path(case)
