"""Acquisition shifts: what another scanner, protocol or export does to a slice.

The external test this model is judged on comes from other scanners; the 253-slice set
cannot show how the model fares there, but it can show how much each kind of change the
model meets in the field costs it. Each shift turns a decoded grayscale slice (float in
[0, 1], before the shared preprocessing, as an upload would arrive) into the slice
another site might have produced. Deterministic for a given seed and file name. NumPy
and OpenCV only.
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import cv2
import numpy as np

from models.core import metrics
from models.training.dataset import Sample
from models.core.preprocess import InputSpec, preprocess, read_image, to_gray


Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _gamma(g: float) -> Shift:
    return lambda x, rng: x ** g


def _low_contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey background and a compressed window (a different export or windowing)."""
    return 0.25 + 0.5 * x


def _bias_field(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative inhomogeneity, 0.6 to 1.4 across the slice (coil falloff)."""
    h, w = x.shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = 2 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) - 1  # -1 .. 1
    return np.clip(x * (1.0 + 0.4 * ramp), 0, 1).astype(np.float32)


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 1% of the longer side (a smoother reconstruction)."""
    return cv2.GaussianBlur(x, (0, 0), 0.01 * max(x.shape))


def _low_resolution(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Acquired at 64 pixels on the longer side, shown at the original size."""
    h, w = x.shape
    f = 64 / max(h, w)
    if f >= 1:
        return x
    small = cv2.resize(x, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _rician_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-image noise (Rician), sigma 5% of full scale."""
    n1, n2 = rng.normal(0, 0.05, (2, *x.shape)).astype(np.float32)
    return np.clip(np.sqrt((x + n1) ** 2 + n2 ** 2), 0, 1)


def _jpeg(quality: int) -> Shift:
    def shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", np.round(x * 255).astype(np.uint8),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    return shift


def _stretch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Non-square pixels shown square: the slice 30% wider than acquired."""
    h, w = x.shape
    return cv2.resize(x, (round(w * 1.3), h), interpolation=cv2.INTER_LINEAR)


SHIFTS: dict[str, Shift] = {
    "gamma 0.6": _gamma(0.6),
    "gamma 1.7": _gamma(1.7),
    "low contrast, grey background": _low_contrast,
    "bias field": _bias_field,
    "blur": _blur,
    "low resolution": _low_resolution,
    "rician noise": _rician_noise,
    "jpeg quality 15": _jpeg(15),
    "stretched 1.3x": _stretch,
    "rotated 90": lambda x, rng: np.ascontiguousarray(np.rot90(x)),
}


def load_shifted(samples: Sequence[Sample], spec: InputSpec, shifts: Sequence[str],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs of ``samples`` (all readable: those :func:`load_images` kept) after
    each of ``shifts`` (``SHIFTS`` keys), each file decoded once. The randomness comes
    from ``seed`` and the file's name, so a file is shifted alike in any selection."""
    inputs: dict[str, list[np.ndarray]] = {name: [] for name in shifts}
    for sample in samples:
        gray = to_gray(read_image(sample.path))
        for name in shifts:
            rng = np.random.default_rng([seed, zlib.crc32(sample.rel.encode())])
            inputs[name].append(preprocess(SHIFTS[name](gray, rng), spec))
    return {name: np.stack(images) for name, images in inputs.items()}


def shifted_image(sample: Sample, spec: InputSpec, shift: str, seed: int = 0) -> np.ndarray:
    """Model input of one ``sample`` after ``shift``; see :func:`load_shifted`."""
    return load_shifted([sample], spec, [shift], seed)[shift][0]


def shift_report(y: np.ndarray, clean: np.ndarray, shifted: dict[str, np.ndarray],
                 threshold: float | np.ndarray) -> dict[str, dict]:
    """Metrics of each shift's probabilities beside the clean ones.

    ``threshold`` is one decision threshold or one per image (each fold's own in CV).
    Returns ``{"clean": {...}, shift: {...}}`` with balanced accuracy, AUC, sensitivity,
    specificity, and for shifts ``agreement`` (share of decisions unchanged from clean)
    and ``delta_balanced_accuracy``.
    """
    threshold = np.broadcast_to(np.asarray(threshold, float), y.shape)

    def row(prob: np.ndarray) -> dict:
        sens, spec = metrics.sensitivity_specificity(y, prob, threshold)
        return {"n": int(len(y)), "balanced_accuracy": (sens + spec) / 2,
                "sensitivity": sens, "specificity": spec, "auc": metrics.roc_auc(y, prob)}

    base = row(clean)
    report = {"clean": base}
    for name, prob in shifted.items():
        r = row(prob)
        r["agreement"] = float(np.mean((prob >= threshold) == (clean >= threshold)))
        r["delta_balanced_accuracy"] = r["balanced_accuracy"] - base["balanced_accuracy"]
        report[name] = r
    return report


def format_report(report: dict[str, dict]) -> str:
    """The report as a text table, one row per shift."""
    lines = [f"{'':<30} {'bal. acc':>8} {'Δ':>6} {'sens':>6} {'spec':>6} {'AUC':>6} "
             f"{'agree':>6}"]
    for name, r in report.items():
        delta = f"{r['delta_balanced_accuracy']:+.3f}" if "agreement" in r else ""
        agree = f"{r['agreement']:.3f}" if "agreement" in r else ""
        lines.append(f"{name:<30} {r['balanced_accuracy']:>8.3f} {delta:>6} "
                     f"{r['sensitivity']:>6.3f} {r['specificity']:>6.3f} {r['auc']:>6.3f} "
                     f"{agree:>6}")
    return "\n".join(lines)
