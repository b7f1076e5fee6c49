"""Image decoding and preprocessing shared by training and the appliance.

The same functions turn a training JPEG and a clinician's upload into the model input,
so the device sees exactly what the network was trained on. No TensorFlow here: the
appliance imports this module with only NumPy and OpenCV.

Pipeline: decode -> grayscale float in [0, 1] -> brain mask (largest bright component,
so black borders, burnt-in text and markers are ignored) -> square crop around the
brain -> intensity normalisation inside the brain mask -> resize -> float32 in [0, 255].

Models were trained on exactly these outputs: every shortcut below does the same float
operations on the same values, checked bit for bit on every slice of the shared data
against a frozen copy of the original code (``tests/models/preprocess_reference.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
import cv2
import numpy as np

# Refuse decompression bombs before OpenCV allocates them: PNG/JPEG headers are checked
# below; OpenCV's own limit (set in ``models/__init__``) covers the other formats.
from models import MAX_PIXELS
from models.core.brain_mask import head
from models.core.headers import image_size

logger = logging.getLogger(__name__)
MIN_SIDE = 64  # pixels on the shorter side; no training slice has fewer than 150


class ImageDecodeError(ValueError):
    """The bytes are not an image OpenCV can decode."""


class UnusableImageError(ValueError):
    """The image decodes but cannot be a usable slice (too small, too large, blank, colour)."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: size, channels and value range of its input."""

    height: int = 224
    width: int = 224
    channels: int = 3

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "range": [0.0, 255.0]}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(int(d["height"]), int(d["width"]), int(d["channels"]))


def _too_large(width: int, height: int) -> UnusableImageError:
    return UnusableImageError(f"image too large: {width}x{height} pixels (the limit is "
                              f"{MAX_PIXELS / 1e6:g} megapixels)")


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes with OpenCV, keeping depth and channels.

    Raises
    ------
    ImageDecodeError
        Empty, truncated or non-image bytes.
    UnusableImageError
        More than ``MAX_PIXELS`` pixels (checked from the header before decoding).
    """
    if not data:
        raise ImageDecodeError("empty file")
    size = image_size(data)
    if size and size[0] * size[1] > MAX_PIXELS:
        raise _too_large(*size)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. over OPENCV_IO_MAX_IMAGE_PIXELS
        raise UnusableImageError(f"image cannot be decoded safely: {exc.err}") from None
    if img is None or img.size == 0:
        raise ImageDecodeError("not a decodable image (corrupt, truncated or wrong type)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise _too_large(img.shape[1], img.shape[0])
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode an image file; see :func:`decode_image`."""
    return decode_image(Path(path).read_bytes())


def to_gray(img: np.ndarray) -> np.ndarray:
    """Grayscale float32 in [0, 1] from gray, BGR or BGRA of any integer or float depth."""
    return _to_gray(img)[0]


def _to_gray(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`to_gray`, and the uint8 grey it was made from (None unless uint8)."""
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = img[:, :, 0]
    if img.ndim != 2:
        raise UnusableImageError(f"unsupported image shape {img.shape}")
    if img.dtype == np.uint8:
        return cv2.LUT(img, _UNIT_U8), img  # the same divisions, once per grey level
    if img.dtype.kind == "u":  # in [0, 1] already: nothing to clean or clip
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max), None
    if np.issubdtype(img.dtype, np.integer):
        out = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    else:
        out = img.astype(np.float32)
        hi = float(np.nanmax(out)) if out.size else 0.0
        out = out / hi if hi > 1.0 else out
    return np.clip(np.nan_to_num(out), 0.0, 1.0), None


_UNIT_U8 = np.arange(256, dtype=np.float32) / 255.0  # float32(v) / 255 for each uint8 v
_BACK_U8 = (_UNIT_U8 * 255).astype(np.uint8)  # and (gray * 255).astype(np.uint8) of it


# A pixel is "coloured" when its channels differ by more than this (of the image's peak)
# once a global colour cast is removed...
COLOUR_CHROMA = 40 / 255
# ...and an image with more than this share of coloured pixels is not a greyscale scan.
# Measured (README, Preprocessing): at most 3.6 % on the 253 slices (coloured annotations),
# at most 6 % on slices given a lightbox-like colour cast, 31-86 % on colour pictures.
MAX_COLOUR_SHARE = 0.15


def colour_share(img: np.ndarray) -> float:
    """Share of pixels whose channels differ by more than :data:`COLOUR_CHROMA` of the
    image's peak, after each channel is scaled to the same mean (grey world: a camera's
    colour cast on film is not colour). 0 for single-channel images; measured at most
    256 px on a side."""
    if img.ndim != 3 or img.shape[2] < 3:
        return 0.0
    step = max(1, max(img.shape[:2]) // 512)  # a camera frame: subsample before converting
    sub = img[::step, ::step, :3]
    if sub.dtype == np.uint8:  # finite and >= 0: one table divides by the peak
        b, g, r = cv2.split(np.ascontiguousarray(sub))
        if not (cv2.countNonZero(cv2.absdiff(b, g)) or cv2.countNonZero(cv2.absdiff(b, r))):
            return 0.0  # grey stored as colour: every spread below is 0 but for rounding
        peak = max(float(sub.max()), 1e-6)
        bgr = cv2.LUT(np.ascontiguousarray(sub), np.arange(256, dtype=np.float32) / peak)
    else:
        bgr = np.clip(np.nan_to_num(sub.astype(np.float32)), 0, None)
        bgr /= max(float(bgr.max()), 1e-6)  # relative to its own peak: 12-bit or dim colour
    shrink = 256 / max(bgr.shape[:2])
    if shrink < 1:
        size = (max(1, round(bgr.shape[1] * shrink)), max(1, round(bgr.shape[0] * shrink)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    means = bgr.reshape(-1, 3).mean(axis=0)
    bgr = bgr * (means.mean() / np.maximum(means, 1e-6))
    b, g, r = bgr[:, :, 0], bgr[:, :, 1], bgr[:, :, 2]
    spread = np.maximum(np.maximum(b, g), r) - np.minimum(np.minimum(b, g), r)
    return cv2.countNonZero((spread > COLOUR_CHROMA).view(np.uint8)) / spread.size


def crop_to_mask(gray: np.ndarray, mask: np.ndarray | None, margin: float = 0.04
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around the mask's bounding box (zero padded), image and mask together.

    Falls back to the whole image when the mask is empty (or None) or implausibly small
    (< 2%).
    """
    box, u8 = _square_box(gray.shape, mask, margin)
    return _paste(gray, box, np.float32), _paste(u8, box, np.uint8).view(bool)


