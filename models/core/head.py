"""On-device retraining of the dense head, in pure NumPy (no TensorFlow on the Pi).

The head maps a backbone embedding :math:`x \\in \\mathbb{R}^D` to a tumour probability:

.. math::

    z = x W_1 + b_1, \\quad h = \\max(z, 0), \\quad s = h W_2 + b_2, \\quad
    p = \\sigma(s) = 1 / (1 + e^{-s})

with ``hidden/kernel`` :math:`W_1` (D, H), ``hidden/bias`` :math:`b_1` (H,),
``output/kernel`` :math:`W_2` (H, 1) and ``output/bias`` :math:`b_2` (1,), the arrays
named by :data:`models.core.weights.HEAD_NAMES`. Everything works on logits ``s`` so that
neither the sigmoid nor the log-loss overflows for large ``|s|``.

The functions are pure: they never modify the arrays they are given. ``train_head``
works on float32 copies (the wire format of head weights) and is deterministic for a
given ``TrainConfig.seed``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from models.core.metrics import binary_metrics, roc_auc
from models.core.weights import HEAD_NAMES, head_shapes

log = logging.getLogger(__name__)

Head = dict[str, np.ndarray]
_Params = list[np.ndarray]  # [W1, b1, W2, b2], in HEAD_NAMES order


class ForwardCache(NamedTuple):
    """Intermediate values of :func:`forward`, for back-propagation."""

    x: np.ndarray       # (N, D) input embeddings
    z: np.ndarray       # (N, H) hidden pre-activations
    h: np.ndarray       # (N, H) hidden activations relu(z)
    logits: np.ndarray  # (N,) output logits s


# ---------------------------------------------------------------- validation helpers

def _dtype(head: Mapping[str, np.ndarray], x: Any) -> np.dtype:
    """Compute dtype: the wider of the head's and the inputs' float types, >= float32."""
    return np.result_type(np.asarray(head["hidden/kernel"]).dtype,
                          np.asarray(x).dtype, np.float32)


def _params(head: Mapping[str, np.ndarray], dtype: np.dtype | type | None = None,
            name: str = "head") -> _Params:
    """Check the four arrays form one head and return them (as views when possible)."""
    missing = [n for n in HEAD_NAMES if n not in head]
    if missing:
        raise ValueError(f"{name} is missing arrays {missing}; expected {list(HEAD_NAMES)}")
    arrays = [np.asarray(head[n]) for n in HEAD_NAMES]
    for n, a in zip(HEAD_NAMES, arrays):
        if a.dtype.kind not in "f":
            raise ValueError(f"{name}: {n} has dtype {a.dtype}, expected a float dtype")
    if arrays[0].ndim != 2:
        raise ValueError(f"{name}: hidden/kernel has shape {arrays[0].shape}, expected (D, H)")
    shapes = head_shapes(*arrays[0].shape)
    for n, a in zip(HEAD_NAMES, arrays):
        if a.shape != shapes[n]:
            raise ValueError(f"{name}: {n} has shape {a.shape}, expected {shapes[n]}")
    if dtype is not None:
        arrays = [a.astype(dtype, copy=False) for a in arrays]
    return arrays


def _embeddings(x: Any, dim: int, dtype: np.dtype | type) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise ValueError(f"x must be a 2-D numeric array (N, D), got shape {a.shape}")
    if a.shape[1] != dim:
        raise ValueError(f"x has {a.shape[1]} features but the head expects D={dim}")
    a = a.astype(dtype, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("x must be finite (no NaN/inf)")
    return a


def _labels(y: Any, n: int) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.dtype.kind not in "biuf":
        raise ValueError(f"y must be a 1-D array of 0/1 labels, got shape {a.shape}")
    if a.size != n:
        raise ValueError(f"y has {a.size} labels but x has {n} rows")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("y must contain only 0/1 labels")
    return a.astype(np.int64)


def _class_weight(class_weight: Sequence[float]) -> np.ndarray:
    w = np.asarray(class_weight, dtype=np.float64)
    if w.shape != (2,) or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"class_weight must be two positive finite floats (w0, w1), "
                         f"got {class_weight!r}")
    return w


def _as_head(params: Sequence[np.ndarray]) -> Head:
    return {n: np.array(p, copy=True) for n, p in zip(HEAD_NAMES, params)}


# ---------------------------------------------------------------------- numerical core

def _sigmoid(s: np.ndarray) -> np.ndarray:
    # exp(-|s|) <= 1 never overflows; pick the algebraically equal form per sign.
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(s.dtype, copy=False)


def _bce_with_logits(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    # -y log p - (1-y) log(1-p) == max(s, 0) - s*y + log(1 + exp(-|s|))
    return np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))


def _forward(p: _Params, x: np.ndarray) -> ForwardCache:
    z = x @ p[0] + p[1]
    h = np.maximum(z, 0)
    logits = (h @ p[2])[:, 0] + p[3][0]
    return ForwardCache(x, z, h, logits)


def _data_loss(logits: np.ndarray, y: np.ndarray, sample_w: np.ndarray) -> float:
    return float(np.mean(sample_w * _bce_with_logits(logits, y)))


def _penalty(p: _Params, l2: float, prox_mu: float, anchor: _Params | None) -> float:
    total = 0.0
    if l2:
        total += 0.5 * l2 * float(np.sum(p[0] * p[0]) + np.sum(p[2] * p[2]))
    if prox_mu and anchor is not None:
        total += 0.5 * prox_mu * sum(float(np.sum((a - b) ** 2)) for a, b in zip(p, anchor))
    return total


def _loss_grads(p: _Params, x: np.ndarray, y: np.ndarray, sample_w: np.ndarray, l2: float,
                prox_mu: float, anchor: _Params | None) -> tuple[float, _Params]:
    cache = _forward(p, x)
    n = x.shape[0]
    loss = _data_loss(cache.logits, y, sample_w) + _penalty(p, l2, prox_mu, anchor)
    ds = (sample_w * (_sigmoid(cache.logits) - y) / n).astype(x.dtype, copy=False)  # (N,)
    g_w2 = cache.h.T @ ds[:, None]
    g_b2 = np.sum(ds, keepdims=True)
    dz = (ds[:, None] * p[2][:, 0]) * (cache.z > 0)
    g_w1 = x.T @ dz
    g_b1 = np.sum(dz, axis=0)
    grads = [g_w1, g_b1, g_w2, g_b2]
    if l2:
        grads[0] += l2 * p[0]
        grads[2] += l2 * p[2]
    if prox_mu and anchor is not None:
        for g, a, b in zip(grads, p, anchor):
            g += prox_mu * (a - b)
    return loss, grads


# ------------------------------------------------------------------------- public API

def forward(head: Mapping[str, np.ndarray], x: Any) -> tuple[np.ndarray, ForwardCache]:
    """Run the head on embeddings.

    Computes :math:`z = xW_1 + b_1`, :math:`h = \\mathrm{relu}(z)`,
    :math:`s = hW_2 + b_2` and :math:`p = \\sigma(s)`, the sigmoid evaluated as
    :math:`1/(1+e^{-s})` for :math:`s \\ge 0` and :math:`e^{s}/(1+e^{s})` otherwise,
    so it never overflows.

    Parameters
    ----------
    head : mapping of str to numpy.ndarray
        Arrays keyed by :data:`models.core.weights.HEAD_NAMES`.
    x : array_like, shape (N, D)
        Finite embeddings.

    Returns
    -------
    prob : numpy.ndarray, shape (N,)
        Probability of class 1 (tumour), in the wider of the head's and ``x``'s float
        dtype (at least float32).
    cache : ForwardCache
        ``x``, ``z``, ``h`` and ``logits``, for back-propagation and log-losses.

    Raises
    ------
    ValueError
        Malformed head, wrong embedding size, non-finite embeddings.
    """
    dtype = _dtype(head, x)
    p = _params(head, dtype)
    cache = _forward(p, _embeddings(x, p[0].shape[0], dtype))
    return _sigmoid(cache.logits), cache


def predict(head: Mapping[str, np.ndarray], x: Any) -> np.ndarray:
    """Probabilities of class 1, shape (N,); see :func:`forward`."""
    return forward(head, x)[0]


def loss_and_grads(head: Mapping[str, np.ndarray], x: Any, y: Any, *,
                   class_weight: tuple[float, float] = (1.0, 1.0), l2: float = 0.0,
                   prox_mu: float = 0.0, anchor: Mapping[str, np.ndarray] | None = None,
                   ) -> tuple[float, Head]:
    """Regularised, class-weighted log-loss of the head and its gradients.

    .. math::

        L(\\theta) = \\frac{1}{N} \\sum_i w_{y_i} \\ell(s_i, y_i)
            + \\frac{\\lambda}{2} (\\lVert W_1 \\rVert^2 + \\lVert W_2 \\rVert^2)
            + \\frac{\\mu}{2} \\lVert \\theta - \\theta_0 \\rVert^2

    where :math:`\\ell(s, y) = \\max(s, 0) - sy + \\log(1 + e^{-|s|})` is the binary
    cross-entropy written on the logit (stable for any :math:`s`), :math:`w_c` the class
    weights, :math:`\\lambda` = ``l2`` (kernels only, not biases) and :math:`\\mu` =
    ``prox_mu`` the FedProx proximal weight towards the anchor :math:`\\theta_0` (the
    global head the round started from; all four arrays). Back-propagation:

    .. math::

        \\delta_i = w_{y_i} (p_i - y_i) / N, \\quad
        \\nabla W_2 = h^T \\delta, \\quad \\nabla b_2 = \\textstyle\\sum_i \\delta_i, \\quad
        \\Delta = (\\delta W_2^T) \\odot [z > 0], \\quad
        \\nabla W_1 = x^T \\Delta, \\quad \\nabla b_1 = \\textstyle\\sum_i \\Delta_i

    plus :math:`\\lambda W` on the kernels and :math:`\\mu (\\theta - \\theta_0)` on every
    array.

    Parameters
    ----------
    head : mapping of str to numpy.ndarray
        Arrays keyed by :data:`models.core.weights.HEAD_NAMES`.
    x : array_like, shape (N, D)
        Embeddings.
    y : array_like, shape (N,)
        0/1 labels.
    class_weight : tuple of float
        ``(w0, w1)``, weight of the examples of class 0 and of class 1 (positive).
    l2 : float
        L2 (weight-decay) coefficient on the kernels, >= 0.
    prox_mu : float
        FedProx coefficient, >= 0; ignored when ``anchor`` is None.
    anchor : mapping of str to numpy.ndarray, optional
        The head the proximal term pulls towards (same shapes as ``head``).

    Returns
    -------
    loss : float
        :math:`L(\\theta)`.
    grads : dict of str to numpy.ndarray
        :math:`\\partial L / \\partial \\theta`, keyed and shaped like ``head``, in the
        compute dtype (the wider of the head's and ``x``'s, at least float32).
    """
    if not (np.isfinite(l2) and l2 >= 0 and np.isfinite(prox_mu) and prox_mu >= 0):
        raise ValueError(f"l2 and prox_mu must be finite and >= 0, got {l2!r}, {prox_mu!r}")
    dtype = _dtype(head, x)
    p = _params(head, dtype)
    xs = _embeddings(x, p[0].shape[0], dtype)
    ys = _labels(y, xs.shape[0])
    if xs.shape[0] == 0:
        raise ValueError("loss_and_grads needs at least one example")
    sample_w = _class_weight(class_weight).astype(dtype)[ys]
    anc = None if anchor is None else _params(anchor, dtype, name="anchor")
    if anc is not None and any(a.shape != b.shape for a, b in zip(p, anc)):
        raise ValueError("anchor and head have different shapes")
    loss, grads = _loss_grads(p, xs, ys.astype(dtype), sample_w, float(l2), float(prox_mu),
                              anc)
    return loss, dict(zip(HEAD_NAMES, grads))


def evaluate_head(head: Mapping[str, np.ndarray], x: Any, y: Any,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Screening metrics of the head on labelled embeddings.

    Returns
    -------
    dict
        :func:`models.core.metrics.binary_metrics` of ``predict(head, x)`` at ``threshold``
        (AUC, sensitivity, specificity, ...; NaN where undefined).
    """
    prob = predict(head, x)
    return binary_metrics(_labels(y, prob.shape[0]), prob.astype(np.float64), threshold)


