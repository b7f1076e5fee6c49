"""The backbone's last block in pure NumPy, so that a device can adapt it without
TensorFlow: 3x3 convolution (same padding, no bias) -> batch norm (inference form) ->
ReLU -> 2x2 max pooling -> [global average, global max] = the head's embedding.

Parameters are named arrays (:data:`BLOCK_NAMES`): ``block/kernel`` (3, 3, C, K),
``block/gamma``, ``block/beta``, ``block/mean``, ``block/var`` (K,), and optionally a
low-rank adapter ``block/lora_a`` (9C, r), ``block/lora_b`` (r, K) whose product is added
to the kernel (LoRA): a clinic can then adapt the block with (9C + K) r numbers instead
of 9CK. Forward and backward are exact; :func:`backward` returns the gradients of the
trainable arrays given the gradient of the loss with respect to the embedding.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

KERNEL, GAMMA, BETA, MEAN, VAR = ("block/kernel", "block/gamma", "block/beta",
                                  "block/mean", "block/var")
LORA_A, LORA_B = "block/lora_a", "block/lora_b"
BLOCK_NAMES = (KERNEL, GAMMA, BETA, MEAN, VAR)
EPSILON = 1e-3  # Keras BatchNormalization's default

Block = dict[str, np.ndarray]


def block_shapes(input_shape: tuple[int, int, int] | list[int], channels: int,
                 rank: int = 0) -> dict[str, tuple[int, ...]]:
    """The arrays of a block reading inputs of ``input_shape`` (H, W, C) into
    ``channels`` filters, with a rank-``rank`` adapter when ``rank`` > 0."""
    c = int(input_shape[2])
    shapes = {KERNEL: (3, 3, c, channels), **{n: (channels,) for n in BLOCK_NAMES[1:]}}
    if rank:
        shapes.update({LORA_A: (9 * c, rank), LORA_B: (rank, channels)})
    return shapes


class Cache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`."""

    cols: np.ndarray     # (N, H*W, 9C) im2col of the input
    xhat: np.ndarray     # (N, H, W, K) normalised conv output
    act: np.ndarray      # (N, H, W, K) after ReLU
    pooled: np.ndarray   # (N, H/2, W/2, K) after max pooling
    scale: np.ndarray    # (K,) gamma / sqrt(var + eps)


def effective_kernel(block: Mapping[str, np.ndarray]) -> np.ndarray:
    """The convolution kernel, with the low-rank adapter added when there is one."""
    kernel = np.asarray(block[KERNEL], np.float32)
    if LORA_A in block:
        kernel = kernel + (block[LORA_A] @ block[LORA_B]).reshape(kernel.shape)
    return kernel


def im2col(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H*W, 9C): each pixel's 3x3 neighbourhood, zero padded, in the
    kernel's (dy, dx, c) order."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = [padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)]
    return np.concatenate(patches, axis=3).reshape(n, h * w, 9 * c)


def conv_output(block: Mapping[str, np.ndarray], x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's output (N, H, W, K) and the im2col it was computed from."""
    n, h, w, c = x.shape
    kernel = effective_kernel(block)
    cols = im2col(np.asarray(x, np.float32))
    z = cols @ kernel.reshape(9 * c, -1)
    return z.reshape(n, h, w, -1), cols


def forward(block: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Embeddings (N, 2K) of block inputs ``x`` (N, H, W, C), H and W even."""
    z, cols = conv_output(block, x)
    std = np.sqrt(np.asarray(block[VAR], np.float32) + EPSILON)
    xhat = (z - block[MEAN]) / std
    scale = np.asarray(block[GAMMA], np.float32) / std
    act = np.maximum(xhat * block[GAMMA] + block[BETA], 0.0)
    n, h, w, k = act.shape
    pooled = act.reshape(n, h // 2, 2, w // 2, 2, k).max(axis=(2, 4))
    emb = np.concatenate([pooled.mean(axis=(1, 2)), pooled.max(axis=(1, 2))], axis=1)
    return emb.astype(np.float32), Cache(cols, xhat, act, pooled, scale)


def embed(block: Mapping[str, np.ndarray], x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings of any number of inputs, ``batch`` at a time (bounded memory)."""
    parts = [forward(block, x[i:i + batch])[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 2 * block[GAMMA].size), np.float32)


def backward(block: Mapping[str, np.ndarray], cache: Cache, d_emb: np.ndarray
             ) -> dict[str, np.ndarray]:
    """Gradients of the kernel (or of the adapter when there is one), gamma and beta,
    from the gradient ``d_emb`` (N, 2K) of the loss with respect to the embedding."""
    n, hp, wp, k = cache.pooled.shape
    d_avg, d_max = d_emb[:, :k], d_emb[:, k:]
    d_pooled = np.broadcast_to((d_avg / (hp * wp))[:, None, None, :], cache.pooled.shape).copy()
    flat = cache.pooled.reshape(n, hp * wp, k)
    first_max = flat.argmax(axis=1)  # the global max's gradient goes to its first position
    np.add.at(d_pooled.reshape(n, hp * wp, k), (np.arange(n)[:, None], first_max,
                                                np.arange(k)[None, :]), d_max)
    # each 2x2 window's gradient goes to its first maximum
    windows = cache.act.reshape(n, hp, 2, wp, 2, k).transpose(0, 1, 3, 5, 2, 4)
    winner = windows.reshape(n, hp, wp, k, 4).argmax(axis=4)
    routed = np.eye(4, dtype=np.float32)[winner] * d_pooled[..., None]  # (n, hp, wp, k, 4)
    d_act = routed.reshape(n, hp, wp, k, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(
        cache.act.shape)
    d_bn = d_act * (cache.act > 0)
    grads = {GAMMA: (d_bn * cache.xhat).sum(axis=(0, 1, 2)), BETA: d_bn.sum(axis=(0, 1, 2))}
    d_z = (d_bn * cache.scale).reshape(n, -1, k)
    d_kernel = np.einsum("npc,npk->ck", cache.cols, d_z)  # (9C, K)
    if LORA_A in block:
        grads[LORA_A] = d_kernel @ block[LORA_B].T
        grads[LORA_B] = block[LORA_A].T @ d_kernel
    else:
        grads[KERNEL] = d_kernel.reshape(block[KERNEL].shape)
    return {name: g.astype(np.float32) for name, g in grads.items()}


def batch_statistics(block: Mapping[str, np.ndarray], x: np.ndarray, batch: int = 64
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (K,) of the convolution's output over inputs ``x``: batch-norm
    statistics of this clinic's own slices (FedBN keeps these local)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, len(x), batch):
        z = conv_output(block, x[i:i + batch])[0].astype(np.float64)
        total = total + z.sum(axis=(0, 1, 2))
        total_sq = total_sq + (z * z).sum(axis=(0, 1, 2))
        count += z.shape[0] * z.shape[1] * z.shape[2]
    mean = total / count
    return mean.astype(np.float32), np.maximum(total_sq / count - mean ** 2, 0).astype(np.float32)
