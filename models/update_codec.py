"""Wire format of a head update (device -> coordinator). No TensorFlow.

An update is the head *delta* (new head minus the base bundle's head) as an ``.npz``
under the bundle head's array names, plus an encoding description that travels in the
update's JSON metadata:

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
import zipfile
from typing import Mapping

import numpy as np

from models.weights import WeightsError, load_head

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
    float32) finiteness by :func:`models.weights.load_head`.
    """
    encoding = meta.get("encoding", "float32")
    if encoding == "float32":
        return load_head(payload, expected_shapes, max_bytes=max_bytes)
    if encoding != "int8":
        raise WeightsError(f"unknown encoding {encoding!r}")
    scales = meta.get("scales")
    if not isinstance(scales, dict) or set(scales) != set(expected_shapes):
        raise WeightsError("int8 update needs a scale for every head array")
    for name, s in scales.items():
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise WeightsError(f"{name}: scale must be a positive finite number")
    if len(payload) > max_bytes:
        raise WeightsError(f"update of {len(payload)} bytes exceeds {max_bytes}")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            if set(npz.files) != set(expected_shapes):
                raise WeightsError(f"arrays {sorted(npz.files)} != {sorted(expected_shapes)}")
            for name, shape in expected_shapes.items():  # refuse a bomb before inflating
                if npz.zip.getinfo(f"{name}.npy").file_size > math.prod(shape) + 1024:
                    raise WeightsError(f"{name}: larger than an int8 {tuple(shape)} array")
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"not a valid npz update: {exc}") from None
    for name, a in arrays.items():
        if a.dtype != np.int8:
            raise WeightsError(f"{name}: int8 encoding needs int8 arrays, got {a.dtype}")
        if tuple(a.shape) != tuple(expected_shapes[name]):
            raise WeightsError(f"{name}: shape {a.shape} != {tuple(expected_shapes[name])}")
    return dequantize(arrays, scales)