def _square_box(shape: tuple[int, ...], mask: np.ndarray | None, margin: float
                ) -> tuple[tuple[int, int, int], np.ndarray]:
    """:func:`crop_to_mask`'s square as (top, left, side), and the mask as uint8 0/1."""
    h, w = shape[:2]
    u8 = None if mask is None else np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    if u8 is None or cv2.countNonZero(u8) < 0.02 * h * w:
        u8 = np.ones((h, w), np.uint8)
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0, bw, bh = cv2.boundingRect(u8)
        x1, y1 = x0 + bw, y0 + bh
    side = int(max(y1 - y0, x1 - x0) * (1 + 2 * margin))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    return (cy - side // 2, cx - side // 2, side), u8


def _paste(img: np.ndarray, box: tuple[int, int, int], dtype: type) -> np.ndarray:
    """The square ``box`` of ``img`` as ``dtype``, zero where it leaves the image."""
    (top, left, side), (h, w) = box, img.shape[:2]
    out = np.zeros((side, side), dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, h), min(left + side, w)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = img[sy0:sy1, sx0:sx1]
    return out


def normalize(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Stretch the 1st-99th intensity percentiles inside the mask to [0, 1].

    Scanners and sequences differ in brightness and contrast; normalising on brain
    pixels only (not the black background) makes them comparable.
    """
    lo, hi = _percentiles(_inside(gray, mask))
    if hi - lo < 1e-6:
        return np.zeros_like(gray)
    out = gray - lo  # float64: the percentiles are
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)


def _normalize_levels(levels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`normalize` of ``_UNIT_U8[levels]``, the float grey of uint8 grey levels:
    the same order statistics, counted instead of sorted, and the same float64
    operations, done once per grey level."""
    lo, hi = _percentiles(_inside(levels, mask), _counted)
    if hi - lo < 1e-6:
        return np.zeros(levels.shape, np.float64)
    table = _UNIT_U8.astype(np.float64) - lo
    table /= hi - lo
    return cv2.LUT(levels, np.clip(table, 0.0, 1.0, out=table))


def _inside(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pixels :func:`normalize` takes its percentiles from: the mask's core."""
    # Erode first: the mask's rim holds background pixels, whose share would otherwise
    # move the 1st percentile with the mask's size.
    mask = np.ascontiguousarray(mask, dtype=bool)
    core = cv2.erode(mask.view(np.uint8), _CORE_KERNEL).view(bool)
    inside = gray[core] if cv2.countNonZero(core.view(np.uint8)) > 100 else (
        gray[mask] if mask.any() else gray.ravel())
    return inside[::max(1, inside.size // 50_000)]


def _counted(levels: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """:func:`_sorted_at` of ``_UNIT_U8[levels]``: order statistics of uint8 levels
    from their counts, as their float grey."""
    ends = np.cumsum(np.bincount(levels, minlength=256))
    return _UNIT_U8[np.searchsorted(ends, kth % levels.size, side="right")]


_CORE_KERNEL = np.ones((5, 5), np.uint8)
_PERCENTS = np.true_divide([1.0, 99.0], 100)


def _sorted_at(values: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """The order statistics ``kth`` of float values (negative: from the end)."""
    return np.partition(values, kth)[kth]


def _percentiles(values: np.ndarray, select=_sorted_at) -> np.ndarray:
    """``np.percentile(values, [1, 99])`` of an array without NaN: the same order
    statistics and the same float64 interpolation as NumPy's default ("linear") method,
    without its overhead. ``select(values, kth)``: the order statistics ``kth``
    (:func:`_sorted_at`, or :func:`_counted` for uint8 levels)."""
    virtual = (values.size - 1) * _PERCENTS
    below = np.floor(virtual)
    below[virtual >= values.size - 1] = -1  # past the end: the largest value
    above = np.where(below == -1, -1, below + 1)
    low, high = below.astype(np.intp), above.astype(np.intp)
    kth = np.unique(np.concatenate(([0, -1], low, high)))
    stats = select(values, kth)
    a, b = stats[np.searchsorted(kth, low)], stats[np.searchsorted(kth, high)]
    gamma = virtual - below
    diff = b - a  # in the values' own type, as NumPy's _lerp
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe")
    return out


def refuse_colour(img: np.ndarray) -> None:
    """UnusableImageError if more than ``MAX_COLOUR_SHARE`` of ``img`` (gray, BGR or
    BGRA) is coloured (:func:`colour_share`)."""
    share = colour_share(img)
    if share > MAX_COLOUR_SHARE:
        raise UnusableImageError(
            f"a colour image ({share:.0%} of its pixels are coloured), but MRI slices are "
            "greyscale: a photograph, screenshot or colour map is not a slice this model "
            "reads (with the camera, frame only the film)")


# Larger images are shrunk before anything else: finding the brain and reaching the
# model's 128 px need no more, and a 36-megapixel upload took 0.5-1.3 GB and up to 49 s
# at full size on this machine (README). No image of the training set is this large
# (the largest is 1920x1080), so training sees exactly what it saw before.
WORK_SIDE = 2048


def _shrink(img: np.ndarray) -> np.ndarray:
    """``img`` resized (area averaging) to at most ``WORK_SIDE`` pixels on a side."""
    side = max(img.shape[:2])
    if side <= WORK_SIDE or img.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        return img
    scale = WORK_SIDE / side
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Crop:
    """Where the model input lies in the decoded image: the square ``side`` pixels wide
    at (``top``, ``left``), in the image's own pixels (it may extend past its edges,
    where the input is zero), and the image's ``height`` and ``width``."""

    top: float
    left: float
    side: float
    height: int
    width: int


def preprocess(img: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Model input (H, W, C) float32 in [0, 255] from a decoded image of any depth and
    channel count.

    Raises
    ------
    UnusableImageError
        Image smaller than ``MIN_SIDE`` pixels on a side, blank, or in colour (a
        photograph, screenshot or colour map: never trained on, yet scored; README).
    """
    return preprocess_with_crop(img, spec)[0]


def preprocess_with_crop(img: np.ndarray, spec: InputSpec = InputSpec()
                         ) -> tuple[np.ndarray, Crop]:
    """:func:`preprocess`, and where its input lies in ``img`` (to draw on ``img`` what
    was found on the input, e.g. a heat map)."""
    if img.ndim < 2 or min(img.shape[:2]) < MIN_SIDE:
        raise UnusableImageError(f"image too small: shape {img.shape}")
    height, width = img.shape[:2]
    img = _shrink(img)
    refuse_colour(img)
    gray, gray_u8 = _to_gray(img)
    low, high = cv2.minMaxLoc(gray)[:2]
    if high - low < 1e-3:
        raise UnusableImageError("blank image (no contrast)")
    raw = (gray * 255).astype(np.uint8) if gray_u8 is None else cv2.LUT(gray_u8, _BACK_U8)
    box, mask = _square_box(gray.shape, head(raw).mask, 0.04)
    mask = _paste(mask, box, np.uint8).view(bool)
    if gray_u8 is None:
        crop = normalize(_paste(gray, box, np.float32), mask)
    else:  # the same values, from the grey levels
        crop = _normalize_levels(_paste(gray_u8, box, np.uint8), mask)
    small = cv2.resize(crop, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    out = np.clip(small, 0.0, 1.0)[:, :, None] * 255.0
    scale = width / img.shape[1]  # _shrink keeps the aspect (to rounding)
    return (np.repeat(out, spec.channels, axis=2).astype(np.float32),
            Crop(box[0] * scale, box[1] * scale, box[2] * scale, height, width))


def preprocess_bytes(data: bytes, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Decode and preprocess in one step (what an upload goes through)."""
    return preprocess(decode_image(data), spec)
