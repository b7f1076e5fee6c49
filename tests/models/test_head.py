"""The NumPy head trainer: exact gradients, learning, determinism, purity, FedProx, class
weighting, early stopping and refusal of unusable data. Synthetic embeddings keep the
whole file fast (no model, no images)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.core.head import evaluate_head, forward, loss_and_grads, predict
from models.core.head_training import TrainConfig, train_head
from models.core.weights import HEAD_NAMES, delta, head_to_bytes, l2_norm


def random_head(dim: int, seed: int, hidden: int = 32) -> dict[str, np.ndarray]:
    """He-initialised hidden layer, small random output layer (float32, like the wire)."""
    rng = np.random.default_rng(seed)
    return {"hidden/kernel": rng.normal(0, np.sqrt(2 / dim), (dim, hidden)).astype(np.float32),
            "hidden/bias": rng.normal(0, 0.1, hidden).astype(np.float32),
            "output/kernel": rng.normal(0, np.sqrt(1 / hidden), (hidden, 1)).astype(np.float32),
            "output/bias": np.zeros(1, np.float32)}


def blobs(n0: int, n1: int, dim: int, separation: float,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-variance Gaussian blobs whose means are ``separation`` apart."""
    rng = np.random.default_rng(seed)
    direction = np.ones(dim) / np.sqrt(dim)
    x = np.r_[rng.normal(size=(n0, dim)) - separation / 2 * direction,
              rng.normal(size=(n1, dim)) + separation / 2 * direction]
    return x.astype(np.float32), np.r_[np.zeros(n0, np.int64), np.ones(n1, np.int64)]


@pytest.fixture(scope="module")
def separable() -> tuple[np.ndarray, np.ndarray]:
    return blobs(100, 100, 16, separation=3.0, seed=1)


# ------------------------------------------------------------------ forward and gradients

def test_gradients_match_central_finite_differences() -> None:
    # Prepare: float64 copies so differences are not drowned by rounding; every term on.
    rng = np.random.default_rng(7)
    head = {n: a.astype(np.float64) for n, a in random_head(5, seed=3, hidden=4).items()}
    anchor = {n: a + rng.normal(0, 0.3, a.shape) for n, a in head.items()}
    x, y = rng.normal(size=(12, 5)), rng.integers(0, 2, 12)
    kw = dict(class_weight=(0.7, 2.5), l2=0.05, prox_mu=0.3, anchor=anchor)

    # Execute
    _, grads = loss_and_grads(head, x, y, **kw)
    numeric = {}
    for name in HEAD_NAMES:
        g = np.zeros_like(head[name])
        for i in np.ndindex(g.shape):
            plus = {n: a.copy() for n, a in head.items()}
            minus = {n: a.copy() for n, a in head.items()}
            plus[name][i] += 1e-6
            minus[name][i] -= 1e-6
            g[i] = (loss_and_grads(plus, x, y, **kw)[0]
                    - loss_and_grads(minus, x, y, **kw)[0]) / 2e-6
        numeric[name] = g

    # Assert
    for name in HEAD_NAMES:
        assert grads[name].shape == head[name].shape
        err = np.linalg.norm(grads[name] - numeric[name]) / (
            np.linalg.norm(grads[name]) + np.linalg.norm(numeric[name]))
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


def test_loss_terms_add_up_as_documented() -> None:
    # Prepare: a head whose output is a known logit, so the log-loss is hand-computable.
    head = {n: np.zeros_like(a) for n, a in random_head(3, seed=0, hidden=2).items()}
    head["output/bias"][:] = np.log(3.0)  # p = 0.75 for every example
    anchor = {n: a + 1.0 for n, a in head.items()}  # 2*3 + 2 + 2 + 1 = 11 parameters
    x, y = np.ones((2, 3), np.float32), np.array([1, 0])

    # Execute
    plain, _ = loss_and_grads(head, x, y)
    weighted, _ = loss_and_grads(head, x, y, class_weight=(2.0, 1.0))
    prox, _ = loss_and_grads(head, x, y, prox_mu=0.5, anchor=anchor)

    # Assert
    assert plain == pytest.approx((-np.log(0.75) - np.log(0.25)) / 2, rel=1e-6)
    assert weighted == pytest.approx((-np.log(0.75) - 2 * np.log(0.25)) / 2, rel=1e-6)
    assert prox == pytest.approx(plain + 0.5 / 2 * 11, rel=1e-6)


