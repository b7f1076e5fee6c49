"""The training preprocessing as the models were trained on it, frozen: a verbatim copy of
``models.core.preprocess`` at commit befb396 (decoding aside, which did not change).

``models.core.preprocess`` is now a faster implementation of the same function. This
copy is the specification it must match bit for bit; ``python -m
tests.models.preprocess_reference`` writes the digests of its outputs on every slice of
the shared data's ``MANIFEST.tsv`` (``preprocess_reference.tsv``, read by
``test_preprocess_equivalence.py``); with ``--time``, it times both, slice by slice.
Never optimise this file: change it only together with retraining every model.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from models.core.preprocess import InputSpec, UnusableImageError, read_image

MIN_SIDE = 64
COLOUR_CHROMA = 40 / 255
MAX_COLOUR_SHARE = 0.15
MASK_GROWTH = 1.5
MASK_MAX_SHARE = 0.9
WORK_SIDE = 2048
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DIGESTS = Path(__file__).with_name("preprocess_reference.tsv")
SPECS = (InputSpec(128, 128, 1), InputSpec(224, 224, 3))  # the edge and paper inputs


def to_gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = img[:, :, 0]
    if img.ndim != 2:
        raise UnusableImageError(f"unsupported image shape {img.shape}")
    if np.issubdtype(img.dtype, np.integer):
        out = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    else:
        out = img.astype(np.float32)
        hi = float(np.nanmax(out)) if out.size else 0.0
        out = out / hi if hi > 1.0 else out
    return np.clip(np.nan_to_num(out), 0.0, 1.0)


def colour_share(img: np.ndarray) -> float:
    if img.ndim != 3 or img.shape[2] < 3:
        return 0.0
    step = max(1, max(img.shape[:2]) // 512)
    bgr = np.clip(np.nan_to_num(img[::step, ::step, :3].astype(np.float32)), 0, None)
    bgr /= max(float(bgr.max()), 1e-6)
    shrink = 256 / max(bgr.shape[:2])
    if shrink < 1:
        size = (max(1, round(bgr.shape[1] * shrink)), max(1, round(bgr.shape[0] * shrink)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    means = bgr.reshape(-1, 3).mean(axis=0)
    bgr = bgr * (means.mean() / np.maximum(means, 1e-6))
    return float(np.mean(bgr.max(axis=2) - bgr.min(axis=2) > COLOUR_CHROMA))


def brain_mask(gray: np.ndarray) -> np.ndarray:
    g8 = cv2.GaussianBlur((gray * 255).astype(np.uint8), (5, 5), 0)
    if int(g8.max()) - int(g8.min()) < 8:
        return np.zeros(gray.shape, bool)
    thr, _ = cv2.threshold(g8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bg = float(np.searchsorted(np.cumsum(np.bincount(g8.ravel(), minlength=256)),
                               0.01 * g8.size))

    def halfway(level: float) -> float:
        return max(bg + (level - bg) * 0.5, bg + 8)

    cut = halfway(thr)
    mask = _largest_component(g8 > cut)
    while (lower := halfway(cut)) < cut:
        grown = _largest_component(g8 > lower)
        if grown.mean() > MASK_MAX_SHARE or (
                mask.any() and grown.sum() <= MASK_GROWTH * mask.sum()):
            break
        mask, cut = grown, lower
    return mask


def _largest_component(binary: np.ndarray) -> np.ndarray:
    k = max(3, int(min(binary.shape) * 0.02) | 1)
    opened = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(binary.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def crop_to_mask(gray: np.ndarray, mask: np.ndarray, margin: float = 0.04
                 ) -> tuple[np.ndarray, np.ndarray]:
    h, w = gray.shape
    if mask.sum() < 0.02 * h * w:
        mask = np.ones_like(mask)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(y1 - y0, x1 - x0) * (1 + 2 * margin))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top, left = cy - side // 2, cx - side // 2
    out_img = np.zeros((side, side), np.float32)
    out_mask = np.zeros((side, side), bool)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, h), min(left + side, w)
    out_img[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = gray[sy0:sy1, sx0:sx1]
    out_mask[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = mask[sy0:sy1, sx0:sx1]
    return out_img, out_mask


def normalize(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    inside = gray[core] if core.sum() > 100 else (gray[mask] if mask.any() else gray.ravel())
    lo, hi = np.percentile(inside[::max(1, inside.size // 50_000)], [1.0, 99.0])
    if hi - lo < 1e-6:
        return np.zeros_like(gray)
    out = np.clip((gray - lo) / (hi - lo), 0.0, 1.0)
    return out


def refuse_colour(img: np.ndarray) -> None:
    share = colour_share(img)
    if share > MAX_COLOUR_SHARE:
        raise UnusableImageError(
            f"a colour image ({share:.0%} of its pixels are coloured), but MRI slices are "
            "greyscale: a photograph, screenshot or colour map is not a slice this model "
            "reads (with the camera, frame only the film)")


def _shrink(img: np.ndarray) -> np.ndarray:
    side = max(img.shape[:2])
    if side <= WORK_SIDE or img.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        return img
    scale = WORK_SIDE / side
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def preprocess(img: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    if img.ndim < 2 or min(img.shape[:2]) < MIN_SIDE:
        raise UnusableImageError(f"image too small: shape {img.shape}")
    img = _shrink(img)
    refuse_colour(img)
    gray = to_gray(img)
    if float(gray.max()) - float(gray.min()) < 1e-3:
        raise UnusableImageError("blank image (no contrast)")
    crop, mask = crop_to_mask(gray, brain_mask(gray))
    crop = normalize(crop, mask)
    small = cv2.resize(crop, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    out = np.clip(small, 0.0, 1.0)[:, :, None] * 255.0
    return np.repeat(out, spec.channels, axis=2).astype(np.float32)


def digest(preprocess_fn, img: np.ndarray, spec: InputSpec) -> str:
    """First 16 hex digits of the SHA-256 of the model input (its float32 bytes and
    shape), or of the refusal's message when the slice is refused."""
    try:
        out = preprocess_fn(img, spec)
        blob = repr(out.shape).encode() + np.ascontiguousarray(out, np.float32).tobytes()
    except UnusableImageError as exc:
        blob = f"refused: {exc}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def manifest_paths(data: Path = DATA) -> list[str]:
    """Paths of every slice of ``MANIFEST.tsv``, in its order."""
    with open(data / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        return [row["path"] for row in csv.DictReader(fh, delimiter="\t")]


def digests(preprocess_fn, paths: list[str], data: Path = DATA, workers: int = 2
            ) -> list[tuple[str, ...]]:
    """(path, one digest per spec of :data:`SPECS`) for each slice."""
    def one(rel: str) -> tuple[str, ...]:
        img = read_image(data / rel)
        return (rel, *(digest(preprocess_fn, img, spec) for spec in SPECS))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def timing(paths: list[str], data: Path = DATA, per_site: int = 40) -> None:
    """Print the median CPU time per slice, on one core, of this reference and of
    ``models.core.preprocess`` (each slice's best of three, the two alternating), per
    site, at the edge input (128x128x1)."""
    from models.core import preprocess as fast
    cv2.setNumThreads(1)
    sites: dict[str, list[str]] = {}
    for rel in paths:
        sites.setdefault(rel.split("/")[0], []).append(rel)
    print(f"{'site':22s} {'reference':>10s} {'fast':>8s}  (ms CPU per slice, one core)")
    for site, rels in sorted(sites.items()):
        times: dict[str, list[float]] = {"reference": [], "fast": []}
        for rel in rels[::max(1, len(rels) // per_site)][:per_site]:
            img = read_image(data / rel)
            best = {"reference": float("inf"), "fast": float("inf")}
            for _ in range(3):
                for name, fn in (("reference", preprocess), ("fast", fast.preprocess)):
                    start = time.thread_time()
                    try:
                        fn(img, SPECS[0])
                    except UnusableImageError:
                        pass
                    best[name] = min(best[name], (time.thread_time() - start) * 1000)
            for name in times:
                times[name].append(best[name])
        old, new = (statistics.median(times[k]) for k in ("reference", "fast"))
        print(f"{site:22s} {old:10.2f} {new:8.2f}  {old / new:4.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=DIGESTS)
    parser.add_argument("--time", action="store_true",
                        help="time the reference against models.core.preprocess instead")
    args = parser.parse_args(argv)
    if args.time:
        timing(manifest_paths(args.data), args.data)
        return 0
    rows = digests(preprocess, manifest_paths(args.data), args.data)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", *(f"{s.height}x{s.width}x{s.channels}" for s in SPECS)])
        writer.writerows(rows)
    print(f"{len(rows)} slices -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
