"""The NumPy last block against TensorFlow's own convolution, batch norm and pooling:
the same embedding and the same gradients, with and without a low-rank adapter."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.core import block as B


def random_block(c: int = 5, k: int = 7, rank: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {B.KERNEL: rng.normal(0, 0.3, (3, 3, c, k)).astype(np.float32),
           B.GAMMA: rng.uniform(0.5, 1.5, k).astype(np.float32),
           B.BETA: rng.normal(0, 0.2, k).astype(np.float32),
           B.MEAN: rng.normal(0, 0.2, k).astype(np.float32),
           B.VAR: rng.uniform(0.5, 2.0, k).astype(np.float32)}
    if rank:
        out[B.LORA_A] = rng.normal(0, 0.1, (9 * c, rank)).astype(np.float32)
        out[B.LORA_B] = rng.normal(0, 0.1, (rank, k)).astype(np.float32)
    return out


def tf_embedding(params: dict, x: np.ndarray) -> tf.Tensor:
    kernel = params[B.KERNEL]
    if B.LORA_A in params:
        kernel = kernel + tf.reshape(params[B.LORA_A] @ params[B.LORA_B], kernel.shape)
    z = tf.nn.conv2d(x, kernel, 1, "SAME")
    bn = (z - params[B.MEAN]) / tf.sqrt(params[B.VAR] + B.EPSILON) * params[B.GAMMA] \
        + params[B.BETA]
    pooled = tf.nn.max_pool2d(tf.nn.relu(bn), 2, 2, "VALID")
    return tf.concat([tf.reduce_mean(pooled, (1, 2)), tf.reduce_max(pooled, (1, 2))], 1)


@pytest.mark.parametrize("rank", [0, 3])
def test_forward_and_backward_match_tensorflow(rank):
    # Prepare
    params = random_block(rank=rank)
    x = np.random.default_rng(1).normal(0, 1, (4, 8, 6, 5)).astype(np.float32)
    d_emb = np.random.default_rng(2).normal(0, 1, (4, 14)).astype(np.float32)
    trainable = [B.LORA_A, B.LORA_B] if rank else [B.KERNEL]
    variables = {k: tf.Variable(v) for k, v in params.items()}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf_embedding(variables, x) * d_emb)
    expected = tape.gradient(loss, [variables[k] for k in (*trainable, B.GAMMA, B.BETA)])
    # Execute
    emb, cache = B.forward(params, x)
    grads = B.backward(params, cache, d_emb)
    # Assert
    np.testing.assert_allclose(emb, tf_embedding(params, x).numpy(), rtol=1e-4, atol=1e-5)
    assert set(grads) == {*trainable, B.GAMMA, B.BETA}
    for name, want in zip((*trainable, B.GAMMA, B.BETA), expected):
        np.testing.assert_allclose(grads[name], want.numpy(), rtol=1e-3, atol=1e-4)


def test_batch_statistics_are_those_of_the_convolution_output():
    params = random_block()
    x = np.random.default_rng(3).normal(0, 1, (130, 4, 4, 5)).astype(np.float32)
    z = tf.nn.conv2d(x, params[B.KERNEL], 1, "SAME").numpy()
    mean, var = B.batch_statistics(params, x, batch=16)
    np.testing.assert_allclose(mean, z.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, z.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    assert B.embed(params, x, batch=7).shape == (130, 14)
