"""The dense head's maths in pure NumPy (no TensorFlow on the Pi): forward, loss,
gradients. Training is :mod:`models.core.head_training`.

The head maps a backbone embedding :math:`x \\in \\mathbb{R}^D` to a tumour probability:

.. math::

    z = x W_1 + b_1, \\quad h = \\max(z, 0), \\quad s = h W_2 + b_2, \\quad
    p = \\sigma(s) = 1 / (1 + e^{-s})

with ``hidden/kernel`` :math:`W_1` (D, H), ``hidden/bias`` :math:`b_1` (H,),
``output/kernel`` :math:`W_2` (H, 1) and ``output/bias`` :math:`b_2` (1,), the arrays
named by :data:`models.core.weights.HEAD_NAMES`. Everything works on logits ``s`` so that
neither the sigmoid nor the log-loss overflows for large ``|s|``. The loss is

.. math::

    L(\\theta) = \\frac{1}{N} \\sum_i w_{y_i} \\ell(s_i, y_i)
        + \\frac{\\lambda}{2} (\\lVert W_1 \\rVert^2 + \\lVert W_2 \\rVert^2)
        + \\frac{\\mu}{2} \\lVert \\theta - \\theta_0 \\rVert^2

with :math:`\\ell(s, y) = \\max(s, 0) - sy + \\log(1 + e^{-|s|})` (binary cross-entropy
on the logit), class weights :math:`w_c`, weight decay :math:`\\lambda` on the kernels and
the FedProx pull :math:`\\mu` towards the round's global head :math:`\\theta_0`.
Back-propagation: :math:`\\delta_i = w_{y_i} (p_i - y_i) / N`,
:math:`\\nabla W_2 = h^T \\delta`, :math:`\\nabla b_2 = \\sum_i \\delta_i`,
:math:`\\Delta = (\\delta W_2^T) \\odot [z > 0]`, :math:`\\nabla W_1 = x^T \\Delta`,
:math:`\\nabla b_1 = \\sum_i \\Delta_i`, plus :math:`\\lambda W` on the kernels and
:math:`\\mu (\\theta - \\theta_0)` on every array.

The functions are pure: they never modify the arrays they are given.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from models.core.metrics import binary_metrics
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
    """Run the head on embeddings (the sigmoid in the form that never overflows).

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
    """Regularised, class-weighted log-loss of the head and its gradients (the module
    docstring gives :math:`L(\\theta)` and its back-propagation).

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
