"""Real TensorFlow training on a small subset, TFLite export and pruning, via LiteRT."""
from __future__ import annotations

import numpy as np
import pytest

from models.training.architectures import get_architecture, get_head
from models.training.compress import (copy_model, distill, magnitude_mask, prunable_layers, prune,
                                      sparsity_of)
from models.training.dataset import load_folder, load_images
from models.training.export import CALIBRATION_IMAGES, calibration_sample, gzip_size, to_tflite
from models.core.runtime import TFLiteModel
from models.training.train import TrainConfig, predict, sample_weights, train_model

pytestmark = pytest.mark.slow
# threshold=None: choose it on validation, so training exercises that path too.
FAST = TrainConfig(epochs=4, patience=4, batch_size=8, seed=0, threshold=None)


@pytest.fixture(scope="module")
def images(small_data):
    x, y, _ = load_images(load_folder(small_data), get_architecture("edge").input_spec)
    return x, y


@pytest.fixture(scope="module")
def trained(images):
    x, y = images
    model, threshold, val = train_model("edge", x[::2], y[::2], x[1::2], y[1::2], FAST)
    return model, threshold, val


def test_training_runs_with_early_stopping_and_a_valid_threshold(trained):
    model, threshold, val = trained

    assert 1 <= val["epochs"] <= FAST.epochs
    assert 0.05 <= threshold <= 0.95
    assert val["n"] == 24


def test_sample_weights_balance_the_classes():
    weights = sample_weights(np.array([1, 1, 1, 0]))

    assert weights.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])


def test_site_balanced_weights_weigh_a_small_sites_slices_up_and_keep_classes_half_each():
    # Prepare: a big site of 8 (4 tumour) and a small tumour-free site of 2
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    sites = np.array(["big"] * 8 + ["small"] * 2)
    # Execute
    w = sample_weights(y, sites)
    # Assert: a slice of the site 4x smaller weighs 4x more within its class
    assert w.mean() == pytest.approx(1.0)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())
    assert w[9] == pytest.approx(4 * w[4]) and w[8] == w[9] and len(set(w[:4])) == 1


def test_float_tflite_matches_keras_through_litert(trained, images):
    model, _, _ = trained
    x, _ = images

    lite = TFLiteModel(to_tflite(model, "float"))
    prob, emb = lite.predict(x[:6])

    np.testing.assert_allclose(prob, predict(model, x[:6]), atol=1e-4)
    assert emb.shape == (6, 192) and lite.embedding_dim == 192


def test_int8_model_is_smaller_and_agrees_with_float(trained, images):
    model, _, _ = trained
    x, _ = images
    float_blob = to_tflite(model, "float")

    int8_blob = to_tflite(model, "int8", calibration=x)
    prob, _ = TFLiteModel(int8_blob).predict(x)

    assert len(int8_blob) < len(float_blob) / 2.5
    keras_prob = predict(model, x)
    assert np.max(np.abs(prob - keras_prob)) < 0.1
    assert gzip_size(int8_blob) < len(int8_blob)


