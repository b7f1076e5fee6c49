"""What the pages show of a stored slice: small previews for the lists, and its grey
values for the viewer."""
from __future__ import annotations

import cv2
import numpy as np

from models.core import preprocess as mp

THUMBNAIL_PX = 64


def stored_gray(data: bytes) -> np.ndarray:
    """A stored image's grey values, 2-D ``uint8`` or ``uint16`` as stored (ValueError if
    it no longer decodes)."""
    image = mp.decode_image(data)
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    return image


def thumbnail_png(data: bytes, size: int = THUMBNAIL_PX) -> bytes:
    """A stored image at most ``size`` pixels on its longer side, 8-bit grey, as PNG
    (ValueError if it no longer decodes)."""
    image = stored_gray(data)
    if image.dtype != np.uint8:  # 16-bit: stretch to its own range, as the page shows
        low, high = float(image.min()), float(image.max())
        image = ((image - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
    scale = size / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                   max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("cannot encode the thumbnail")
    return png.tobytes()
