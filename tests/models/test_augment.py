"""The fused augmentation: its affine matrices do what each transform alone would."""
import math

import numpy as np
import pytest
import tensorflow as tf

from models.training.augment import (Augmentation, affine_transforms, augment, bias_field,
                                     coarser, gaussian_blur, intensity_curves, rician_noise,
                                     smooth_bias_field, warp)

H, W = 12, 16


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (1, H, W, 1)).astype(np.float32)


def warped(image, angle=0.0, scale=1.0, shift=(0.0, 0.0), flip=(1.0, 1.0)) -> np.ndarray:
    t = affine_transforms(tf.constant([angle]), tf.constant([scale]), tf.constant([shift]),
                          tf.constant([flip]), H, W)
    return warp(tf.constant(image), t).numpy()


def test_identity(image):
    np.testing.assert_allclose(warped(image), image, atol=1e-4)


@pytest.mark.parametrize("flip,expected", [((-1.0, 1.0), lambda a: a[:, :, ::-1]),
                                           ((1.0, -1.0), lambda a: a[:, ::-1, :]),
                                           ((-1.0, -1.0), lambda a: a[:, ::-1, ::-1])])
def test_flips(image, flip, expected):
    np.testing.assert_allclose(warped(image, flip=flip), expected(image), atol=1e-4)


def test_half_turn_is_both_flips(image):
    np.testing.assert_allclose(warped(image, angle=math.pi), image[:, ::-1, ::-1], atol=1e-3)


def test_quarter_turn_of_a_square():
    square = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    t = affine_transforms(tf.constant([math.pi / 2]), tf.constant([1.0]),
                          tf.zeros((1, 2)), tf.ones((1, 2)), 8, 8)
    out = warp(tf.constant(square), t).numpy()[0, :, :, 0]
    rotations = [np.rot90(square[0, :, :, 0], k) for k in (1, 3)]
    assert min(np.abs(out - r).max() for r in rotations) < 1e-3


def test_shift_moves_content_and_fills_black(image):
    out = warped(image, shift=(3.0, 2.0))
    np.testing.assert_allclose(out[:, 2:, 3:], image[:, :-2, :-3], atol=1e-4)
    assert not out[:, :2, :].any() and not out[:, :, :3].any()


def test_zoom_keeps_the_centre_and_zooms_out():
    img = np.zeros((1, 33, 33, 1), np.float32)
    img[0, 12:21, 12:21] = 200.0  # a 9-pixel square in the middle
    t = affine_transforms(tf.constant([0.0]), tf.constant([1.5]), tf.zeros((1, 2)),
                          tf.ones((1, 2)), 33, 33)
    out = warp(tf.constant(img), t).numpy()[0, :, :, 0]
    assert out[16, 16] == pytest.approx(200.0)
    assert 4 <= (out > 100).sum(axis=1).max() <= 7  # 9 / 1.5 = 6 pixels wide


def test_random_batch_stays_in_range_and_varies():
    tf.random.set_seed(1)
    batch = np.full((64, 32, 32, 1), 128.0, np.float32)
    batch[:, 8:24, 8:24] = 240.0
    out = augment(tf.constant(batch)).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert len({round(float(v), 2) for v in out.mean(axis=(1, 2, 3))}) > 50  # all differ
    no_contrast = augment(tf.constant(batch), Augmentation(contrast=0.0)).numpy()
    assert (no_contrast[:, 0, 0, 0] == 0).mean() > 0.3  # rotated corners come in black


def test_geometry_is_drawn_over_the_whole_ranges(monkeypatch):
    drawn = {}

    def capture(angle, scale, shift, flip, height, width):
        drawn.update(angle=angle.numpy(), scale=scale.numpy(), flip=flip.numpy(),
                     shift=shift.numpy() / np.array([width, height]))
        return affine_transforms(angle, scale, shift, flip, height, width)

    monkeypatch.setattr("models.training.augment.affine_transforms", capture)
    tf.random.set_seed(2)
    augment(tf.zeros((4000, 8, 8, 1)))

    def spans(values, bound):
        return np.abs(values).max() <= bound and values.min() < -0.95 * bound \
            and values.max() > 0.95 * bound

    assert spans(drawn["angle"], math.pi)  # rotation 0.5 = half a turn either way
    assert spans(drawn["scale"] - 1.0, 0.15)
    assert spans(drawn["shift"][:, 0], 0.08) and spans(drawn["shift"][:, 1], 0.08)
    # Each axis flips on its own: mirror images, not only half turns.
    combos, counts = np.unique(drawn["flip"], axis=0, return_counts=True)
    assert len(combos) == 4 and (np.abs(counts / 4000 - 0.25) < 0.04).all()


def test_contrast_and_gamma_are_drawn_over_their_ranges():
    tf.random.set_seed(3)
    still = dict(rotation=0.0, zoom=0.0, shift=0.0, blur=0.0, bias=0.0)
    halves = np.full((2000, 4, 4, 1), 100.0, np.float32)
    halves[:, :, 2:] = 150.0  # mean 125, deviation +-25
    out = augment(tf.constant(halves), Augmentation(**still, log_gamma=0.0)).numpy()
    factor = np.abs(out[:, 0, 3, 0] - out[:, 0, 0, 0]) / 50.0  # flips may swap halves
    assert 0.7 <= factor.min() < 0.72 and 1.28 < factor.max() <= 1.3
    grey = np.full((2000, 4, 4, 1), 127.5, np.float32)
    out = augment(tf.constant(grey), Augmentation(**still, contrast=0.0)).numpy()
    log_gamma = np.log(np.log(out[:, 0, 0, 0] / 255.0) / np.log(0.5))
    assert -0.4 - 1e-4 <= log_gamma.min() < -0.38 and 0.38 < log_gamma.max() <= 0.4 + 1e-4


