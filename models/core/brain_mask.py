"""The brain mask of the training preprocessing (:mod:`models.core.preprocess`): the
largest bright connected component of a slice, holes filled, so that black borders,
burnt-in text and markers are ignored. Like the rest of the preprocessing, it is kept
bit for bit as the models were trained (``tests/models/test_preprocess_equivalence.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

# Lowering the cut further is taken when it grows the mask by more than this factor...
MASK_GROWTH = 1.5
# ...and leaves it below this share of the image: a filled ellipse inscribed in the image
# covers 79 %; more is a frame or a bright background joined to the head.
MASK_MAX_SHARE = 0.9


def brain_mask(gray: np.ndarray) -> np.ndarray:
    """Boolean mask of the head: the largest bright connected component, holes filled.

    Otsu on the blurred image separates tissue from background, and the cut sits halfway
    between the background level and Otsu; an opening detaches thin frames, text and
    markers, which are then dropped as smaller components. Where Otsu splits the tissue
    itself (bright fat, skull or lesion from the rest: a darker image, a bright tumour),
    that cut keeps only part of the head; so the cut is halved towards the background
    while that grows the mask by more than :data:`MASK_GROWTH` (or finds one where there
    was none) without covering more than :data:`MASK_MAX_SHARE` of the image. Each lower
    cut costs one more component pass. Returns an all-False mask for a blank image.
    """
    found = head((gray * 255).astype(np.uint8))
    return np.zeros(gray.shape, bool) if found.mask is None else found.mask.view(bool)


class Component(NamedTuple):
    """A filled component: uint8 0/1 at full size (None: no component) and its area."""
    mask: np.ndarray | None
    area: int


def head(raw: np.ndarray) -> Component:
    """:func:`brain_mask` as a :class:`Component`, of ``raw``: the grey image in [0, 1]
    as ``(gray * 255).astype(np.uint8)``."""
    g8 = cv2.GaussianBlur(raw, (5, 5), 0)
    low, high = cv2.minMaxLoc(g8)[:2]
    if high - low < 8:
        return Component(None, 0)
    thr, _ = cv2.threshold(g8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # The background level: the 1st percentile, from the histogram; whatever the
    # scanner's black level, the cut stays 8 grey levels above it.
    counts = cv2.calcHist([g8], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    bg = float(np.searchsorted(np.cumsum(counts), 0.01 * g8.size))
    # Opening by a flat element commutes with thresholding: open(g8 > t) is
    # open(g8) > t. One grey opening serves every cut.
    k = max(3, int(min(g8.shape) * 0.02) | 1)
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    opened = cv2.morphologyEx(g8, cv2.MORPH_OPEN, element)
    # Each component of an opening holds a whole element, at worst the quarter of one
    # centred on a corner, so there are at most this many (16-bit labels count faster).
    most = g8.size // cv2.countNonZero(element[k // 2:, k // 2:])

    def halfway(level: float) -> float:
        return max(bg + (level - bg) * 0.5, bg + 8)

    cut = halfway(thr)
    mask = _largest_component(_above(opened, cut), most)
    while (lower := halfway(cut)) < cut:
        binary = _above(opened, lower)
        if mask.area and _box_area(binary) <= MASK_GROWTH * mask.area:
            break  # what it could grow to fits in a box too small: the pass below would
            # break too, as a component with its holes never covers more than its box
        grown = _largest_component(binary, most)
        if grown.area / g8.size > MASK_MAX_SHARE or (
                mask.area and grown.area <= MASK_GROWTH * mask.area):
            break
        mask, cut = grown, lower
    return mask


def _above(img: np.ndarray, level: float) -> np.ndarray:
    """``img > level`` of a uint8 image, as uint8 0/1."""
    return cv2.threshold(img, math.floor(level), 1, cv2.THRESH_BINARY)[1]


def _box_area(binary: np.ndarray) -> int:
    """Area of the bounding box of a binary image's non-zero pixels."""
    w, h = cv2.boundingRect(binary)[2:]
    return w * h


def _largest_component(binary: np.ndarray, most: int) -> Component:
    """The largest 8-connected component of an opened binary image (uint8 0/1, with at
    most ``most`` components), holes filled."""
    x, y, w, h = cv2.boundingRect(binary)  # labelled inside the box holding all of them
    if w == 0:
        return Component(None, 0)
    box = binary[y:y + h, x:x + w]
    small = most < 65535
    n, labels = cv2.connectedComponents(box, connectivity=8,
                                        ltype=cv2.CV_16U if small else cv2.CV_32S)
    if n > 2:  # more than one: keep the largest (the first of equals, in raster order)
        areas = (cv2.calcHist([labels], [0], None, [n], [0, n]).ravel() if small
                 else np.bincount(labels.ravel(), minlength=n))
        box = cv2.compare(labels, 1 + int(np.argmax(areas[1:])), cv2.CMP_EQ)
    contours, _ = cv2.findContours(box, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                   offset=(x, y))
    filled = np.zeros(binary.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return Component(filled, cv2.countNonZero(filled))
