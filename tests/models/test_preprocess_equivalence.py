"""The fast preprocessing gives the models exactly the input they were trained on: bit for
bit, on every training slice and on the odd inputs an upload can bring.

The reference is a frozen copy of the original code (``preprocess_reference.py``); its
outputs on all slices of ``MANIFEST.tsv`` are kept as digests
(``preprocess_reference.tsv``), so this test runs only the code under test.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from models.core import preprocess as fast
from models.core.brain_mask import brain_mask
from tests.models import preprocess_reference as reference

MPL_SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"


def _reference_digests() -> list[list[str]]:
    with open(reference.DIGESTS, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][1:] == [f"{s.height}x{s.width}x{s.channels}" for s in reference.SPECS]
    return rows[1:]


def test_every_training_slice_gets_the_reference_model_input() -> None:
    # Prepare: the digests of the reference outputs, one row per slice of the manifest
    if not (reference.DATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared data not found at {reference.DATA}")
    expected = _reference_digests()
    paths = reference.manifest_paths()
    assert [row[0] for row in expected] == paths  # the data has not changed under us
    # Execute
    got = reference.digests(fast.preprocess, paths)
    # Assert: every slice, both input shapes (edge 128x128x1, paper 224x224x3)
    differing = [row[0] for row, new in zip(expected, got) if tuple(row) != new]
    print(f"{len(paths)} slices, {len(differing)} with a different model input")
    assert len(paths) == 3230 and differing == []


def _head_picture(dtype: type, scale: float, channels: int) -> np.ndarray:
    """A textured ellipse with a bright marker and text, in the given depth and layout."""
    rng = np.random.default_rng(7)
    tex = cv2.GaussianBlur(rng.random((300, 340)).astype(np.float32), (0, 0), 4)
    img = np.zeros((300, 340), np.float32)
    cv2.ellipse(img, (180, 150), (120, 130), 0, 0, 360, 1.0, -1)
    img = img * (0.3 + tex / tex.max() * 0.7)
    cv2.rectangle(img, (5, 5), (20, 20), 1.0, -1)
    text = np.zeros(img.shape, np.uint8)
    cv2.putText(text, "ID 42", (10, 290), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 1, 2)
    img = np.maximum(img, text.astype(np.float32))
    img = (img * scale).astype(dtype)
    return np.stack([img] * channels, axis=2) if channels > 1 else img


SYNTHETIC = {
    "uint8": _head_picture(np.uint8, 255, 1),
    "uint8-bgr": _head_picture(np.uint8, 255, 3),
    "uint8-bgra": _head_picture(np.uint8, 255, 4),
    "uint8-one-channel": _head_picture(np.uint8, 255, 1)[:, :, None],
    "uint16": _head_picture(np.uint16, 65535, 1),
    "uint16-bgr": _head_picture(np.uint16, 4095, 3),
    "int16-negative": _head_picture(np.int16, 30000, 1) - 2000,
    "float32-unit": _head_picture(np.float32, 1.0, 1),
    "float64-hounsfield": _head_picture(np.float64, 1200.0, 1) - 100,
    "float32-nan": np.where(np.eye(300, 340, dtype=bool), np.nan,
                            _head_picture(np.float32, 1.0, 1)),
    "uint8-colour-cast": np.clip(_head_picture(np.uint8, 255, 3) * [1.2, 1.0, 0.8], 0,
                                 255).astype(np.uint8),
    "uint8-jet": cv2.applyColorMap(_head_picture(np.uint8, 255, 1), cv2.COLORMAP_JET),
    "uint8-huge": cv2.resize(_head_picture(np.uint8, 255, 3), (2600, 2300)),
    "uint8-blank": np.full((100, 100), 77, np.uint8),
    "uint8-tiny": np.zeros((40, 400), np.uint8),
    "photo": cv2.imread(str(MPL_SAMPLES / "grace_hopper.jpg"), cv2.IMREAD_UNCHANGED),
    "photo-png-rgba": cv2.imread(str(MPL_SAMPLES / "Minduka_Present_Blue_Pack.png"),
                                 cv2.IMREAD_UNCHANGED),
}


def _outcome(preprocess, img: np.ndarray, spec: fast.InputSpec) -> tuple:
    try:
        out = preprocess(img.copy(), spec)
    except fast.UnusableImageError as exc:
        return "refused", str(exc)
    return out.dtype, out.shape, out.tobytes()


@pytest.mark.parametrize("spec", reference.SPECS, ids=lambda s: f"{s.height}x{s.channels}")
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_odd_inputs_get_the_reference_model_input_or_refusal(name: str,
                                                             spec: fast.InputSpec) -> None:
    # Prepare
    img = SYNTHETIC[name]
    # Execute
    got, expected = _outcome(fast.preprocess, img, spec), _outcome(reference.preprocess,
                                                                   img, spec)
    # Assert: the same bytes, or the same refusal in the same words
    assert got == expected


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_the_public_steps_match_the_reference(name: str) -> None:
    # Prepare
    img = SYNTHETIC[name]
    if min(img.shape[:2]) < fast.MIN_SIDE:
        pytest.skip("refused before these steps")
    # Execute
    gray = fast.to_gray(img)
    mask = brain_mask(gray)
    crop, crop_mask = fast.crop_to_mask(gray, mask)
    # Assert
    assert fast.colour_share(img) == reference.colour_share(img)
    assert gray.dtype == np.float32 and np.array_equal(gray, reference.to_gray(img))
    assert mask.dtype == bool and np.array_equal(mask, reference.brain_mask(gray))
    ref_crop, ref_mask = reference.crop_to_mask(gray, mask)
    assert np.array_equal(crop, ref_crop) and crop_mask.dtype == bool
    assert np.array_equal(crop_mask, ref_mask)
    normal = fast.normalize(crop, crop_mask)
    expected = reference.normalize(ref_crop, ref_mask)
    assert normal.dtype == expected.dtype and np.array_equal(normal, expected)