@pytest.mark.parametrize("n", [40, 177, 1000])
def test_calibration_draws_from_the_whole_set_not_its_first_files(n):
    # Datasets come ordered by label: a prefix (or every k-th file of a set under twice
    # the sample size) would calibrate on one class only.
    picked = calibration_sample(n)

    assert len(picked) == min(n, CALIBRATION_IMAGES) == len(set(picked.tolist()))
    assert picked.min() >= 0 and picked.max() < n
    if n > CALIBRATION_IMAGES:
        share_of_last_third = np.mean(picked >= 2 * n // 3)
        assert 0.2 < share_of_last_third < 0.47
    np.testing.assert_array_equal(picked, calibration_sample(n))  # repeatable


def test_dynamic_range_model_loads_in_litert(trained, images):
    model, _, _ = trained
    x, _ = images

    prob, _ = TFLiteModel(to_tflite(model, "dynamic")).predict(x[:2])

    assert prob.shape == (2,) and np.all((prob >= 0) & (prob <= 1))


def test_int8_export_without_calibration_is_refused(trained):
    with pytest.raises(ValueError, match="calibration"):
        to_tflite(trained[0], "int8")


def test_magnitude_mask_keeps_the_largest_weights():
    w = np.array([[0.1, -0.9], [0.5, -0.05]])

    mask = magnitude_mask(w, 0.5)

    np.testing.assert_array_equal(mask, [[False, True], [True, False]])


def test_pruning_reaches_the_target_and_keeps_zeros_through_fine_tuning(images):
    x, y = images
    model, _, _ = train_model("edge", x[::2], y[::2], x[1::2], y[1::2], FAST)

    prune(model, 0.6, x[::2], FAST, steps=2, epochs_per_step=2)

    assert sparsity_of(model) == pytest.approx(0.6, abs=0.02)
    head = get_head(model)
    assert (head["hidden/kernel"] == 0).mean() == pytest.approx(0.6, abs=0.02)
    stem = prunable_layers(model)[0]
    assert (stem.kernel.numpy() != 0).all()  # the first layer and the output unit
    assert (head["output/kernel"] != 0).all()  # stay dense


def test_distillation_trains_in_inference_mode_and_restores_the_layers(images, trained):
    """While distilling, a training step sees what the teacher sees: batch norm on its
    moving statistics and no dropout. Fine-tuned in training mode, the pruned model's
    logits shrank towards zero (README)."""
    import keras

    from models.training.compress import inference_mode_layers
    x, _ = images
    model = copy_model(trained[0])  # training-mode calls move BN statistics
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    norms[0].trainable = False  # frozen before: stays frozen
    inference = model(x, training=False).numpy()

    with inference_mode_layers(model):
        np.testing.assert_allclose(model(x, training=True).numpy(), inference, atol=1e-5)

    assert [layer.trainable for layer in norms] == [False] + [True] * (len(norms) - 1)
    assert next(layer for layer in model.layers
                if isinstance(layer, keras.layers.Dropout)).rate == FAST.dropout
    assert np.abs(model(x, training=True).numpy() - inference).max() > 0.01


def test_distillation_targets_are_the_teachers_probabilities_on_the_same_images(
        images, trained):
    from models.training.train import make_dataset
    x, y = images
    teacher = trained[0]
    cfg = TrainConfig(batch_size=8)  # augmented: the targets follow each random warp

    for batch, target in make_dataset(x, None, cfg, train=True, teacher=teacher).take(2):
        np.testing.assert_allclose(target.numpy(), predict(teacher, batch.numpy()),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="labels or a teacher"):
        make_dataset(x, y, cfg, train=True, teacher=teacher)


def test_distillation_moves_a_pruned_student_towards_its_teacher(images, trained):
    from models.training.train import set_seeds
    x, _ = images
    set_seeds(0)
    student, teacher = copy_model(trained[0]), copy_model(trained[0])
    layer = prunable_layers(student)[-2]
    layer.kernel.assign(layer.kernel.numpy() * magnitude_mask(layer.kernel.numpy(), 0.9))
    target = predict(teacher, x)
    gap = np.abs(predict(student, x) - target).mean()

    tune = TrainConfig(epochs=6, batch_size=8, learning_rate=FAST.learning_rate / 10)
    distill(student, teacher, x, tune)  # at prune's learning rate

    assert np.abs(predict(student, x) - target).mean() < 0.7 * gap  # 0.18-0.53 seen


def test_batch_norm_statistics_are_those_of_clean_images_after_training(images):
    import keras

    from models.training.architectures import build_model
    from models.training.train import recalibrate_batch_norm
    x, _ = images
    model = build_model("edge")
    bn = next(layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization))
    before = keras.Model(model.inputs, bn.input)(x, training=False).numpy()

    recalibrate_batch_norm(model, x)

    np.testing.assert_allclose(bn.moving_mean.numpy(), before.mean(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-4)
    assert bn.momentum == pytest.approx(0.99)
