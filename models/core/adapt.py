"""Adapt the model to a clinic on the device, in NumPy: the head alone, or the head with
the backbone's last block (:mod:`models.core.block`) in one of three ways.

Modes (what is trained, and what is shared with the federation):

- ``head``: the head, on embeddings of the frozen block. Shares the head.
- ``fedbn``: the block's batch-norm statistics are recomputed on the clinic's own
  slices and its scale and shift trained with the head; only the head is shared, the
  batch norm stays local (FedBN: it absorbs the clinic's scanner).
- ``lora``: as ``fedbn``, plus a rank-``r`` adapter added to the block's kernel; the
  head and the adapter are shared.
- ``adapter``: the head and a rank-``r`` adapter on the block's kernel, the batch norm
  as the bundle has it; head and adapter are shared, nothing stays local (what the
  appliances run when their bundle carries an adapter).
- ``block``: as ``fedbn``, with the whole kernel trained; head and kernel are shared.

Training is mini-batch Adam on the class-weighted log-loss, with optional L2 and FedProx
pull towards the round's start, and early stopping on a held-out share of the cases;
deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from models.core import block as B
from models.core import head as H
from models.core.head_training import TrainConfig, train_head

MODES = ("head", "fedbn", "lora", "adapter", "block")
LOCAL = (B.GAMMA, B.BETA, B.MEAN, B.VAR)  # never leaves the device in fedbn/lora/block


def shared_names(mode: str) -> tuple[str, ...]:
    """Block arrays a clinic sends besides the head, for ``mode``."""
    return {"head": (), "fedbn": (), "lora": (B.LORA_A, B.LORA_B),
            "adapter": (B.LORA_A, B.LORA_B), "block": (B.KERNEL,)}[mode]


def with_adapter(block: Mapping[str, np.ndarray], rank: int, seed: int = 0) -> B.Block:
    """``block`` with a zero-effect rank-``rank`` adapter (A small random, B zero), unless
    it has one."""
    if B.LORA_A in block:
        return dict(block)
    k = block[B.KERNEL]
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1 / np.sqrt(k.shape[0] * k.shape[1] * k.shape[2]),
                   (k.shape[0] * k.shape[1] * k.shape[2], rank)).astype(np.float32)
    return {**block, B.LORA_A: a, B.LORA_B: np.zeros((rank, k.shape[3]), np.float32)}


@dataclass(frozen=True)
class Adapted:
    """The trained head and block (the block is the given one in mode ``head``)."""

    head: H.Head
    block: B.Block
    epochs: int
    examples: int


def _head_input_gradient(head: Mapping[str, np.ndarray], emb: np.ndarray, y: np.ndarray,
                         weight: np.ndarray) -> np.ndarray:
    """d(mean weighted log-loss)/d(embedding), the head's back-propagation to its input."""
    prob, cache = H.forward(head, emb)
    delta = weight * (prob - y) / len(y)
    hidden = (delta[:, None] * head["output/kernel"][:, 0][None]) * (cache.z > 0)
    return (hidden @ head["hidden/kernel"].T).astype(np.float32)


class _Adam:
    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat = self.m[k] / (1 - 0.9 ** self.t)
            v_hat = self.v[k] / (1 - 0.999 ** self.t)
            params[k] = (params[k] - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(
                np.float32)


def _loss(head: H.Head, block: B.Block, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    logits = H.forward(head, B.embed(block, x))[1].logits
    return float(np.mean(w * (np.maximum(logits, 0) - logits * y
                              + np.log1p(np.exp(-np.abs(logits))))))


def adapt(head: Mapping[str, np.ndarray], block: Mapping[str, np.ndarray], x: np.ndarray,
          y: np.ndarray, mode: str, cfg: TrainConfig = TrainConfig(), rank: int = 4
          ) -> Adapted:
    """Train for ``mode`` on block inputs ``x`` (N, H, W, C) with labels ``y``.

    ValueError for too few examples or one class (as :func:`train_head`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown adaptation mode {mode!r}; choose from {', '.join(MODES)}")
    y = np.asarray(y, np.int64)
    if mode == "head":
        result = train_head(head, B.embed(block, x), y, cfg)
        return Adapted(result.head, dict(block), result.epochs, result.examples)
    if len(y) < cfg.min_examples or len(np.unique(y)) < 2:
        raise ValueError(f"need at least {cfg.min_examples} confirmed examples of both "
                         f"classes, have {len(y)} ({int(y.sum())} tumour)")
    blk = with_adapter(block, rank, cfg.seed) if mode in ("lora", "adapter") else dict(block)
    if mode == "adapter":
        return _descend(dict(head), blk, x, y, shared_names(mode), cfg)
    blk[B.MEAN], blk[B.VAR] = B.batch_statistics(blk, x)
    trainable = (B.GAMMA, B.BETA, *shared_names(mode))
    return _descend(dict(head), blk, x, y, trainable, cfg)


def _descend(head: H.Head, blk: B.Block, x: np.ndarray, y: np.ndarray,
             trainable: tuple[str, ...], cfg: TrainConfig) -> Adapted:
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(y))
    n_val = int(round(cfg.val_fraction * len(y))) if len(y) >= 10 else 0
    val, train = order[:n_val], order[n_val:]
    counts = np.bincount(y[train], minlength=2).astype(float)
    cw = len(train) / (2 * np.maximum(counts, 1)) if cfg.class_weighted else np.ones(2)
    anchor = {**head, **{k: blk[k].copy() for k in trainable}}
    params = {**{k: v.astype(np.float32) for k, v in head.items()},
              **{k: blk[k].astype(np.float32) for k in trainable}}
    adam = _Adam(params, cfg.learning_rate)
    best, best_loss, since, epoch = dict(params), np.inf, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        shuffled = train[rng.permutation(len(train))]
        for start in range(0, len(train), cfg.batch_size):
            idx = shuffled[start:start + cfg.batch_size]
            adam.step(params, _grads(params, blk, x[idx], y[idx], cw, trainable, cfg, anchor))
        if n_val:
            current = _split(params, blk, trainable)
            loss = _loss(*current, x[val], y[val], cw[y[val]])
            if loss < best_loss - 1e-6:
                best, best_loss, since = dict(params), loss, 0
            elif (since := since + 1) >= cfg.patience:
                break
    head_out, blk_out = _split(best if n_val else params, blk, trainable)
    return Adapted(head_out, blk_out, epoch, len(train))


def _split(params: dict[str, np.ndarray], blk: B.Block, trainable: tuple[str, ...]
           ) -> tuple[H.Head, B.Block]:
    head = {k: v for k, v in params.items() if k.startswith(("hidden/", "output/"))}
    return head, {**blk, **{k: params[k] for k in trainable}}


def _grads(params: dict[str, np.ndarray], blk: B.Block, x: np.ndarray, y: np.ndarray,
           cw: np.ndarray, trainable: tuple[str, ...], cfg: TrainConfig,
           anchor: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    head, current = _split(params, blk, trainable)
    emb, cache = B.forward(current, x)
    _, grads = H.loss_and_grads(head, emb, y, class_weight=tuple(cw), l2=cfg.l2,
                                prox_mu=cfg.prox_mu, anchor={k: anchor[k] for k in head})
    d_emb = _head_input_gradient(head, emb, y, cw[y])
    block_grads = B.backward(current, cache, d_emb)
    for k in trainable:
        grads[k] = block_grads[k] + cfg.prox_mu * (params[k] - anchor[k])
    return grads
