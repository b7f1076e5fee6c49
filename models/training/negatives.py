"""Images that are not brain MRI slices, to teach and test the "not a slice" refusal.

Nothing is downloaded: every image is drawn here (documents, charts, textures, gradients,
shapes and phantoms, noise, "dead leaves" scenes with the statistics of photographs) or
read from what installed packages ship (matplotlib's sample photographs and maps).
scikit-image's sample images and pydicom's test files are deliberately not used: they
are kept for an independent check of the refusal.

Each generator returns a greyscale uint8 image of a random size; :func:`generate` draws
``n`` of each category.
"""
from __future__ import annotations

import gzip
import os
from typing import Callable

import cv2
import numpy as np

Rng = np.random.Generator
WORDS = ("patient report scan result normal finding left right contrast series study "
         "image slice brain tumour invoice total page date name figure table chart "
         "summary method data value mean sample control group analysis").split()
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def _size(rng: Rng, low: int = 160, high: int = 900) -> tuple[int, int]:
    h = int(rng.integers(low, high))
    return h, int(h * rng.uniform(0.6, 1.6))


def _fractal(rng: Rng, shape: tuple[int, int], octaves: int = 5) -> np.ndarray:
    """Smooth random field in [0, 1]: octaves of resized noise, coarse ones strongest."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for k in range(octaves):
        side = 2 ** (k + 2)
        layer = rng.random((side, side)).astype(np.float32)
        out += cv2.resize(layer, (w, h), interpolation=cv2.INTER_CUBIC) / (k + 1)
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def document(rng: Rng) -> np.ndarray:
    """A page of text lines, sometimes with ruled table lines; sometimes inverted."""
    h, w = _size(rng, 300)
    img = np.full((h, w), rng.integers(200, 256), np.uint8)
    y, scale = int(rng.integers(20, 60)), rng.uniform(0.4, 1.4)
    font, ink = FONTS[rng.integers(len(FONTS))], int(rng.integers(0, 80))
    while y < h - 10:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 9))))
        cv2.putText(img, line, (int(rng.integers(5, 40)), y), font, scale, ink,
                    int(rng.integers(1, 3)), cv2.LINE_AA)
        if rng.random() < 0.2:
            cv2.line(img, (0, y + 6), (w, y + 6), ink, 1)
        y += int(30 * scale + rng.integers(8, 30))
    return 255 - img if rng.random() < 0.25 else img


def chart(rng: Rng) -> np.ndarray:
    """Axes with lines, bars or scatter points, on a light or dark background."""
    h, w = _size(rng, 200)
    dark = rng.random() < 0.3
    img = np.full((h, w), 20 if dark else 245, np.uint8)
    ink = 230 if dark else 30
    x0, y0 = int(w * 0.1), int(h * 0.9)
    cv2.line(img, (x0, y0), (w - 10, y0), ink, 2)
    cv2.line(img, (x0, y0), (x0, 10), ink, 2)
    xs = np.linspace(x0 + 5, w - 15, int(rng.integers(8, 60)))
    for _ in range(int(rng.integers(1, 4))):
        ys = y0 - (np.cumsum(rng.normal(0, 1, len(xs))) * rng.uniform(5, 20)
                   + rng.uniform(0.2, 0.7) * h)
        ys = np.clip(ys, 10, y0 - 2).astype(np.int32)
        kind, level = rng.integers(3), int(rng.integers(60, 200))
        for i, (x, yv) in enumerate(zip(xs.astype(np.int32), ys)):
            if kind == 0 and i:
                cv2.line(img, (int(xs[i - 1]), int(ys[i - 1])), (int(x), int(yv)), level, 2)
            elif kind == 1:
                cv2.rectangle(img, (int(x) - 3, int(yv)), (int(x) + 3, y0), level, -1)
            elif kind == 2:
                cv2.circle(img, (int(x), int(yv)), 3, level, -1)
    return img


def texture(rng: Rng) -> np.ndarray:
    """Fractal noise, gratings, checkerboards, bricks or dots."""
    h, w = _size(rng)
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        img = _fractal(rng, (h, w)) * 255
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 60)
        img = 127.5 + 127.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi
                                     / period)
    elif kind == 2:
        sq = int(rng.integers(4, 80))
        img = ((xx // sq + yy // sq) % 2) * 255.0
    elif kind == 3:
        bh, bw = int(rng.integers(8, 40)), int(rng.integers(20, 90))
        row = (yy // bh).astype(int)
        img = np.where(((xx + (row % 2) * bw / 2) % bw < 3) | (yy % bh < 3), 60.0, 200.0)
        img += _fractal(rng, (h, w)) * 50
    else:
        img = np.full((h, w), float(rng.integers(0, 256)), np.float32)
        for _ in range(int(rng.integers(20, 300))):
            cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))),
                       int(rng.integers(2, 25)), float(rng.integers(0, 256)), -1)
    return _to_u8(img)


def gradient(rng: Rng) -> np.ndarray:
    """Linear, radial or angular ramps, with a little noise."""
    h, w = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    kind = rng.integers(3)
    if kind == 0:
        a = rng.uniform(0, 2 * np.pi)
        img = xx * np.cos(a) + yy * np.sin(a)
    elif kind == 1:
        img = np.hypot(xx - cx, yy - cy)
    else:
        img = np.arctan2(yy - cy, xx - cx)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-6) * 255
    return _to_u8(img + rng.normal(0, rng.uniform(0, 8), img.shape))


def shapes(rng: Rng) -> np.ndarray:
    """Random polygons, ellipses and rectangles, flat or shaded; or a phantom: nested
    ellipses of several intensities (a head phantom is not a slice either)."""
    h, w = _size(rng)
    img = np.full((h, w), float(rng.choice([0, rng.integers(0, 256)])), np.float32)
    phantom = rng.random() < 0.4
    for i in range(int(rng.integers(2, 12))):
        level = float(rng.integers(0, 256))
        centre = (int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.7) * h))
        if phantom:
            axes = (int(w * rng.uniform(0.05, 0.4) / (1 + 0.3 * i)),
                    int(h * rng.uniform(0.05, 0.45) / (1 + 0.3 * i)))
            cv2.ellipse(img, centre, axes, rng.uniform(0, 180), 0, 360, level, -1)
        elif rng.random() < 0.5:
            pts = rng.integers(0, [w, h], (int(rng.integers(3, 8)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], level)
        else:
            p0 = rng.integers(0, [w, h])
            cv2.rectangle(img, tuple(map(int, p0)),
                          tuple(map(int, p0 + rng.integers(10, [w // 2, h // 2]))), level, -1)
    if rng.random() < 0.5:
        img *= 0.6 + 0.4 * _fractal(rng, (h, w))
    return _to_u8(img)


def noise(rng: Rng) -> np.ndarray:
    """Uniform, Gaussian, salt-and-pepper or blurred noise."""
    h, w = _size(rng)
    kind = rng.integers(4)
    if kind == 0:
        img = rng.uniform(0, 255, (h, w))
    elif kind == 1:
        img = rng.normal(128, rng.uniform(10, 80), (h, w))
    elif kind == 2:
        img = np.where(rng.random((h, w)) < 0.5, 0.0, 255.0)
    else:
        img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0),
                               rng.uniform(1, 6))
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-6) * 255
    return _to_u8(img)


def dead_leaves(rng: Rng) -> np.ndarray:
    """Occluding discs of power-law sizes, shaded: the statistics of photographs."""
    h, w = _size(rng)
    img = np.full((h, w), float(rng.integers(0, 256)), np.float32)
    for _ in range(int(rng.integers(60, 400))):
        r = int(min(h, w) * 0.3 * rng.random() ** 3) + 2
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), r,
                   float(rng.integers(0, 256)), -1)
    shade = 0.5 + 0.5 * _fractal(rng, (h, w), 3)
    return _to_u8(cv2.GaussianBlur(img * shade, (0, 0), rng.uniform(0.5, 2)))


def _sample_data() -> list[np.ndarray]:
    """matplotlib's sample photographs and maps, as greyscale uint8 images."""
    import matplotlib
    root = os.path.join(matplotlib.get_data_path(), "sample_data")
    out = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        img = cv2.imread(os.path.join(root, name), cv2.IMREAD_GRAYSCALE)
        if img is not None:
            out.append(img)
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        with np.load(os.path.join(root, name)) as npz:
            a = npz[key].astype(np.float32)
        out.append(_to_u8((a - a.min()) / max(float(np.ptp(a)), 1e-6) * 255))
    return out


