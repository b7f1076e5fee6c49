"""Decoding and preprocessing: real slices, brain crop, normalisation, formats, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from models import MAX_PIXELS
from models.core import preprocess as pp
from models.core.brain_mask import brain_mask
from models.core.preprocess import (ImageDecodeError, InputSpec, UnusableImageError,
                                    crop_to_mask, decode_image, preprocess, preprocess_bytes,
                                    to_gray)

DATA = Path(__file__).resolve().parents[3] / "shared/data/brain_tumor_dataset"
ROOT = Path(__file__).resolve().parents[2]
H, W = 600, 800
CENTRE, AXES = (520, 260), (150, 190)  # synthetic head: (x, y) centre and half-axes


def _real_bytes(rel: str) -> bytes:
    if not (DATA / rel).is_file():
        pytest.skip(f"real dataset not found at {DATA}")
    return (DATA / rel).read_bytes()


def _real_gray(rel: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(_real_bytes(rel), np.uint8), cv2.IMREAD_GRAYSCALE)


def _encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _head(clutter: bool = True, frame: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Textured ellipse off-centre on a black canvas (+ text, marker, frame) and its mask."""
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 6)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    ellipse = np.zeros((H, W), np.uint8)
    cv2.ellipse(ellipse, CENTRE, AXES, 0, 0, 360, 1, -1)
    img = ((60 + 180 * tex) * ellipse).astype(np.uint8)
    if clutter:
        cv2.putText(img, "PATIENT 0042 L", (20, 570), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 4)
        cv2.rectangle(img, (6, 6), (26, 26), 255, -1)
    if frame:
        cv2.rectangle(img, (0, 0), (W - 1, H - 1), 255, 24)  # 12 px white band inside
    return img, ellipse.astype(bool)


@pytest.mark.parametrize("spec", [InputSpec(224, 224, 3), InputSpec(128, 128, 1)])
@pytest.mark.parametrize("rel", ["yes/Y1.jpg", "no/no 9.png", "yes/Y12.jpg", "yes/Y46.jpg"])
def test_real_slices_become_centred_model_input(rel: str, spec: InputSpec) -> None:
    # Prepare: colour 218x180, wide 1080x1920 PNG, grayscale JPEG, tall 929x634
    data = _real_bytes(rel)
    # Execute
    out = preprocess_bytes(data, spec)
    # Assert: shape/dtype/range contract and a stretched, centred brain
    assert out.shape == (spec.height, spec.width, spec.channels) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert out.std() > 40 and out.max() > 240
    assert all(np.array_equal(out[..., 0], out[..., c]) for c in range(spec.channels))
    ys, xs = np.nonzero(out[..., 0] > 10)
    assert 0.3 < len(ys) / (spec.height * spec.width) < 0.85
    assert abs(ys.mean() / spec.height - 0.5) < 0.1 and abs(xs.mean() / spec.width - 0.5) < 0.1


@pytest.mark.parametrize("frame", [False, True], ids=["text+marker", "text+marker+frame"])
def test_brain_mask_and_crop_keep_the_head_and_drop_clutter(frame: bool) -> None:
    # Prepare
    img, ellipse = _head(frame=frame)
    gray = to_gray(img)
    # Execute
    mask = brain_mask(gray)
    crop, crop_mask = crop_to_mask(gray, mask)
    # Assert: the mask is the ellipse...
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - CENTRE[0]) < 3 and abs(ys.mean() - CENTRE[1]) < 3
    assert abs(mask.sum() / ellipse.sum() - 1) < 0.05
    assert (mask & ellipse).sum() / (mask | ellipse).sum() > 0.97
    assert not mask[520:, :450].any() and not mask[:40, :40].any()  # text, marker
    assert not mask[:12].any() and not mask[:, -12:].any()  # frame band
    # ...and the square crop holds all of it, centred, and nothing else bright
    side = 2 * AXES[1]
    assert crop.shape[0] == crop.shape[1] and side < crop.shape[0] < 1.15 * side
    assert crop_mask.sum() == mask.sum()
    cy, cx = np.argwhere(crop_mask).mean(axis=0)
    assert abs(cy - crop.shape[0] / 2) < 3 and abs(cx - crop.shape[1] / 2) < 3
    assert crop[~crop_mask].max() < 0.05


@pytest.mark.parametrize("rel", ["no/N3.jpg", "no/38 no.jpg", "yes/Y245.jpg"])
def test_brain_mask_keeps_the_head_of_a_darker_slice(rel: str) -> None:
    # Prepare: the same slice under a darkening gamma curve (another scanner's transfer)
    x = to_gray(decode_image(_real_bytes(rel)))
    # Execute
    clean, dark = brain_mask(x), brain_mask(x ** 1.7)
    # Assert: the same head (Otsu alone cut it to a sliver: IoU 0.06, 0.07, 0.43), and a
    # head, not the whole image
    assert (clean & dark).sum() / (clean | dark).sum() > 0.9
    assert 0.2 < clean.mean() < 0.8


