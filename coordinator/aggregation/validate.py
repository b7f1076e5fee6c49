"""Checks on one device's head delta before it may enter an aggregate.

Everything a device sends is untrusted: a single NaN, a wrong shape or a huge norm
would poison the published model for every clinic, so each is refused with a reason.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

REASONS = ("keys", "shape", "dtype", "nonfinite", "norm", "examples")


class UpdateRejected(ValueError):
    """A head update was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _names(names: set) -> str:
    """Sorted, shortened names for a message: keys are attacker-controlled text."""
    shown = sorted(repr(n)[:40] for n in names)
    more = [f"... {len(shown) - 8} more"] if len(shown) > 8 else []
    return "[" + ", ".join(shown[:8] + more) + "]"


def validate_update(arrays: Mapping[str, np.ndarray],
                    expected_shapes: Mapping[str, tuple[int, ...]], *,
                    max_norm: float, examples: int, max_examples: int = 100_000) -> float:
    """Check a head delta and its example count; return the delta's global L2 norm.

    .. math:: \\lVert\\Delta\\rVert_2 = \\sqrt{\\sum_{name} \\sum_j \\Delta_{name,j}^2}

    Parameters
    ----------
    arrays : mapping of str to ndarray
        The delta (new head minus base head).
    expected_shapes : mapping of str to tuple
        Exactly the names and shapes the current model's head has.
    max_norm : float
        Largest accepted L2 norm (a sanity bound, not the clipping norm).
    examples : int
        Example count the device claims; it becomes the FedAvg weight.
    max_examples : int
        Largest accepted example count, so one device cannot claim the whole weight.

    Raises
    ------
    UpdateRejected
        ``reason`` is "examples", "keys", "dtype", "shape", "nonfinite" or "norm"
        (checked in that order).
    ValueError
        If ``max_norm`` is not finite and positive (a coordinator bug, not the device's).
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm}")
    if isinstance(examples, (bool, np.bool_)) or not isinstance(examples, (int, np.integer)):
        raise UpdateRejected("examples", f"example count must be an integer, got "
                                         f"{type(examples).__name__}")
    if not 1 <= examples <= max_examples:
        raise UpdateRejected("examples", f"example count {examples} outside "
                                         f"[1, {max_examples}]")
    names, want = set(arrays), set(expected_shapes)
    if names != want:
        raise UpdateRejected("keys", f"update arrays must be {_names(want)}; missing "
                                     f"{_names(want - names)}, extra {_names(names - want)}")
    total = 0.0
    for name, shape in expected_shapes.items():
        arr = arrays[name]
        dtype = getattr(arr, "dtype", None)
        if not isinstance(arr, np.ndarray) or dtype.kind != "f":
            raise UpdateRejected("dtype", f"{name}: dtype {dtype} refused, expected a "
                                          f"float array")
        if arr.shape != tuple(shape):
            raise UpdateRejected("shape", f"{name}: shape {arr.shape}, expected "
                                          f"{tuple(shape)}")
        if not np.isfinite(arr).all():
            raise UpdateRejected("nonfinite", f"{name}: contains NaN or Inf")
        flat = arr.astype(np.float64, copy=False).ravel()
        with np.errstate(over="ignore"):  # an overflow becomes inf: refused as "norm"
            total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    if not norm <= max_norm:
        raise UpdateRejected("norm", f"update L2 norm {norm:.4g} exceeds {max_norm:.4g}")
    return norm
