"""One slice through the appliance: decode, preprocess, predict, store; heat maps.

The browser upload, the JSON API and the camera all call :meth:`Analyser.analyse`, so
they share validation, the training preprocessing and the crash-safe store. The case,
its image and its embedding are stored in one durable step. The heat map (169 occluded
inferences, in batches) is drawn after the answer, in the background
(:mod:`device.heatmaps`), or on first view if that has not happened yet.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from device.admission import MemoryBudget, analysis_bytes
from device.exc import NotASliceError, NotFoundError, UnusableImageError
from device.heatmaps import HeatmapJob, HeatmapQueue
from device.hw.status import Indicator, State
from device.imaging import Upload, decode_upload
from device.imaging.decode import stored_input_and_crop
from device.inference.heatmap import FORMAT, FULL_SCALE_DROP, heatmap_png
from device.inference.predictor import Prediction, Predictor
from device.inference.slot import ModelSlot
from device.store.base import Case, CaseInfo, CaseStore, IdempotencyKey
from device.studies import StudyKeys
from device.telemetry import Telemetry
from models.core import preprocess as mp

logger = logging.getLogger(__name__)


def heatmap_author(predictor: Predictor) -> str:
    """What a heat map depends on besides the slice: the model (with the clinic's own head,
    if one is served), the colour scale and the map's format."""
    return (f"v{predictor.version} {predictor.bundle.signer} {FULL_SCALE_DROP:g} {FORMAT} "
            f"{predictor.head_id or 'bundle'}")


def model_input(upload: Upload, predictor: Predictor) -> tuple[np.ndarray, mp.Crop]:
    """The training preprocessing of an upload, for ``predictor``'s input, and where
    that input lies in the upload.

    Raises
    ------
    UnusableImageError
        A slice the preprocessing refuses (blank, colour); 422.
    """
    try:
        return mp.preprocess_with_crop(upload.pixels, predictor.input_spec)
    except mp.UnusableImageError as exc:
        raise UnusableImageError(str(exc)) from None