def test_sigmoid_and_log_loss_stay_finite_for_huge_logits() -> None:
    # Prepare: an output bias of +-1e4 saturates the sigmoid far beyond exp's range.
    x, y = np.zeros((2, 4), np.float32), np.array([0, 1])
    losses = {}
    for bias in (1e4, -1e4):
        head = random_head(4, seed=0)
        head["output/bias"][:] = bias

        # Execute
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            prob = predict(head, x)
            losses[bias], grads = loss_and_grads(head, x, y)

        # Assert: exact saturation, loss = |logit| / 2 (one example is wrong by 1e4).
        assert np.all(prob == (1.0 if bias > 0 else 0.0))
        assert all(np.isfinite(g).all() for g in grads.values())
    assert losses[1e4] == pytest.approx(1e4 / 2, rel=1e-3)
    assert losses[-1e4] == pytest.approx(1e4 / 2, rel=1e-3)


def test_forward_shapes_and_bad_inputs() -> None:
    # Prepare
    head = random_head(6, seed=0)

    # Execute
    prob, cache = forward(head, np.ones((3, 6)))

    # Assert
    assert prob.shape == (3,) and cache.logits.shape == (3,) and cache.h.shape == (3, 32)
    with pytest.raises(ValueError, match="D=6"):
        predict(head, np.ones((3, 5)))
    with pytest.raises(ValueError, match="finite"):
        predict(head, np.full((1, 6), np.nan))
    with pytest.raises(ValueError, match="missing"):
        predict({"hidden/kernel": head["hidden/kernel"]}, np.ones((1, 6)))
    with pytest.raises(ValueError, match="0/1"):
        loss_and_grads(head, np.ones((2, 6)), [0, 2])


# ------------------------------------------------------------------------------ training

def test_training_learns_separable_embeddings(separable) -> None:
    # Prepare: a random head is at chance on the blobs.
    x, y = separable
    head = random_head(16, seed=6)

    # Execute
    result = train_head(head, x, y, TrainConfig())

    # Assert
    val_x, val_y = x[result.val_indices], y[result.val_indices]
    before = evaluate_head(head, val_x, val_y)
    assert abs(before["auc"] - 0.5) < 0.15
    assert result.val_metrics["auc"] > 0.95
    assert result.val_metrics == evaluate_head(result.head, val_x, val_y)
    assert result.history["loss"][-1] < result.history["loss"][0] / 2
    start_loss, _ = loss_and_grads(head, val_x, val_y, class_weight=result.class_weight)
    assert min(result.history["val_loss"]) < start_loss / 2
    assert (result.examples, result.val_examples) == (160, 40)
    assert np.bincount(val_y).tolist() == [20, 20]  # stratified
    assert all(result.head[n].dtype == np.float32 for n in HEAD_NAMES)


def test_same_seed_same_bytes_other_seed_other_head(separable) -> None:
    # Prepare
    x, y = separable
    head, cfg = random_head(16, seed=0), TrainConfig(epochs=15)

    # Execute
    first = train_head(head, x, y, cfg)
    again = train_head(head, x, y, cfg)
    other = train_head(head, x, y, replace(cfg, seed=1))

    # Assert
    assert head_to_bytes(first.head) == head_to_bytes(again.head)
    assert first.history == again.history
    assert head_to_bytes(first.head) != head_to_bytes(other.head)


def test_input_head_and_data_are_never_modified(separable) -> None:
    # Prepare
    x, y = separable
    head = random_head(16, seed=0)
    snapshot = {n: a.copy() for n, a in head.items()}
    x_copy, y_copy = x.copy(), y.copy()

    # Execute
    result = train_head(head, x, y, TrainConfig(epochs=5))

    # Assert
    for n in HEAD_NAMES:
        assert np.array_equal(head[n], snapshot[n])
        assert not np.shares_memory(result.head[n], head[n])
        assert not np.array_equal(result.head[n], head[n]) or n == "hidden/bias"
    assert np.array_equal(x, x_copy) and np.array_equal(y, y_copy)