def test_no_transform_ranges_leave_the_image(image):
    still = Augmentation(rotation=0.0, zoom=0.0, shift=0.0, contrast=0.0, log_gamma=0.0,
                         blur=0.0, bias=0.0)
    tf.random.set_seed(4)
    out = augment(tf.constant(np.repeat(image, 32, axis=0)), still).numpy()
    flips = [image[0], image[0, ::-1], image[0, :, ::-1], image[0, ::-1, ::-1]]
    seen = {min(range(4), key=lambda i: np.abs(one - flips[i]).max()) for one in out}
    for one in out:
        assert min(np.abs(one - f).max() for f in flips) < 1e-3  # flips only
    assert seen == {0, 1, 2, 3}


def test_gaussian_blur_keeps_the_mass_and_spreads_a_point_by_sigma():
    point = np.zeros((1, 41, 41, 2), np.float32)
    point[0, 20, 20] = 1000.0
    out = gaussian_blur(tf.constant(point), 2.0).numpy()[0]
    assert out.sum() == pytest.approx(2000.0, rel=1e-4)
    row = out[20, :, 0] / out[20, :, 0].sum()
    spread = np.sqrt((row * (np.arange(41) - 20) ** 2).sum())
    assert spread == pytest.approx(2.0, rel=0.02)
    np.testing.assert_allclose(out[:, :, 0], out[:, :, 1])  # channels alike, not mixed
    np.testing.assert_allclose(out[:, :, 0], out[:, :, 0].T, atol=1e-3)  # both axes


def test_bias_fields_are_linear_ramps_within_the_bound():
    tf.random.set_seed(5)
    fields = bias_field(tf.constant(2000), 16, 16, 0.3).numpy()[:, :, :, 0]
    assert fields.min() >= 0.7 - 1e-5 and fields.max() <= 1.3 + 1e-5
    assert fields.min() < 0.72 and fields.max() > 1.28
    np.testing.assert_allclose(fields.mean(axis=(1, 2)), 1.0, atol=1e-4)  # no net gain
    second = np.diff(fields, 2, axis=1)  # a plane: no curvature along either axis
    assert np.abs(second).max() < 1e-4


def test_about_half_the_images_are_blurred():
    tf.random.set_seed(6)
    still = Augmentation(rotation=0.0, zoom=0.0, shift=0.0, contrast=0.0, log_gamma=0.0,
                         bias=0.0)
    dots = np.zeros((2000, 9, 9, 1), np.float32)
    dots[:, 4, 4] = 255.0
    peak = augment(tf.constant(dots), still).numpy()[:, 4, 4, 0]
    assert 0.45 < (peak == 255.0).mean() < 0.55  # untouched
    blurred = peak[peak < 255.0]
    assert blurred.min() < 255.0 * 0.15  # the full blur leaves 4% of a point's peak


def test_intensity_curves_are_monotone_keep_black_and_white_and_vary():
    # Prepare: a ramp over the whole grey range, 500 times
    tf.random.set_seed(7)
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (500, 1))[:, None, :, None]
    # Execute
    out = intensity_curves(tf.constant(ramp), tf.constant(500), 0.8).numpy()[:, 0, :, 0]
    # Assert
    assert (np.diff(out, axis=1) >= -1e-3).all()  # order of grey levels kept
    np.testing.assert_allclose(out[:, 0], 0, atol=1e-3)
    np.testing.assert_allclose(out[:, -1], 255, atol=1e-2)
    middle = out[:, 32]
    assert middle.std() > 5 and abs(np.median(middle) - ramp[0, 0, 32, 0]) < 30


def test_smooth_bias_fields_are_positive_smooth_and_drawn_per_image():
    tf.random.set_seed(8)
    fields = smooth_bias_field(tf.constant(300), 32, 32, 0.3).numpy()[:, :, :, 0]
    assert fields.min() > 0
    assert np.abs(np.diff(np.log(fields), axis=2)).max() < 0.4  # no pixel-to-pixel jumps
    assert fields[:, 0, 0].std() > 0.1 and fields.std(axis=(1, 2)).min() > 0.001


def test_rician_noise_lifts_the_black_background_and_scales_with_its_level():
    tf.random.set_seed(9)
    black = tf.zeros((400, 16, 16, 1))
    low = rician_noise(black, tf.constant(400), 0.01).numpy()
    high = rician_noise(black, tf.constant(400), 0.1).numpy()
    assert low.min() >= 0 and 0 < low.mean() < high.mean()
    assert high.mean() == pytest.approx(0.05 * 255 * np.sqrt(np.pi / 2), rel=0.1)


def test_coarser_acquisition_keeps_the_size_and_removes_fine_detail():
    tf.random.set_seed(10)
    stripes = np.zeros((8, 32, 32, 1), np.float32)
    stripes[:, :, ::2] = 255.0
    out = coarser(tf.constant(stripes), 4.0).numpy()
    assert out.shape == stripes.shape
    assert np.abs(np.diff(out[0, 10, 8:24, 0])).mean() < np.abs(
        np.diff(stripes[0, 10, 8:24, 0])).mean()
