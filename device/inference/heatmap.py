"""Occlusion-sensitivity heat map, computed with the same LiteRT model.

A black square (a quarter of the input's side) slides over the model input in steps of
8 pixels; where hiding a region lowers the tumour probability most, that region drove the
prediction. Each input pixel gets the mean drop of the squares that covered it. Honest
rather than sharp: it shows what this model looked at, with no gradients needed on the
device. The map is drawn in the stored image's own geometry (through the crop the
preprocessing took), so it lies exactly over the slice as stored.
"""
from __future__ import annotations

import cv2
import numpy as np

from device.inference.predictor import Predictor
from models.core.preprocess import Crop

PATCH_FRACTION = 0.25     # occluder side as a fraction of the input side (32 px of 128)
STRIDE_FRACTION = 0.0625  # step between occluder positions (8 px of 128: 13 x 13)
DISPLAY_SIDE = 512        # longest side of the drawn map (the browser scales it)
ALPHA = 0.8               # opacity of a full-scale drop
# Colours are on one absolute scale for every case: full red is a drop in tumour
# probability of this much or more. Scaled to each map's own maximum, a 3-point drop on a
# "no tumour" slice looked as red as a 20-point drop on a tumour.
FULL_SCALE_DROP = 0.2
FORMAT = "aligned-rgba-2"  # what the map looks like: a new one redraws the stored maps


def occlusion_map(predictor: Predictor, image: np.ndarray, base_probability: float
                  ) -> np.ndarray:
    """Drop in probability per input pixel (H, W) float32, averaged over the overlapping
    occluders that covered it. The copies go to the model a row of positions at a time
    (13: the LiteRT predictor's batch), never all at once."""
    h, w = image.shape[:2]
    patch, stride = int(h * PATCH_FRACTION), max(1, int(h * STRIDE_FRACTION))
    xs = range(0, w - patch + 1, stride)
    drop = np.zeros((h, w), np.float32)
    hits = np.zeros((h, w), np.float32)
    batch = np.empty((len(xs), *image.shape), image.dtype)
    for y in range(0, h - patch + 1, stride):
        batch[:] = image
        for i, x in enumerate(xs):
            batch[i, y:y + patch, x:x + patch] = 0.0
        for x, p in zip(xs, predictor.occlusion_probabilities(batch)):
            drop[y:y + patch, x:x + patch] += base_probability - p
            hits[y:y + patch, x:x + patch] += 1
    return drop / np.maximum(hits, 1)


def overlay_png(drop: np.ndarray, crop: Crop) -> bytes:
    """RGBA PNG of positive drops in JET colours, laid over the stored image: the same
    aspect, at most :data:`DISPLAY_SIDE` on its longest side, transparent where hiding
    changed nothing and outside the model's crop; opacity grows with the drop, on the
    absolute scale of :data:`FULL_SCALE_DROP` (a larger drop saturates)."""
    scale = min(1.0, DISPLAY_SIDE / max(crop.height, crop.width))
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    heat = (np.clip(drop / FULL_SCALE_DROP, 0, 1) * 255).astype(np.uint8)
    # input pixel (u, v) -> displayed pixel: through the crop square, then the scale
    step = crop.side / drop.shape[1] * scale
    matrix = np.float32([[step, 0, crop.left * scale + (step - 1) / 2],
                         [0, crop.side / drop.shape[0] * scale, crop.top * scale
                          + (crop.side / drop.shape[0] * scale - 1) / 2]])
    heat = cv2.warpAffine(heat, matrix, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    alpha = (heat.astype(np.float32) * ALPHA).astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([colour, alpha]))
    if not ok:
        raise RuntimeError("PNG encoding of the heat map failed")
    return png.tobytes()


def heatmap_png(predictor: Predictor, image: np.ndarray, base_probability: float,
                crop: Crop) -> bytes:
    """Occlusion map of ``image`` (the model input of the stored image, taken from it
    at ``crop``) rendered as an overlay of the stored image."""
    return overlay_png(occlusion_map(predictor, image, base_probability), crop)