def test_large_prox_mu_keeps_the_head_near_its_anchor(separable) -> None:
    # Prepare
    x, y = separable
    head = random_head(16, seed=0)
    cfg = TrainConfig(epochs=40, val_fraction=0.0)

    # Execute
    free = train_head(head, x, y, replace(cfg, prox_mu=0.0))
    tied = train_head(head, x, y, replace(cfg, prox_mu=10.0))
    other_anchor = random_head(16, seed=9)
    pulled = train_head(head, x, y, replace(cfg, prox_mu=10.0), anchor=other_anchor)

    # Assert
    assert l2_norm(delta(tied.head, head)) < 0.25 * l2_norm(delta(free.head, head))
    assert l2_norm(delta(pulled.head, other_anchor)) < l2_norm(delta(head, other_anchor)) / 2


def test_class_weights_raise_minority_recall() -> None:
    # Prepare: 90/10 imbalance with overlapping classes; recall measured on fresh
    # minority cases.
    x, y = blobs(180, 20, 16, separation=2.0, seed=3)
    test_x, test_y = blobs(0, 500, 16, separation=2.0, seed=4)
    head, cfg = random_head(16, seed=0), TrainConfig(epochs=100)

    # Execute
    weighted = train_head(head, x, y, cfg)
    unweighted = train_head(head, x, y, replace(cfg, class_weighted=False))

    # Assert
    assert weighted.class_weight[1] > 4 * weighted.class_weight[0]
    assert unweighted.class_weight == (1.0, 1.0)
    recall_w = evaluate_head(weighted.head, test_x, test_y)["sensitivity"]
    recall_u = evaluate_head(unweighted.head, test_x, test_y)["sensitivity"]
    assert recall_w > recall_u + 0.1


def test_early_stopping_restores_the_best_validation_head() -> None:
    # Prepare: 24 points with random labels, fast learning rate: the head memorises the
    # training part and validation loss turns up.
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(24, 16)).astype(np.float32), rng.integers(0, 2, 24)
    cfg = TrainConfig(learning_rate=1e-2, patience=10)

    # Execute
    result = train_head(random_head(16, seed=0), x, y, cfg)

    # Assert
    assert result.early_stopping and result.stopped_early
    assert result.epochs == result.best_epoch + cfg.patience < cfg.epochs
    val_loss = result.history["val_loss"]
    assert len(val_loss) == result.epochs
    assert min(val_loss) == val_loss[result.best_epoch - 1] < val_loss[-1]
    returned, _ = loss_and_grads(result.head, x[result.val_indices], y[result.val_indices],
                                 class_weight=result.class_weight)
    assert returned == pytest.approx(min(val_loss), rel=1e-5)


def test_a_class_too_small_to_validate_trains_without_early_stopping() -> None:
    # Prepare: one positive only: it cannot be both trained on and validated.
    x, y = blobs(9, 1, 16, separation=3.0, seed=0)
    cfg = TrainConfig(epochs=12)

    # Execute
    result = train_head(random_head(16, seed=0), x, y, cfg)

    # Assert
    assert not result.early_stopping and result.val_metrics is None
    assert result.epochs == result.best_epoch == 12 and result.examples == 10
    assert result.val_indices.size == 0 and result.history["val_loss"] == []
    assert any("no early stopping" in note for note in result.notes)


@pytest.mark.parametrize("y, message", [
    ([0, 1, 0, 1, 0, 1, 0], "at least 8"),
    ([1] * 12, "single class"),
    ([0] * 12, "single class"),
])
def test_unusable_training_data_is_refused(y: list[int], message: str) -> None:
    # Prepare
    x = np.zeros((len(y), 16), np.float32)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        train_head(random_head(16, seed=0), x, np.array(y), TrainConfig())


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0), ("val_fraction", 1.0),
    ("l2", -1.0), ("patience", 1.5), ("min_examples", 1),
])
def test_invalid_config_is_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_full_size_run_completes_all_epochs() -> None:
    # Prepare: 200 examples x 256-dim embeddings, patience long enough to run 200 epochs.
    x, y = blobs(100, 100, 256, separation=3.0, seed=2)
    cfg = TrainConfig(epochs=200, patience=200)

    # Execute
    result = train_head(random_head(256, seed=0), x, y, cfg)

    # Assert
    assert result.epochs == 200 and len(result.history["loss"]) == 200
    assert all(np.isfinite(result.head[n]).all() for n in HEAD_NAMES)
    assert result.head["hidden/kernel"].shape == (256, 32)
