"""Drawn negatives for the "not a slice" refusal, and the slice head fitted on them."""
from __future__ import annotations

import numpy as np
import pytest

from models.core import head as head_math
from models.core.preprocess import InputSpec
from models.training import negatives, ood


def test_every_category_draws_greyscale_images_of_varied_size_reproducibly():
    # Execute
    first = negatives.generate(3, seed=5)
    again = negatives.generate(3, seed=5)
    # Assert
    assert [c for c, _ in first] == [c for c in negatives.GENERATORS for _ in range(3)]
    for (_, a), (_, b) in zip(first, again):
        assert a.dtype == np.uint8 and a.ndim == 2 and min(a.shape) >= 64
        assert np.array_equal(a, b)
    assert len({img.shape for _, img in first}) > 10
    assert all(img.std() > 1 for _, img in first)  # none blank


def test_negative_inputs_go_through_the_models_preprocessing():
    x, cats = ood.negative_inputs(2, InputSpec(32, 32, 1), seed=1)
    assert x.shape == (len(cats), 32, 32, 1) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and set(cats) <= set(negatives.GENERATORS)


def test_the_sample_sagittal_head_is_a_16_bit_slice():
    head = negatives.sagittal_head()
    assert head.shape == (256, 256) and head.dtype == np.uint16 and head.max() > 1000


def test_slice_head_folds_the_standardisation_and_separates_two_clouds():
    # Prepare: "slices" and "negatives" as two clouds far from zero mean, unit scale
    rng = np.random.default_rng(0)
    real = rng.normal(50, 5, (400, 6)) + np.r_[15, 0, 0, 0, 0, 0]
    fake = rng.normal(50, 5, (400, 6)) - np.r_[15, 0, 0, 0, 0, 0]
    # Execute
    head = ood.fit_slice_head(real[:300], fake[:300])
    threshold = ood.refusal_threshold(head, real[300:], max_refused=0.01)
    report = ood.refusal_report(head, threshold, {"held out": real[300:]}, fake[300:],
                                np.array(["cloud"] * 100))
    # Assert: the raw embeddings go in (no separate normalisation step on the device)
    assert set(head) == {"hidden/kernel", "hidden/bias", "output/kernel", "output/bias"}
    assert report["slices_refused"]["held out"] <= 0.02
    assert report["negatives_refused"]["cloud"] >= 0.95
    assert head_math.predict(head, real[300:]).mean() > 0.9
    with pytest.raises(ValueError):
        ood.fit_slice_head(real[:1], fake[:0])