def photo(rng: Rng, sources: list[np.ndarray] | None = None) -> np.ndarray:
    """A random crop of one of matplotlib's sample pictures, flipped and rescaled."""
    sources = sources or _sample_data()
    img = sources[rng.integers(len(sources))]
    h, w = img.shape
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = rng.uniform(0.7, 2.0)
    return cv2.resize(np.ascontiguousarray(crop), (max(64, int(cw * scale)),
                                                   max(64, int(ch * scale))))


GENERATORS: dict[str, Callable[[Rng], np.ndarray]] = {
    "document": document, "chart": chart, "texture": texture, "gradient": gradient,
    "shapes": shapes, "noise": noise, "dead_leaves": dead_leaves, "photo": photo}


def generate(n: int, seed: int = 0, categories: tuple[str, ...] = tuple(GENERATORS)
             ) -> list[tuple[str, np.ndarray]]:
    """``n`` images of each category, as (category, greyscale uint8 image)."""
    rng = np.random.default_rng(seed)
    sources = _sample_data()
    out = []
    for name in categories:
        make = GENERATORS[name]
        for _ in range(n):
            out.append((name, make(rng, sources) if name == "photo" else make(rng)))
    return out


def sagittal_head() -> np.ndarray:
    """matplotlib's sample sagittal head MRI (256x256, 16 bit): a slice, not a negative."""
    import matplotlib
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "s1045.ima.gz")
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), "<u2").reshape(256, 256).copy()
