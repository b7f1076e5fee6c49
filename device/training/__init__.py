"""On-device training of the dense head on confirmed embeddings (NumPy only).

Import the pure functions from here: :func:`train_head` with a :class:`TrainConfig`,
plus :func:`forward`, :func:`predict`, :func:`loss_and_grads` and :func:`evaluate_head`.
"""
from device.training.head import (
    ForwardCache, Head, TrainConfig, TrainResult, evaluate_head, forward, loss_and_grads,
    predict, train_head,
)

__all__ = [
    "ForwardCache", "Head", "TrainConfig", "TrainResult", "evaluate_head", "forward",
    "loss_and_grads", "predict", "train_head",
]
