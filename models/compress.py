"""Magnitude pruning of Conv/Dense kernels with fine-tuning (no tfmot needed).

Each pruned layer keeps the largest-magnitude fraction of its kernel; the zeroed
weights are held at zero while the model fine-tunes, over a few steps of rising
sparsity, so accuracy recovers. Zeros cost nothing after int8 + gzip.
"""
from __future__ import annotations

import logging

import keras
import numpy as np

from models.train import TrainConfig, fit

logger = logging.getLogger(__name__)

PRUNABLE = (keras.layers.Conv2D, keras.layers.Dense)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean mask keeping the ``1 - sparsity`` largest |weights| (ties kept)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(round(sparsity * weights.size))
    if k == 0:
        return np.ones(weights.shape, bool)
    cut = np.partition(np.abs(weights).ravel(), k - 1)[k - 1]
    return np.abs(weights) > cut


class _HoldMasks(keras.callbacks.Callback):
    """Re-apply the masks after every batch so pruned weights stay at zero."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.masks = masks

    def apply(self, model: keras.Model) -> None:
        for name, mask in self.masks.items():
            kernel = model.get_layer(name).kernel
            kernel.assign(kernel.numpy() * mask)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.apply(self.model)


def prunable_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Conv2D and Dense layers (the wrapper in tfmot fails on Rescaling; we skip it)."""
    return [layer for layer in model.layers if isinstance(layer, PRUNABLE)]


def sparsity_of(model: keras.Model) -> float:
    """Fraction of zero weights over all prunable kernels."""
    kernels = [layer.kernel.numpy() for layer in prunable_layers(model)]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def prune(model: keras.Model, sparsity: float, x_train: np.ndarray, y_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, cfg: TrainConfig, steps: int = 3,
          epochs_per_step: int = 8) -> keras.Model:
    """Prune ``model`` in place to ``sparsity`` in ``steps`` stages, fine-tuning each.

    Fine-tuning uses a tenth of the training learning rate and keeps the last weights.
    """
    if sparsity <= 0:
        return model
    tune = TrainConfig(**{**cfg.to_dict(), "epochs": epochs_per_step,
                          "learning_rate": cfg.learning_rate / 10, "patience": 0})
    for step in range(1, steps + 1):
        target = sparsity * step / steps
        masks = {layer.name: magnitude_mask(layer.kernel.numpy(), target)
                 for layer in prunable_layers(model)}
        hold = _HoldMasks(masks)
        hold.apply(model)
        fit(model, x_train, y_train, x_val, y_val, tune, extra_callbacks=[hold])
        hold.apply(model)  # early stopping may restore weights from before the last batch
        logger.info("pruning step %d/%d: sparsity %.2f", step, steps, sparsity_of(model))
    return model