# ----------------------------------------------------------------------------- training

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
    the training part in a seeded random order in batches of ``cfg.batch_size`` and
    takes one Adam step per batch on :func:`loss_and_grads`:

    .. math::

        m \\leftarrow \\beta_1 m + (1-\\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2, \\quad
        \\theta \\leftarrow \\theta - \\alpha \\frac{m / (1-\\beta_1^t)}
            {\\sqrt{v / (1-\\beta_2^t)} + \\epsilon}

    Class weights are :math:`w_c = n / (2 n_c)` over the training part (so both classes
    weigh the same in total), or 1 with ``cfg.class_weighted=False``. After every epoch
    the class-weighted log-loss of the validation part is measured; training stops
    after ``cfg.patience`` epochs without a lower one and the best head is returned.
    Without a validation part (a class with fewer than 2 examples, or
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
        FedProx anchor :math:`\\theta_0`; defaults to ``head``, the head the round
        started from.

    Returns
    -------
    TrainResult

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
    params = [a.copy() for a in _params(head, np.float32)]  # copies: input untouched
    anc = _params(head if anchor is None else anchor, np.float32, name="anchor")
    anc = [a.copy() for a in anc]
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

    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx, note = _stratified_split(ys, cfg.val_fraction, rng)
    notes = (note,) if note else ()
    x_tr, y_tr = xs[train_idx], ys[train_idx]
    x_va, y_va = xs[val_idx], ys[val_idx]
    n_c = np.bincount(y_tr, minlength=2)
    cw = n_c.sum() / (2.0 * n_c) if cfg.class_weighted else np.ones(2)
    w_tr = cw.astype(np.float32)[y_tr]
    w_va = cw.astype(np.float32)[y_va]
    yf_tr, yf_va = y_tr.astype(np.float32), y_va.astype(np.float32)
    has_val = val_idx.size > 0

    m = [np.zeros_like(a) for a in params]
    v = [np.zeros_like(a) for a in params]
    b1, b2, eps, lr = cfg.beta1, cfg.beta2, cfg.epsilon, cfg.learning_rate
    history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_auc": []}
    best = [a.copy() for a in params]
    best_loss, best_epoch, wait, step, epoch = np.inf, 0, 0, 0, 0
    stopped_early = False
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(train_idx.size)
        for start in range(0, order.size, cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            _, grads = _loss_grads(params, x_tr[b], yf_tr[b], w_tr[b], cfg.l2,
                                   cfg.prox_mu, anc)
            step += 1
            c1, c2 = 1.0 - b1 ** step, 1.0 - b2 ** step
            for p, g, mi, vi in zip(params, grads, m, v):
                mi *= b1
                mi += (1.0 - b1) * g
                vi *= b2
                vi += (1.0 - b2) * (g * g)
                p -= lr * (mi / c1) / (np.sqrt(vi / c2) + eps)  # stays float32 (NEP 50)
        loss = _data_loss(_forward(params, x_tr).logits, yf_tr, w_tr) \
            + _penalty(params, cfg.l2, cfg.prox_mu, anc)
        if not np.isfinite(loss):
            raise FloatingPointError(f"head training diverged at epoch {epoch} "
                                     f"(loss {loss}); lower the learning rate")
        history["loss"].append(loss)
        if not has_val:
            continue
        logits = _forward(params, x_va).logits
        val_loss = _data_loss(logits, yf_va, w_va)
        history["val_loss"].append(val_loss)
        history["val_auc"].append(roc_auc(y_va, logits.astype(np.float64)))
        if val_loss < best_loss:
            best_loss, best_epoch, wait = val_loss, epoch, 0
            best = [a.copy() for a in params]
        else:
            wait += 1
            if wait >= cfg.patience:
                stopped_early = epoch < cfg.epochs
                break
    if has_val:
        params = best
    else:
        best_epoch = epoch
    trained = _as_head(params)
    val_metrics = evaluate_head(trained, x_va, y_va) if has_val else None
    log.info("head trained: %d examples (+%d validation), %d epochs, best epoch %d",
             train_idx.size, val_idx.size, epoch, best_epoch)
    return TrainResult(head=trained, history=history, val_metrics=val_metrics, epochs=epoch,
                       examples=int(train_idx.size), val_examples=int(val_idx.size),
                       best_epoch=best_epoch, early_stopping=has_val,
                       stopped_early=stopped_early,
                       class_weight=(float(cw[0]), float(cw[1])), val_indices=val_idx,
                       notes=notes)
