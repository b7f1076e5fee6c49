"""Predictor registry, the LiteRT predictor on the shipped bundle, the heat map, the slot."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from device.config import DEFAULT_BUNDLE, DEV_PUBLIC_KEY
from device.inference.heatmap import FULL_SCALE_DROP, heatmap_png, occlusion_map, overlay_png
from device.inference.predictor import Predictor, create_predictor
from device.inference.slot import ModelSlot
from models.core.bundle import Bundle, verify_bundle
from models.core.preprocess import Crop, preprocess_bytes
from models.core.signing import load_public_key
from tests.device.bundles import with_slice_check


@pytest.fixture(scope="module")
def bundle():
    return verify_bundle(DEFAULT_BUNDLE, [load_public_key(DEV_PUBLIC_KEY)])


class BrightSpotPredictor(Predictor):
    """Test double behind the seam: 'tumour' probability is the mean of one region."""

    def probabilities(self, images):
        p = images[:, 8:24, 40:56, 0].mean(axis=(1, 2)) / 255.0
        return p.astype(np.float32), np.zeros((len(images), 4), np.float32)


def test_litert_predictor_on_the_shipped_bundle(bundle, data_dir):
    predictor = create_predictor("litert", bundle)
    image = preprocess_bytes((data_dir / "yes/Y1.jpg").read_bytes(), predictor.input_spec)

    result = predictor.predict(image)

    assert 0.0 <= result.probability <= 1.0
    assert result.label == int(result.probability >= bundle.threshold)
    low, high = bundle.uncertain_interval
    assert result.uncertain == (low < result.probability < high)
    assert result.embedding.shape == (predictor.embedding_dim,)
    batch = predictor.occlusion_probabilities(np.repeat(image[None], 3, axis=0))
    np.testing.assert_allclose(batch, result.probability, atol=1e-5)


@pytest.mark.parametrize("band, uncertain, certain", [
    # Format 2, +-0.619 logits around 0.25: from 0.152 to 0.382.
    ({"format": 2, "uncertain_logit_band": 0.619}, [0.16, 0.25, 0.37], [0.10, 0.14, 0.40]),
    # Format 1 (the first shipped bundle's), +-0.15 in probability: from 0.10 to 0.40.
    ({"format": 1, "uncertain_band": 0.15}, [0.11, 0.25, 0.39], [0.09, 0.41]),
])
def test_uncertain_means_near_the_threshold_in_the_bundles_units(bundle, band, uncertain,
                                                                 certain):
    manifest = {k: v for k, v in bundle.manifest.items()
                if not k.startswith("uncertain") and k != "slice_check"}  # a 4-value double
    predictor = BrightSpotPredictor(Bundle(bundle.path, {**manifest, "threshold": 0.25,
                                                         **band}))

    def flagged(p):
        return predictor.predict(np.full((128, 128, 1), 255.0 * p, np.float32)).uncertain

    assert [flagged(p) for p in uncertain] == [True] * len(uncertain)
    assert [flagged(p) for p in certain] == [False] * len(certain)


def test_unknown_predictor_names_the_choices(bundle):
    with pytest.raises(ValueError, match="litert"):
        create_predictor("coral", bundle)


def test_occlusion_map_peaks_where_the_model_looks(bundle):
    predictor = BrightSpotPredictor(bundle)
    image = np.full((128, 128, 1), 200.0, np.float32)
    base = float(predictor.probabilities(image[None])[0][0])

    drop = occlusion_map(predictor, image, base)

    spot = np.zeros(drop.shape, bool)
    spot[8:24, 40:56] = True
    assert drop[spot].mean() > 3 * drop[~spot].mean() > 0
    assert drop[100:, 100:].max() == pytest.approx(0.0)


WHOLE = Crop(0, 0, 128, 128, 128)  # an input that is the whole image


def test_heatmap_png_is_an_overlay_image(bundle):
    png = heatmap_png(BrightSpotPredictor(bundle), np.full((128, 128, 1), 99.0, np.float32),
                      0.39, WHOLE)

    out = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.shape == (128, 128, 4)  # colour and opacity, to lay over the slice


def test_heat_map_colours_are_on_one_absolute_scale():
    small, large = np.zeros((128, 128), np.float32), np.zeros((128, 128), np.float32)
    small[:32, :32], large[:32, :32] = 0.03, FULL_SCALE_DROP  # the same map, two strengths

    def opacity(drop):
        out = cv2.imdecode(np.frombuffer(overlay_png(drop, WHOLE), np.uint8),
                           cv2.IMREAD_UNCHANGED)
        return out[10:20, 10:20, 3].mean()

    # Each map scaled to its own maximum painted both the same; now the small drop is faint.
    assert opacity(small) < 0.3 * opacity(large)
    assert opacity(np.zeros((128, 128), np.float32)) == 0


def test_the_heat_map_lies_over_the_stored_image_where_the_input_came_from():
    # Prepare: the model's input is a 300-px square at (top 100, left 400) of a 1000x600
    # image (landscape: the map is drawn 512 px wide); the input's top-left quarter drove it
    drop = np.zeros((128, 128), np.float32)
    drop[:64, :64] = FULL_SCALE_DROP
    crop = Crop(100, 400, 300, 600, 1000)
    # Execute
    out = cv2.imdecode(np.frombuffer(overlay_png(drop, crop), np.uint8), cv2.IMREAD_UNCHANGED)
    # Assert: the image's shape; colour over that quarter (150 px at 400,100 -> x 205-282,
    # y 51-128 once scaled by 0.512), none elsewhere
    assert out.shape == (307, 512, 4)
    alpha = out[..., 3] > 0
    ys, xs = np.nonzero(alpha)
    assert abs(xs.min() - 205) <= 2 and abs(xs.max() - 282) <= 2
    assert abs(ys.min() - 51) <= 2 and abs(ys.max() - 128) <= 2


def test_slot_swap_leaves_requests_in_flight_on_the_old_model(bundle):
    old, new = BrightSpotPredictor(bundle), BrightSpotPredictor(bundle)
    slot = ModelSlot(old)
    taken = slot.current

    def swap():
        slot.swap(new)

    t = threading.Thread(target=swap)
    t.start()
    t.join()

    assert taken is old and slot.current is new


@pytest.mark.parametrize("threshold, expected", [(1e-6, True), (1 - 1e-6, False)])
def test_a_bundles_slice_check_scores_the_embedding_and_decides(bundle, data_dir, tmp_path,
                                                                threshold, expected):
    # Prepare: the shipped model re-signed with a slice head whose output is the sigmoid
    # of its first embedding feature
    checked = create_predictor("litert", with_slice_check(bundle, tmp_path / "b", threshold))
    image = preprocess_bytes((data_dir / "yes/Y1.jpg").read_bytes(), checked.input_spec)
    # Execute
    result = checked.predict(image)
    # Assert
    first = max(float(result.embedding[0]), 0.0)
    assert result.slice_score == pytest.approx(1 / (1 + np.exp(-first)), abs=1e-5)
    assert result.is_slice is expected
    unchecked = create_predictor(
        "litert", with_slice_check(bundle, tmp_path / "u", None)).predict(image)
    assert unchecked.slice_score is None and unchecked.is_slice
    assert unchecked.probability == pytest.approx(result.probability)
