"""Adapting the head and the last block on a device: what each mode trains and shares,
that it learns, and that it refuses what it cannot train on."""
from __future__ import annotations

import numpy as np
import pytest

from models.core import block as B
from models.core import head as H
from models.core.adapt import MODES, adapt, shared_names, with_adapter
from models.core.head_training import TrainConfig

C, K = 4, 6


def setup(seed: int = 0, n: int = 80):
    """Block inputs whose first channel's brightness in one corner says the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0, 1, (n, 4, 4, C)).astype(np.float32)
    x[y == 1, :2, :2, 0] += 1.5
    blk = {B.KERNEL: rng.normal(0, 0.3, (3, 3, C, K)).astype(np.float32),
           B.GAMMA: np.ones(K, np.float32), B.BETA: np.zeros(K, np.float32),
           B.MEAN: np.zeros(K, np.float32), B.VAR: np.ones(K, np.float32)}
    head = {"hidden/kernel": rng.normal(0, 0.3, (2 * K, 32)).astype(np.float32),
            "hidden/bias": np.zeros(32, np.float32),
            "output/kernel": rng.normal(0, 0.3, (32, 1)).astype(np.float32),
            "output/bias": np.zeros(1, np.float32)}
    return x, y, blk, head


CFG = TrainConfig(epochs=40, learning_rate=3e-3, prox_mu=0.0, patience=40, val_fraction=0.0)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_learns_and_changes_only_its_arrays(mode):
    # Prepare
    x, y, blk, head = setup()
    before = H.evaluate_head(head, B.embed(blk, x), y)["auc"]
    # Execute
    out = adapt(head, blk, x, y, mode, CFG, rank=2)
    # Assert
    after = H.evaluate_head(out.head, B.embed(out.block, x), y)["auc"]
    assert after > max(before, 0.8)
    changed = {n for n in out.block if n not in blk or not np.array_equal(out.block[n], blk[n])}
    expected = {"head": set(), "fedbn": {B.GAMMA, B.BETA, B.MEAN, B.VAR},
                "lora": {B.GAMMA, B.BETA, B.MEAN, B.VAR, B.LORA_A, B.LORA_B},
                "adapter": {B.LORA_A, B.LORA_B},
                "block": {B.GAMMA, B.BETA, B.MEAN, B.VAR, B.KERNEL}}[mode]
    assert changed == expected
    assert set(shared_names(mode)) <= set(out.block)


def test_adaptation_is_deterministic_for_a_seed():
    x, y, blk, head = setup()
    a = adapt(head, blk, x, y, "lora", CFG, rank=2)
    b = adapt(head, blk, x, y, "lora", CFG, rank=2)
    for name in a.block:
        np.testing.assert_array_equal(a.block[name], b.block[name])


def test_fedbn_takes_the_clinics_own_statistics():
    x, y, blk, head = setup()
    out = adapt(head, blk, x * 3 + 1, y, "fedbn", CFG)
    mean, var = B.batch_statistics(blk, x * 3 + 1)
    np.testing.assert_allclose(out.block[B.MEAN], mean, rtol=1e-5)
    np.testing.assert_allclose(out.block[B.VAR], var, rtol=1e-5)


def test_a_fresh_adapter_does_not_change_the_block():
    x, _, blk, _ = setup()
    lora = with_adapter(blk, rank=3)
    np.testing.assert_allclose(B.embed(lora, x), B.embed(blk, x), atol=1e-6)
    assert lora[B.LORA_A].shape == (9 * C, 3) and lora[B.LORA_B].shape == (3, K)


def test_one_class_or_an_unknown_mode_is_refused():
    x, y, blk, head = setup()
    with pytest.raises(ValueError, match="both classes"):
        adapt(head, blk, x, np.zeros_like(y), "block", CFG)
    with pytest.raises(ValueError, match="unknown adaptation mode"):
        adapt(head, blk, x, y, "everything", CFG)
