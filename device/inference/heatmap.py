"""Occlusion-sensitivity heat map, computed with the same LiteRT model.

A black square slides over the model input; where hiding a region lowers
the tumour probability most, that region drove the prediction. Coarse but honest: it
shows what this model looked at, with no gradients needed on the device.
"""
from __future__ import annotations

import cv2
import numpy as np

from device.inference.predictor import Predictor

PATCH_FRACTION = 0.25   # occluder side as a fraction of the input side
STRIDE_FRACTION = 0.125  # step between occluder positions (7 x 7 positions)
DISPLAY_SIDE = 384
# Colours are on one absolute scale for every case: full red is a drop in tumour
# probability of this much or more. Scaled to each map's own maximum, a 3-point drop on a
# "no tumour" slice looked as red as a 20-point drop on a tumour.
FULL_SCALE_DROP = 0.2


def occlusion_map(predictor: Predictor, image: np.ndarray, base_probability: float
                  ) -> np.ndarray:
    """Drop in probability per input pixel (H, W) float32, averaged over occluders."""
    h, w = image.shape[:2]
    patch, stride = int(h * PATCH_FRACTION), int(h * STRIDE_FRACTION)
    positions = [(y, x) for y in range(0, h - patch + 1, stride)
                 for x in range(0, w - patch + 1, stride)]
    batch = np.repeat(image[None], len(positions), axis=0)
    for i, (y, x) in enumerate(positions):
        batch[i, y:y + patch, x:x + patch] = 0.0
    probs = predictor.occlusion_probabilities(batch)
    drop = np.zeros((h, w), np.float32)
    hits = np.zeros((h, w), np.float32)
    for (y, x), p in zip(positions, probs):
        drop[y:y + patch, x:x + patch] += base_probability - p
        hits[y:y + patch, x:x + patch] += 1
    return drop / np.maximum(hits, 1)


def overlay_png(image: np.ndarray, drop: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG of the model input with positive drops in JET colours on top, on the absolute
    scale of :data:`FULL_SCALE_DROP` (a larger drop saturates)."""
    gray = cv2.resize(image[:, :, 0], (DISPLAY_SIDE, DISPLAY_SIDE)).clip(0, 255)
    base = cv2.cvtColor(gray.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    heat = (np.clip(drop / FULL_SCALE_DROP, 0, 1) * 255).astype(np.uint8)
    heat = cv2.resize(heat, (DISPLAY_SIDE, DISPLAY_SIDE), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    weight = (heat.astype(np.float32) / 255 * alpha)[:, :, None]
    out = (base * (1 - weight) + colour * weight).astype(np.uint8)
    ok, png = cv2.imencode(".png", out)
    if not ok:
        raise RuntimeError("PNG encoding of the heat map failed")
    return png.tobytes()


def heatmap_png(predictor: Predictor, image: np.ndarray, base_probability: float) -> bytes:
    """Occlusion map of ``image`` rendered as an overlay PNG."""
    return overlay_png(image, occlusion_map(predictor, image, base_probability))