@pytest.mark.parametrize("rel", ["yes/Y89.JPG", "yes/Y167.JPG"])
def test_lowering_the_cut_does_not_join_a_frame_or_background_to_the_head(rel: str) -> None:
    # Prepare: a thin white frame (Y89) and a white background (Y167) around the head
    x = to_gray(decode_image(_real_bytes(rel)))
    # Execute
    mask = brain_mask(x)
    # Assert: the corners stay outside (joined at a lower cut, the filled mask was 100 %
    # and 97 % of the image)
    assert mask.mean() < 0.6
    assert not (mask[0, 0] or mask[0, -1] or mask[-1, 0] or mask[-1, -1])


@pytest.mark.parametrize("frame", [False, True])
def test_clutter_does_not_change_model_input(frame: bool) -> None:
    # Prepare / Execute
    diff = np.abs(preprocess(_head(frame=frame)[0]) - preprocess(_head(clutter=False)[0]))
    # Assert
    assert diff.mean() < 1.0


def test_normalisation_cancels_contrast_and_brightness_of_the_head() -> None:
    # Prepare: the head at half contrast, and at 0.8 contrast lifted by 0.1 (background black)
    img, ellipse = _head(clutter=False)
    x = img.astype(np.float32) / 255
    # Execute
    half = preprocess(x * 0.5)
    brighter = preprocess(np.where(ellipse, x * 0.8 + 0.1, 0.0))
    # Assert
    assert np.abs(half - brighter).mean() < 1.0


def test_normalisation_cancels_a_lifted_background() -> None:
    # Prepare / Execute: x*0.5 vs x*0.8+0.1 over the whole image (black level raised to 0.1)
    x = _head(clutter=False)[0].astype(np.float32) / 255
    diff = np.abs(preprocess(x * 0.5) - preprocess(x * 0.8 + 0.1))
    # Assert
    assert diff.mean() < 2.0


@pytest.mark.parametrize("convert, shape, dtype", [
    (lambda g: g, (H, W), np.uint8),
    (lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGR), (H, W, 3), np.uint8),
    (lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2BGRA), (H, W, 4), np.uint8),
    (lambda g: g.astype(np.uint16) * 257, (H, W), np.uint16),
], ids=["gray", "bgr", "bgra", "gray16"])
def test_png_flavours_decode_to_the_same_input(convert, shape, dtype) -> None:
    # Prepare
    gray8 = _head()[0]
    reference = preprocess_bytes(_encode(gray8))
    data = _encode(convert(gray8))
    # Execute
    decoded = decode_image(data)
    out = preprocess(decoded)
    # Assert
    assert decoded.shape == shape and decoded.dtype == dtype
    assert decoded.max() == np.iinfo(dtype).max
    assert np.abs(out - reference).max() < 0.5


@pytest.mark.parametrize("img, match", [
    (np.zeros((64, 64), np.uint8), "blank"),
    (np.full((64, 64, 3), 128, np.uint8), "blank"),
    (np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8), "too small"),
    (np.array([[200]], np.uint8), "too small"),
], ids=["black", "flat-grey", "8x8", "1x1"])
def test_unusable_images_are_refused(img: np.ndarray, match: str) -> None:
    with pytest.raises(UnusableImageError, match=match):
        preprocess_bytes(_encode(img))


MPL_SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"])
def test_a_colour_photograph_is_refused_as_not_a_slice(name: str) -> None:
    # Prepare: real photographs (a portrait, a product shot) that ship with matplotlib.
    # Before the check the shipped model called the portrait a tumour (0.76).
    data = (MPL_SAMPLES / name).read_bytes()
    # Execute / Assert
    with pytest.raises(UnusableImageError, match="colour image"):
        preprocess_bytes(data)


def test_a_colour_mapped_slice_is_refused() -> None:
    gray = _real_gray("yes/Y1.jpg")
    with pytest.raises(UnusableImageError, match="colour image"):
        preprocess(cv2.applyColorMap(gray, cv2.COLORMAP_JET))


@pytest.mark.parametrize("gains", [(1.25, 1.0, 0.8), (0.8, 1.0, 1.25), (1.0, 1.15, 0.85)],
                         ids=["warm", "blue", "green"])
def test_a_colour_cast_or_coloured_annotation_is_still_a_slice(gains) -> None:
    # Prepare: film photographed on a tinted lightbox, plus a coloured measurement line
    gray = _real_gray("yes/Y1.jpg")
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    cast = np.clip(bgr * np.array(gains) + 20 * (np.array(gains) - 1), 0, 255).astype(np.uint8)
    cv2.line(cast, (20, 20), (cast.shape[1] - 20, 40), (0, 255, 255), 3)
    # Execute
    out = preprocess(cast, InputSpec(128, 128, 1))
    # Assert
    assert out.shape == (128, 128, 1)
    assert pp.colour_share(cast) < pp.MAX_COLOUR_SHARE / 2
    frame = cv2.resize(cast, (4056, 3040))  # the size of a Pi HQ camera frame
    assert pp.colour_share(frame) < pp.MAX_COLOUR_SHARE / 2


