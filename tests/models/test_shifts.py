"""Acquisition shifts: each does what it says to a real slice; the report's arithmetic."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.training.dataset import Sample
from models.core.preprocess import InputSpec, preprocess, read_image, to_gray
from models.training.shifts import SHIFTS, load_shifted, shift_report, shifted_image

SPEC = InputSpec(128, 128, 1)


@pytest.fixture(scope="module")
def sample(data_dir):
    return Sample(data_dir / "yes" / "Y1.jpg", 1, "yes/Y1.jpg")


@pytest.fixture(scope="module")
def gray(sample):
    return to_gray(read_image(sample.path))


def sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F).var())


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_gives_a_repeatable_usable_slice(name, gray, sample):
    out = SHIFTS[name](gray, np.random.default_rng(7))

    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out, SHIFTS[name](gray, np.random.default_rng(7)))
    expected = {"stretched 1.3x": (gray.shape[0], round(gray.shape[1] * 1.3)),
                "rotated 90": gray.shape[::-1]}.get(name, gray.shape)
    assert out.shape == expected
    x = shifted_image(sample, SPEC, name, seed=7)
    assert x.shape == (128, 128, 1) and 0.0 <= x.min() and x.max() <= 255.0


def test_blur_and_low_resolution_remove_fine_detail(gray):
    rng = np.random.default_rng(0)
    assert sharpness(SHIFTS["blur"](gray, rng)) < 0.1 * sharpness(gray)
    assert sharpness(SHIFTS["low resolution"](gray, rng)) < 0.3 * sharpness(gray)
    assert sharpness(SHIFTS["rician noise"](gray, rng)) > sharpness(gray)


def test_intensity_shifts(gray):
    rng = np.random.default_rng(0)
    mid = (gray > 0.3) & (gray < 0.7)
    assert (SHIFTS["gamma 0.6"](gray, rng)[mid] > gray[mid]).all()
    assert (SHIFTS["gamma 1.7"](gray, rng)[mid] < gray[mid]).all()
    grey = SHIFTS["low contrast, grey background"](gray, rng)
    assert grey.min() == pytest.approx(0.25 + 0.5 * gray.min())
    ratio = SHIFTS["bias field"](gray, rng)[mid] / gray[mid]
    assert 0.6 - 1e-5 <= ratio.min() < 0.8 and 1.2 < ratio.max() <= 1.4 + 1e-5


def test_preprocessing_undoes_a_grey_background_and_a_narrow_window(sample):
    # Normalising inside the brain mask: a linear intensity change costs nothing.
    clean = preprocess(read_image(sample.path), SPEC)
    shifted = shifted_image(sample, SPEC, "low contrast, grey background", seed=0)
    assert np.abs(shifted - clean).mean() < 1.0  # of 255


def test_a_file_is_shifted_alike_in_any_selection_and_otherwise_per_seed(data_dir):
    files = [Sample(data_dir / "no" / f"no {i}.jpg", 0, f"no/no {i}.jpg") for i in (1, 2)]

    both = load_shifted(files, SPEC, ["rician noise"], seed=0)["rician noise"]
    alone = load_shifted(files[1:], SPEC, ["rician noise"], seed=0)["rician noise"]
    other_seed = load_shifted(files[1:], SPEC, ["rician noise"], seed=1)["rician noise"]

    np.testing.assert_array_equal(both[1], alone[0])  # its draw is its own, not its index
    assert np.abs(other_seed[0] - alone[0]).mean() > 1.0
    assert np.abs(both[0] - both[1]).mean() > 1.0


def test_report_scores_decisions_at_each_images_threshold():
    y = np.array([1, 1, 0, 0])
    clean = np.array([0.9, 0.6, 0.4, 0.1])
    thresholds = np.array([0.5, 0.5, 0.3, 0.3])  # two folds, two thresholds
    shifted = {"brighter": np.array([0.95, 0.7, 0.45, 0.35])}

    report = shift_report(y, clean, shifted, thresholds)

    assert report["clean"] == {"n": 4, "balanced_accuracy": 0.75, "sensitivity": 1.0,
                               "specificity": 0.5, "auc": 1.0}
    r = report["brighter"]
    assert (r["sensitivity"], r["specificity"], r["auc"]) == (1.0, 0.0, 1.0)
    assert r["agreement"] == 0.75  # the last slice crossed its fold's threshold
    assert r["delta_balanced_accuracy"] == pytest.approx(-0.25)


def test_report_leaves_a_missing_class_undefined_not_zero():
    report = shift_report(np.array([1, 1]), np.array([0.9, 0.2]), {}, 0.5)

    assert report["clean"]["sensitivity"] == 0.5
    assert np.isnan(report["clean"]["specificity"]) and np.isnan(report["clean"]["auc"])
