"""Training the dense head on confirmed embeddings: mini-batch Adam with class weights,
FedProx and early stopping, in pure NumPy (the maths is :mod:`models.core.head`).

``train_head`` works on float32 copies (the wire format of head weights), never
modifies its inputs, and is deterministic for a given ``TrainConfig.seed``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from models.core.head import (
    Head, _as_head, _data_loss, _embeddings, _forward, _labels, _loss_grads, _params,
    _penalty, evaluate_head,
)
from models.core.metrics import roc_auc

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_head` (mini-batch Adam with early stopping).

    Attributes
    ----------
    epochs : int
        Maximum passes over the training part.
    batch_size : int
        Examples per Adam step (the last batch of an epoch may be smaller).
    learning_rate : float
        Adam step size :math:`\\alpha`; Adam uses :math:`\\beta_1 = 0.9`,
        :math:`\\beta_2 = 0.999`, :math:`\\epsilon = 10^{-8}`.
    l2 : float
        Weight decay on the kernels (see :func:`loss_and_grads`).
    prox_mu : float
        FedProx proximal weight towards the round's global head.
    val_fraction : float
        Share of each class held out for validation and early stopping, in [0, 1).
    patience : int
        Epochs without a lower validation loss before stopping.
    min_examples : int
        Fewer confirmed examples than this refuse to train.
    seed : int
        Seeds the split and the batch order; same seed, same data -> same head bytes.
    class_weighted : bool
        Weight classes by inverse frequency ``n / (2 n_c)`` of the training part;
        False weights every example 1.
    """

    epochs: int = 200
    batch_size: int = 16
    learning_rate: float = 1e-3
    l2: float = 1e-4
    prox_mu: float = 0.01
    val_fraction: float = 0.2
    patience: int = 20
    min_examples: int = 8
    seed: int = 0
    class_weighted: bool = True
    beta1: float = field(default=0.9, repr=False)
    beta2: float = field(default=0.999, repr=False)
    epsilon: float = field(default=1e-8, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {minimum}, "
                                 f"got {v!r}")

        for name in ("epochs", "batch_size", "patience"):
            positive_int(name)
        positive_int("min_examples", 2)
        positive_int("seed", 0)
        checks = {"learning_rate": lambda v: v > 0, "l2": lambda v: v >= 0,
                  "prox_mu": lambda v: v >= 0, "val_fraction": lambda v: 0 <= v < 1,
                  "beta1": lambda v: 0 <= v < 1, "beta2": lambda v: 0 <= v < 1,
                  "epsilon": lambda v: v > 0}
        for name, ok in checks.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                    or not np.isfinite(v) or not ok(v):
                raise ValueError(f"TrainConfig.{name} is out of range: {v!r}")