def test_no_slice_of_the_dataset_counts_as_a_colour_image() -> None:
    if not DATA.is_dir():
        pytest.skip(f"real dataset not found at {DATA}")
    shares = [pp.colour_share(decode_image(f.read_bytes()))
              for f in sorted(DATA.glob("*/*")) if f.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    assert len(shares) == 253
    assert max(shares) < pp.MAX_COLOUR_SHARE / 2  # 0.036 measured: four times below


def test_a_huge_image_is_shrunk_first_and_reads_as_the_slice_it_shows() -> None:
    # A slice photographed or scanned at 5000 px (a 12-megapixel camera gives 4056):
    # the model input matches the slice's own; before, every step ran at full size
    # (113 s against 3 s for 36 megapixels, bench in the README).
    slice_ = _real_gray("yes/Y41.jpg")  # 1275x1427
    side = 5000
    huge = cv2.resize(slice_, (side, side * slice_.shape[0] // slice_.shape[1]),
                      interpolation=cv2.INTER_CUBIC)
    assert max(pp._shrink(huge).shape) == pp.WORK_SIDE
    diff = np.abs(preprocess(huge) - preprocess(slice_))
    assert float(np.median(diff)) < 1.0 and float(np.mean(diff)) < 2.0  # of 255


def test_no_image_of_the_dataset_is_shrunk() -> None:
    # The shrink must leave training exactly as it was: every file is smaller.
    if not DATA.is_dir():
        pytest.skip(f"real dataset not found at {DATA}")
    sides = [max(decode_image(f.read_bytes()).shape[:2]) for f in sorted(DATA.glob("*/*"))
             if f.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    assert len(sides) == 253 and max(sides) <= pp.WORK_SIDE


@pytest.mark.parametrize("data", [
    b"", np.random.default_rng(2).bytes(4096), b"<!DOCTYPE html><html><body>x</body></html>",
    b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF", b"PK\x03\x04" + bytes(60),
], ids=["empty", "random", "html", "pdf", "zip"])
def test_non_images_raise_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_jpeg_is_rejected_not_half_decoded() -> None:
    # Prepare: OpenCV 5 returns None for a JPEG cut in half (no partially grey image)
    data = _real_bytes("yes/Y1.jpg")
    # Execute / Assert
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def _png_claiming(width: int, height: int) -> bytes:
    """A real 10x10 PNG whose IHDR (with a valid CRC) claims width x height."""
    png = bytearray(_encode(np.zeros((10, 10), np.uint8)))
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # IHDR CRC stays valid
    return bytes(png)


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpg = bytearray(_encode(np.full((16, 16), 99, np.uint8), ".jpg"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(jpg)


@pytest.mark.parametrize("data", [_png_claiming(30000, 30000), _jpeg_claiming(30000, 30000)],
                         ids=["png", "jpeg"])
def test_decompression_bomb_refused_from_header(data: bytes, monkeypatch) -> None:
    # Prepare: decoding must never start
    def no_decode(*_args):
        raise AssertionError("imdecode called on a decompression bomb")
    monkeypatch.setattr(pp.cv2, "imdecode", no_decode)
    # Execute / Assert
    with pytest.raises(UnusableImageError, match="30000x30000"):
        decode_image(data)


def test_oversized_bmp_header_is_a_clean_error() -> None:
    bmp = bytearray(_encode(np.zeros((10, 10), np.uint8), ".bmp"))
    bmp[18:26] = (40000).to_bytes(4, "little") * 2
    with pytest.raises(UnusableImageError):
        decode_image(bytes(bmp))


def test_preprocess_bytes_is_decode_then_preprocess() -> None:
    data = _real_bytes("yes/Y1.jpg")
    spec = InputSpec(96, 80, 3)
    assert np.array_equal(preprocess_bytes(data, spec), preprocess(decode_image(data), spec))
    assert InputSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("entry", ["models.__main__", "models.training.shifts",
                                   "models.training.splits", "device.imaging.decode",
                                   "device.__main__", "coordinator.__main__"])
def test_opencv_gets_its_decode_limit_before_it_is_first_imported(entry: str) -> None:
    # OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS when cv2 is imported: a module importing
    # cv2 before the limit was set left BMP/TIFF bombs to be decoded in full. Entry
    # points that import cv2 only later must have set it by the time they do.
    code = (
        "import importlib.abc, os, sys\n"
        "class Watch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'cv2' and 'cv2' not in sys.modules:\n"
        "            print('limit', os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS'))\n"
        "sys.meta_path.insert(0, Watch())\n"
        f"import {entry}\n"
        "import cv2\n")  # for entry points that import it later
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")

    assert out[0] == f"limit {MAX_PIXELS}"
