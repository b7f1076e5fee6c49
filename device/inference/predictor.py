"""The ``Predictor`` interface and its registry (Frigate's ``detectors/`` pattern).

A predictor turns a preprocessed image into a probability and the embedding the head
sees. The LiteRT implementation is registered as ``"litert"``; another runtime (an NPU
delegate, say) registers under its own name and nothing above this module changes.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

from models.core import head
from models.core.bundle import ADAPTER, BLOCK, MODEL, Bundle
from models.core.preprocess import InputSpec


@dataclass(frozen=True)
class Prediction:
    """One image's result at the bundle's threshold. ``is_slice`` is False when the
    bundle's slice check says the image does not look like a brain MRI slice (then the
    probability means nothing); ``slice_score`` is None for bundles without the check."""

    probability: float
    label: int
    uncertain: bool
    embedding: np.ndarray
    slice_score: float | None = None
    is_slice: bool = True


class Predictor(ABC):
    """A verified bundle's model, ready to run. Thread-safe."""

    personal = None  # the clinic's own head served on this model (device.personal)

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.threshold = bundle.threshold
        self.uncertain_interval = bundle.uncertain_interval
        self.input_spec = InputSpec.from_dict(bundle.manifest["input"])
        self.slice_check = bundle.load_slice_check()

    @property
    def backbone_id(self) -> str:
        """Names what computes the embedding, which is comparable only under the same
        one, so this keys the embedding cache: the model file's SHA-256, combined with
        its last block's and adapter's when the bundle has them (an adapter changes
        with each federated version)."""
        files = self.bundle.manifest["files"]
        parts = [files[name]["sha256"] for name in (MODEL, BLOCK, ADAPTER) if name in files]
        return parts[0] if len(parts) == 1 else hashlib.sha256(" ".join(parts).encode()
                                                               ).hexdigest()

    @abstractmethod
    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N,) and embeddings (N, D) for preprocessed images."""

    def occlusion_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`probabilities` of many occluded copies (the heat map); may batch."""
        return self.probabilities(images)

    def occlusion_probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.occlusion_outputs(images)[0]

    @property
    def global_predictor(self) -> "Predictor":
        """The bundle's own model (this one, unless a clinic's head is served on it)."""
        return self

    @property
    def head_id(self) -> str | None:
        """The id of the clinic's own head when one is served (device.personal), else
        None: the bundle's head."""
        return None if self.personal is None else self.personal.id

    def predict(self, image: np.ndarray) -> Prediction:
        """Probability, label and uncertainty for one preprocessed image (H, W, C)."""
        prob, emb = self.probabilities(image[None])
        p = float(prob[0])
        low, high = self.uncertain_interval
        score, is_slice = None, True
        if self.slice_check is not None:
            slice_head, slice_threshold = self.slice_check
            score = float(head.predict(slice_head, emb[:1])[0])
            is_slice = score >= slice_threshold
        return Prediction(p, int(p >= self.threshold), low < p < high, emb[0], score,
                          is_slice)


PREDICTORS: dict[str, Callable[[Bundle], Predictor]] = {}


def register(name: str) -> Callable[[type[Predictor]], type[Predictor]]:
    """Class decorator adding a predictor implementation to the registry."""
    def add(cls: type[Predictor]) -> type[Predictor]:
        PREDICTORS[name] = cls
        return cls
    return add


def create_predictor(kind: str, bundle: Bundle) -> Predictor:
    """The registered predictor ``kind`` for ``bundle`` (ValueError naming the choices)."""
    if kind not in PREDICTORS:
        raise ValueError(f"unknown predictor {kind!r}; choose from {', '.join(PREDICTORS)}")
    return PREDICTORS[kind](bundle)