@dataclass
class Analyser:
    """Turns image bytes into stored cases with the model in ``slot``."""

    slot: ModelSlot
    store: CaseStore
    status: Indicator
    telemetry: Telemetry
    max_upload_bytes: int
    heatmaps: HeatmapQueue = field(default_factory=HeatmapQueue)
    study_keys: StudyKeys = field(default_factory=lambda: StudyKeys(secrets.token_bytes(32)))
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    _drawing: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def analyse(self, data: bytes, source: str, idempotency: IdempotencyKey | None = None,
                info: CaseInfo | None = None, archive: str | None = None) -> Case:
        """Analyse one image's bytes and store it as a new case; returns the case.

        Raises the :mod:`device.exc` input errors (400/413/415/422) before anything is
        written: a refused image leaves no trace but a counter; one the bundle's slice
        check refuses (NotASliceError, 422) gets no prediction. With ``idempotency``,
        the key is stored with the case (DuplicateKey if another request took it), and
        ``info`` (the clinic's reference, note and file name) too. The case joins the
        study of its DICOM StudyInstanceUID, else that of ``archive`` (the id of the
        archive it came in), if either (:mod:`device.studies`).
        """
        predictor = self.slot.current  # this request keeps this model even if swapped
        with self.status.activity(State.BUSY), self.heatmaps.upload():
            start = time.perf_counter()
            cost = analysis_bytes(data) if len(data) <= self.max_upload_bytes else 0
            with self.memory.hold(cost):  # large images take turns; too large: refused
                upload = decode_upload(data, self.max_upload_bytes)
                image, crop = model_input(upload, predictor)
            result = predictor.predict(image)
            if not result.is_slice:  # the bundle's slice check, on the model's embedding
                logger.info("refused: slice score %.3f", result.slice_score)
                raise NotASliceError(NotASliceError.message)
            latency_ms = (time.perf_counter() - start) * 1000
            study = self.study_keys.ref(upload.ids, archive)
            if study is not None:
                info = replace(info or CaseInfo(), study=study)
            case = self._store(upload, source, predictor, result, latency_ms, idempotency,
                               info)
        self.heatmaps.submit(HeatmapJob(case.id, predictor, image, result.probability, crop))
        self.telemetry.predictions.labels("tumour" if result.label else "no_tumour").inc()
        logger.info("case %s: p=%.3f v%d %.1f ms", case.id, result.probability,
                    predictor.version, latency_ms)
        return case

    def _store(self, upload: Upload, source: str, predictor: Predictor, result: Prediction,
               latency_ms: float, idempotency: IdempotencyKey | None,
               info: CaseInfo | None) -> Case:
        """The case, its image as uploaded (without metadata) and its embedding, in one
        durable step."""
        return self.store.add_case(
            upload.stored(), source=source, width=upload.width, height=upload.height,
            probability=result.probability, predicted_label=result.label,
            threshold=predictor.threshold, uncertain=result.uncertain,
            model_version=predictor.version, latency_ms=latency_ms,
            backbone_id=predictor.backbone_id, embedding=result.embedding,
            idempotency=idempotency, info=info, raw=upload.raw_png(),
            head=predictor.head_id)

    def heatmap(self, case: Case) -> Path:
        """Path of the case's heat map, drawn now if the background has not drawn it yet
        with the model in service (or the colour scale has changed since)."""
        predictor = self.slot.current
        since = self.store.heatmaps_valid_since(heatmap_author(predictor))
        if (path := self._fresh(case, since)) is not None:
            return path
        job = self.heatmaps.take(case.id)  # queued: its model input saves a decode
        with self.status.activity(State.BUSY), self._drawing:
            case = self.store.get(case.id)
            if (path := self._fresh(case, since)) is not None:  # drawn while we waited
                return path
            if job is not None and job.predictor is predictor:
                image, probability, crop = job.image, job.probability, job.crop
            else:
                image, crop = self._stored_input(case, predictor)
                probability = predictor.predict(image).probability
            case = self.store.set_heatmap(case.id, heatmap_png(predictor, image, probability,
                                                               crop))
        path = self.store.heatmap_path(case)
        assert path is not None  # set_heatmap names one
        return path

    def _stored_input(self, case: Case, predictor: Predictor) -> tuple[np.ndarray, mp.Crop]:
        """The model input of a stored case's image, as at its upload, and its crop."""
        path = self.store.image_path(case)
        with open(path, "rb") as fh:
            header = fh.read(1 << 16)  # (a stored image has no large metadata segment)
        with self.memory.hold(analysis_bytes(header)):
            try:
                return stored_input_and_crop(path, predictor.input_spec)
            except mp.UnusableImageError as exc:  # e.g. colour kept by older software
                raise UnusableImageError(f"no heat map for this case: {exc}") from None

    def draw_queued(self, job: HeatmapJob) -> None:
        """Draw a queued heat map unless the model changed or it is drawn already."""
        predictor = self.slot.current
        if job.predictor is not predictor:  # it would be stale at once
            return
        since = self.store.heatmaps_valid_since(heatmap_author(predictor))
        with self._drawing:
            try:
                case = self.store.get(job.case_id)
                if self._fresh(case, since) is None:
                    self.store.set_heatmap(case.id, heatmap_png(
                        predictor, job.image, job.probability, job.crop))
            except NotFoundError:  # deleted meanwhile
                return

    def _fresh(self, case: Case, since: float) -> Path | None:
        """The case's heat map if it exists and was drawn at or after ``since``."""
        path = self.store.heatmap_path(case)
        # (File times come from the kernel's coarse clock, up to a tick behind
        # time.time(): a map drawn within a tick of a model change is drawn once more.)
        try:
            return path if path is not None and path.stat().st_mtime >= since else None
        except FileNotFoundError:
            return None