@dataclass
class TrainResult:
    """Outcome of :func:`train_head`.

    Attributes
    ----------
    head : dict of str to numpy.ndarray
        The trained head (float32 copies; the best-validation head when early stopping
        was active).
    history : dict of str to list of float
        Per epoch: ``loss`` (the full objective on the training part), ``val_loss``
        (class-weighted log-loss on the validation part) and ``val_auc``; the ``val_``
        lists are empty without a validation part.
    val_metrics : dict or None
        :func:`evaluate_head` of ``head`` on the validation part at 0.5, or None when
        there is no validation part.
    epochs : int
        Epochs actually run.
    examples : int
        Examples the head was fitted on (the training part; the weight FedAvg gives
        this update).
    val_examples : int
        Examples held out for validation (0 without early stopping).
    best_epoch : int
        Epoch whose head was returned (1-based).
    early_stopping : bool
        Whether validation-based early stopping was active.
    stopped_early : bool
        Whether training stopped before ``cfg.epochs`` for lack of improvement.
    class_weight : tuple of float
        ``(w0, w1)`` used in the loss.
    val_indices : numpy.ndarray
        Row indices of ``x`` held out for validation (sorted).
    notes : tuple of str
        Human-readable remarks, e.g. why early stopping was off.
    """

    head: Head
    history: dict[str, list[float]]
    val_metrics: dict[str, Any] | None
    epochs: int
    examples: int
    val_examples: int = 0
    best_epoch: int = 0
    early_stopping: bool = False
    stopped_early: bool = False
    class_weight: tuple[float, float] = (1.0, 1.0)
    val_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    notes: tuple[str, ...] = ()


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator,
                      ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Train/validation indices with each class split in proportion; a note if no val."""
    everything = np.arange(y.size)
    if fraction == 0:
        return everything, everything[:0], "val_fraction is 0: no validation part, " \
                                           "no early stopping"
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        return everything, everything[:0], (
            f"a class has fewer than 2 examples (counts {counts.tolist()}): no validation "
            f"part, no early stopping; trained on all examples for the full epochs")
    val = []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        # At least one of each class in validation, at least one left for training.
        k = int(np.clip(round(fraction * idx.size), 1, idx.size - 1))
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(everything, val_idx), val_idx, None


def train_head(head: Mapping[str, np.ndarray], x: Any, y: Any,
               cfg: TrainConfig | None = None, *,
               anchor: Mapping[str, np.ndarray] | None = None) -> TrainResult:
    """Fine-tune the head on confirmed embeddings with mini-batch Adam.

    The examples are split per class into a training and a validation part
    (``cfg.val_fraction``, at least one of each class in validation). Each epoch visits
    the training part in a seeded random order in batches of ``cfg.batch_size``, one
    Adam step per batch on :func:`~models.core.head.loss_and_grads`. Class weights are
    :math:`w_c = n / (2 n_c)` over the training part (both classes weigh the same in
    total), or 1 with ``cfg.class_weighted=False``. Training stops after
    ``cfg.patience`` epochs without a lower validation loss and the best head is
    returned. Without a validation part (a class with fewer than 2 examples, or
    ``val_fraction=0``) all examples train for ``cfg.epochs`` and ``notes`` says so.

    Parameters
    ----------
    head : mapping of str to numpy.ndarray
        Starting head (e.g. the current global head); never modified.
    x : array_like, shape (N, D)
        Embeddings of confirmed cases.
    y : array_like, shape (N,)
        Confirmed 0/1 labels (1 = tumour).
    cfg : TrainConfig, optional
        Hyper-parameters; defaults to ``TrainConfig()``.
    anchor : mapping of str to numpy.ndarray, optional
        FedProx anchor; defaults to ``head``, the head the round started from.

    Raises
    ------
    ValueError
        Fewer than ``cfg.min_examples`` examples, a single class, malformed inputs or
        configuration.
    FloatingPointError
        The loss became non-finite (learning rate far too high).
    """
    cfg = TrainConfig() if cfg is None else cfg
    cfg.validate()
    params, anc, xs, ys = _checked(head, anchor, x, y, cfg)
    rng = np.random.default_rng(cfg.seed)
    data = _Parts.split(xs, ys, cfg, rng)
    run = _Run(params, anc, cfg)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        run.epoch(data, rng, epoch)
        if run.validate(data, epoch):
            break
    params, best_epoch = (run.best, run.best_epoch) if data.has_val else (run.params, epoch)
    trained = _as_head(params)
    val_metrics = evaluate_head(trained, data.x_va, data.y_va) if data.has_val else None
    log.info("head trained: %d examples (+%d validation), %d epochs, best epoch %d",
             data.train_idx.size, data.val_idx.size, epoch, best_epoch)
    return TrainResult(head=trained, history=run.history, val_metrics=val_metrics,
                       epochs=epoch, examples=int(data.train_idx.size),
                       val_examples=int(data.val_idx.size), best_epoch=best_epoch,
                       early_stopping=data.has_val, stopped_early=run.stopped_early,
                       class_weight=(float(data.cw[0]), float(data.cw[1])),
                       val_indices=data.val_idx, notes=data.notes)


def _checked(head: Mapping[str, np.ndarray], anchor: Mapping[str, np.ndarray] | None,
             x: Any, y: Any, cfg: TrainConfig
             ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """float32 copies of the head and anchor, checked embeddings and labels; ValueError
    on too few examples or a single class."""
    params = [a.copy() for a in _params(head, np.float32)]  # copies: input untouched
    anc = [a.copy() for a in _params(head if anchor is None else anchor, np.float32,
                                     name="anchor")]
    if any(a.shape != b.shape for a, b in zip(params, anc)):
        raise ValueError("anchor and head have different shapes")
    xs = _embeddings(x, params[0].shape[0], np.float32)
    ys = _labels(y, xs.shape[0])
    counts = np.bincount(ys, minlength=2)
    if ys.size < cfg.min_examples:
        raise ValueError(f"need at least {cfg.min_examples} confirmed examples to train "
                         f"the head, got {ys.size}")
    if counts.min() == 0:
        raise ValueError(f"confirmed examples are all of class {int(ys[0])}: the head "
                         f"cannot learn from a single class (counts {counts.tolist()})")
    return params, anc, xs, ys


@dataclass
class _Parts:
    """The training and validation parts, their labels as floats and example weights."""

    x_tr: np.ndarray
    yf_tr: np.ndarray
    w_tr: np.ndarray
    x_va: np.ndarray
    y_va: np.ndarray
    yf_va: np.ndarray
    w_va: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    cw: np.ndarray
    notes: tuple[str, ...]

    @property
    def has_val(self) -> bool:
        return self.val_idx.size > 0

    @classmethod
    def split(cls, xs: np.ndarray, ys: np.ndarray, cfg: TrainConfig,
              rng: np.random.Generator) -> "_Parts":
        train_idx, val_idx, note = _stratified_split(ys, cfg.val_fraction, rng)
        y_tr, y_va = ys[train_idx], ys[val_idx]
        n_c = np.bincount(y_tr, minlength=2)
        cw = n_c.sum() / (2.0 * n_c) if cfg.class_weighted else np.ones(2)
        return cls(xs[train_idx], y_tr.astype(np.float32), cw.astype(np.float32)[y_tr],
                   xs[val_idx], y_va, y_va.astype(np.float32), cw.astype(np.float32)[y_va],
                   train_idx, val_idx, cw, (note,) if note else ())


class _Run:
    """Adam state, history and the best head of one training run."""

    def __init__(self, params: list[np.ndarray], anchor: list[np.ndarray],
                 cfg: TrainConfig) -> None:
        self.params, self.anchor, self.cfg = params, anchor, cfg
        self.m = [np.zeros_like(a) for a in params]
        self.v = [np.zeros_like(a) for a in params]
        self.step = 0
        self.history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_auc": []}
        self.best = [a.copy() for a in params]
        self.best_loss, self.best_epoch, self.wait = np.inf, 0, 0
        self.stopped_early = False

    def epoch(self, data: _Parts, rng: np.random.Generator, number: int) -> None:
        """One pass over the training part, one Adam step per batch; records the loss."""
        cfg, (b1, b2) = self.cfg, (self.cfg.beta1, self.cfg.beta2)
        order = rng.permutation(data.train_idx.size)
        for start in range(0, order.size, cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            _, grads = _loss_grads(self.params, data.x_tr[b], data.yf_tr[b], data.w_tr[b],
                                   cfg.l2, cfg.prox_mu, self.anchor)
            self.step += 1
            c1, c2 = 1.0 - b1 ** self.step, 1.0 - b2 ** self.step
            for p, g, mi, vi in zip(self.params, grads, self.m, self.v):
                mi *= b1
                mi += (1.0 - b1) * g
                vi *= b2
                vi += (1.0 - b2) * (g * g)
                # stays float32 (NEP 50)
                p -= cfg.learning_rate * (mi / c1) / (np.sqrt(vi / c2) + cfg.epsilon)
        loss = _data_loss(_forward(self.params, data.x_tr).logits, data.yf_tr, data.w_tr) \
            + _penalty(self.params, cfg.l2, cfg.prox_mu, self.anchor)
        if not np.isfinite(loss):
            raise FloatingPointError(f"head training diverged at epoch {number} "
                                     f"(loss {loss}); lower the learning rate")
        self.history["loss"].append(loss)

    def validate(self, data: _Parts, epoch: int) -> bool:
        """Measure the validation part, keep the best head; whether to stop now."""
        if not data.has_val:
            return False
        logits = _forward(self.params, data.x_va).logits
        val_loss = _data_loss(logits, data.yf_va, data.w_va)
        self.history["val_loss"].append(val_loss)
        self.history["val_auc"].append(roc_auc(data.y_va, logits.astype(np.float64)))
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.wait = val_loss, epoch, 0
            self.best = [a.copy() for a in self.params]
            return False
        self.wait += 1
        if self.wait >= self.cfg.patience:
            self.stopped_early = epoch < self.cfg.epochs
            return True
        return False
