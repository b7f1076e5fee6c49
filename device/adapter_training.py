"""Training the head together with the bundle's low-rank adapter on its last block.

When the bundle in service carries an adapter (``block.adapter_rank`` > 0; see
:mod:`models.training.adapter_bundle`), a clinic trains the head and the adapter on its
confirmed cases (:func:`models.core.adapt.adapt`, mode ``adapter``) and shares both; the
block's own weights and batch norm stay as the bundle has them. The block's inputs are
computed again from the stored images at each training: they change with no version
(LiteRT's part of the model is fixed), but are 48 KB a case, too large to keep.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from device.imaging import stored_model_input
from device.store.base import CaseStore
from models.core import block as B
from models.core.adapt import adapt
from models.core.bundle import Bundle
from models.core.head import predict
from models.core.head_training import TrainConfig
from models.core.preprocess import InputSpec
from models.core.runtime import bundle_model

logger = logging.getLogger(__name__)
BATCH = 32  # images through LiteRT at once


@dataclass(frozen=True)
class Trained:
    """The trained arrays, the ones they started from (both: head and adapter), the
    epochs run, and the held-out cases' labels with the probabilities before and after
    (cases whose image could not be read are in neither)."""

    arrays: dict[str, np.ndarray]
    start: dict[str, np.ndarray]
    epochs: int
    gate_y: np.ndarray
    gate_before: np.ndarray
    gate_after: np.ndarray


def block_inputs(store: CaseStore, bundle: Bundle, case_ids: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The last block's inputs of these cases' stored images, and a mask of the cases
    whose image could be read (one that no longer can is left out and logged)."""
    spec = InputSpec.from_dict(bundle.manifest["input"])
    model = bundle_model(bundle, num_threads=1, batch=BATCH)
    images, kept = [], np.zeros(len(case_ids), bool)
    for i, case_id in enumerate(case_ids):
        try:
            images.append(stored_model_input(store.image_path(store.get(case_id)), spec))
            kept[i] = True
        except (OSError, ValueError) as exc:
            logger.warning("case %s left out of training: %s", case_id, exc)
    if not images:
        return np.zeros((0, *bundle.manifest["block"]["input"]), np.float32), kept
    return model.features(np.stack(images)), kept


def train(store: CaseStore, bundle: Bundle, ids: Sequence[str], y: np.ndarray,
          gate: np.ndarray, cfg: TrainConfig) -> Trained:
    """Train the head and adapter of ``bundle`` on the cases ``ids`` (labels ``y``) not
    in ``gate``; ValueError for too few cases or one class (as the head's trainer)."""
    x, kept = block_inputs(store, bundle, ids)
    y, gate = np.asarray(y)[kept], np.asarray(gate)[kept]
    head, block = bundle.load_head(), bundle.load_block()
    assert block is not None and B.LORA_A in block  # the caller checked the bundle
    result = adapt(head, block, x[~gate], y[~gate], "adapter", cfg)
    shared = (B.LORA_A, B.LORA_B)
    return Trained({**result.head, **{k: result.block[k] for k in shared}},
                   {**head, **{k: block[k] for k in shared}}, result.epochs, y[gate],
                   predict(head, B.embed(block, x[gate])),
                   predict(result.head, B.embed(result.block, x[gate])))
