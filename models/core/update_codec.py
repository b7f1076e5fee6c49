"""Wire format of a head update (device -> coordinator). No TensorFlow.

An update is the head *delta* (new head minus the base bundle's head, and the same for
the block's adapter when the bundle has one) as an ``.npz`` under the bundle's array
names, plus an encoding description that travels in the update's JSON metadata:

- ``float32``: the arrays as they are.
- ``int8``: each array quantized symmetrically with one scale per tensor
  (``q = round(x / scale)``, ``scale = max|x| / 127``); ``scales`` maps name -> scale.
  Optionally top-k sparsified first (only the largest ``topk`` fraction by magnitude
  kept; zeros cost nothing after the npz's deflate). Devices keep the part left out
  (error feedback) and add it to their next delta.
"""
from __future__ import annotations

import io
import math
from typing import Mapping

import numpy as np

from models.core.weights import HEAD_NAMES, WeightsError, load_arrays, load_head, read_npz

ENCODINGS = ("float32", "int8")


def quantize(delta: Mapping[str, np.ndarray], topk: float | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """int8 arrays and per-tensor scales for ``delta`` (top-k sparsified if asked)."""
    arrays, scales = {}, {}
    for name, x in delta.items():
        x = np.asarray(x, np.float32)
        if topk is not None and 0 < topk < 1 and x.size > 1:
            keep = max(1, int(math.ceil(topk * x.size)))
            cut = np.partition(np.abs(x).ravel(), x.size - keep)[x.size - keep]
            x = np.where(np.abs(x) >= cut, x, 0.0).astype(np.float32)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        arrays[name] = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
        scales[name] = scale
    return arrays, scales


def dequantize(arrays: Mapping[str, np.ndarray], scales: Mapping[str, float]
               ) -> dict[str, np.ndarray]:
    """float32 delta from int8 arrays and their scales."""
    return {name: arrays[name].astype(np.float32) * np.float32(scales[name])
            for name in arrays}


def encode(delta: Mapping[str, np.ndarray], encoding: str = "int8",
           topk: float | None = None) -> tuple[bytes, dict]:
    """The npz payload and the metadata fields describing it.

    Returns
    -------
    payload bytes, and ``{"encoding": ..., "scales": {...}}`` (``scales`` for int8 only)
    to merge into the update's metadata. :func:`decode` of the two is exactly what the
    coordinator will use; the device keeps ``delta - decode(...)`` as error feedback.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    buf = io.BytesIO()
    if encoding == "float32":
        np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in delta.items()})
        return buf.getvalue(), {"encoding": "float32"}
    arrays, scales = quantize(delta, topk)
    np.savez_compressed(buf, **arrays)
    meta = {"encoding": "int8", "scales": scales}
    if topk is not None:
        meta["topk"] = topk
    return buf.getvalue(), meta


def decode(payload: bytes, meta: Mapping, expected_shapes: Mapping[str, tuple],
           max_bytes: int = 64 * 1024 * 1024) -> dict[str, np.ndarray]:
    """float32 delta from a payload and its metadata; :class:`WeightsError` if malformed.

    The npz is read with ``allow_pickle=False`` and checked for names, shapes and (for
    float32) finiteness by :func:`models.core.weights.load_head`.
    """
    encoding = meta.get("encoding", "float32")
    if encoding == "float32":
        if set(expected_shapes) == set(HEAD_NAMES):
            return load_head(payload, expected_shapes, max_bytes=max_bytes)
        return load_arrays(payload, expected_shapes, max_bytes=max_bytes)
    if encoding != "int8":
        raise WeightsError(f"unknown encoding {encoding!r}")
    scales = meta.get("scales")
    if not isinstance(scales, dict) or set(scales) != set(expected_shapes):
        raise WeightsError("int8 update needs a scale for every array")
    for name, s in scales.items():
        if not _positive_number(s):
            raise WeightsError(f"{name}: scale must be a positive finite number")
    topk = meta.get("topk")
    if topk is not None and not (_positive_number(topk) and topk <= 1):
        raise WeightsError("topk must be a fraction in (0, 1]")
    if len(payload) > max_bytes:
        raise WeightsError(f"update of {len(payload)} bytes exceeds {max_bytes}")
    # An int8 head is a few bytes per value: refuse anything expanding beyond that
    # before inflating it (a 1 GiB deflate bomb is a 1 MB upload).
    limit = sum(math.prod(shape) for shape in expected_shapes.values()) + 1024 * 4
    try:
        arrays = read_npz(payload, min(max_bytes, limit))
    except WeightsError as exc:
        raise WeightsError(f"not a valid int8 update: {exc}") from None
    if set(arrays) != set(expected_shapes):
        raise WeightsError(f"arrays {sorted(arrays)} != {sorted(expected_shapes)}")
    for name, a in arrays.items():
        if a.dtype != np.int8:
            raise WeightsError(f"{name}: int8 encoding needs int8 arrays, got {a.dtype}")
        if tuple(a.shape) != tuple(expected_shapes[name]):
            raise WeightsError(f"{name}: shape {a.shape} != {tuple(expected_shapes[name])}")
        if (a == -128).any():  # symmetric: q in [-127, 127]
            raise WeightsError(f"{name}: -128 is outside the symmetric int8 range")
    return dequantize(arrays, scales)


def _positive_number(x: object) -> bool:
    """A JSON number that is finite and > 0 (not a bool; no 400-digit integer either)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x)) and x > 0
    except OverflowError:
        return False
