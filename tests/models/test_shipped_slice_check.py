"""The shipped bundle's 'not a brain MRI slice' check, through the appliance's LiteRT
predictor: pictures that are not brain MRI are refused, slices of every site are not."""
from __future__ import annotations

import numpy as np
import pytest

from device.inference.predictor import create_predictor
from models.__main__ import DEFAULT_BUNDLE
from models.core import preprocess as mp
from models.core.preprocess import read_image
from models.core.bundle import verify_bundle
from models.core.signing import load_public_key
from models.training import negatives
from models.training.dataset import load_samples
from tests.conftest import DATA

SHARED_DATA = DATA.parent

UNSEEN_SEED = 1234  # the bundle's negatives were drawn with seeds 1 and 2


@pytest.fixture(scope="module")
def predictor():
    from device.config import DEV_PUBLIC_KEY
    bundle = verify_bundle(DEFAULT_BUNDLE, [load_public_key(DEV_PUBLIC_KEY)])
    assert bundle.load_slice_check() is not None
    return create_predictor("litert", bundle)


def _is_slice(predictor, image: np.ndarray) -> bool:
    return predictor.predict(mp.preprocess(image, predictor.input_spec)).is_slice


def test_pictures_that_are_not_brain_mri_are_refused(predictor):
    drawn = negatives.generate(6, seed=UNSEEN_SEED)

    refused = [not _is_slice(predictor, image) for _, image in drawn]

    assert np.mean(refused) >= 0.9, f"{sum(refused)} of {len(drawn)} refused"


@pytest.mark.xfail(strict=True, reason="known failure (docs/model-card.md): the embedding, "
                   "learned for tumours, puts this abdominal CT among the brain slices")
def test_the_abdominal_ct_labelled_tumour_in_the_kaggle_set_is_refused(predictor, data_dir):
    assert not _is_slice(predictor, read_image(data_dir / "yes/Y248.JPG"))


def test_slices_of_every_site_and_a_sagittal_head_are_not_refused(predictor):
    if not (SHARED_DATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    samples = load_samples(SHARED_DATA)
    rng = np.random.default_rng(0)
    by_site: dict[str, list] = {}
    for i in rng.permutation(len(samples)):
        by_site.setdefault(samples[i].site, []).append(samples[i])

    refused = {site: sum(not _is_slice(predictor, read_image(s.path)) for s in chosen[:40])
               for site, chosen in by_site.items()}

    assert sum(refused.values()) <= 2, refused  # of 240 slices
    assert _is_slice(predictor, negatives.sagittal_head())
