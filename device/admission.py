"""Admission by memory: uploads are analysed at once only while their working memory fits.

Decoding and preprocessing a slice needs a few megabytes; a 12-megapixel camera frame
needs about 90 MB (decoded pixels, then float copies at up to 2048 px). Eight of those
at once would take the serving process from under 200 MB to about 800 MB, more than a
Pi can spare. Each analysis therefore holds its estimated working memory from a budget
for as long as it decodes and preprocesses: small slices run side by side, large ones
take turns. One analysis always runs, however large (its size is limited elsewhere).

What is freed must also leave the process: :func:`bound_allocator` stops glibc from
keeping large freed buffers (by default it raises its mmap threshold after each large
free, up to 32 MB, and keeps one heap per thread), which had eight camera frames leave
the process at 630 MB instead of 250.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import threading
from typing import Iterator

from device.imaging import limits
from models.core import preprocess as mp
from models.core.headers import image_size

logger = logging.getLogger(__name__)

BUDGET_BYTES = 96 << 20
# Bytes per pixel of the working image (at most WORK_SIDE on a side: float32 grey, masks,
# float64 crop), beside the decoded pixels (device.imaging.limits). Measured with
# tracemalloc: 93 MB at the peak for a 4056x3040 JPEG (estimated 125), 4.9 MB for a
# 512x512 slice (estimated 8).
WORKING_BYTES_PER_PIXEL = 28


# glibc's mallopt() parameters, and the values the appliance sets: buffers of 4 MB and
# more (large images only) are mapped and unmapped; up to 32 MB at the top of a heap is
# kept for reuse (a slice's arrays: no page faults on every upload); two heaps.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
ALLOCATOR = ((_M_MMAP_THRESHOLD, 4 << 20), (_M_TRIM_THRESHOLD, 32 << 20), (_M_ARENA_MAX, 2))


def bound_allocator() -> bool:
    """Apply :data:`ALLOCATOR` to this process's C allocator; False where it is not
    glibc's (the defaults then stay)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = all(mallopt(param, value) == 1 for param, value in ALLOCATOR)
    logger.debug("allocator bounds %s", "set" if done else "not set")
    return done


def analysis_bytes(data: bytes) -> int:
    """Estimated peak memory of decoding and preprocessing ``data``: its decoded pixels
    (pixels x channels x bytes per sample, from the PNG or JPEG header) and the working
    image; for DICOM and anything else, pixels as many as the file's bytes, in float64."""
    size = image_size(data)
    decoded = limits.png_decoded_bytes(data) if data[:4] == b"\x89PNG" else \
        limits.jpeg_decoded_bytes(data) if data[:2] == b"\xff\xd8" else None
    if size is None or decoded is None:
        pixels = len(data)
        decoded = pixels * limits.DICOM_BYTES_PER_SAMPLE
        side = int(pixels ** 0.5)
    else:
        pixels, side = size[0] * size[1], max(size)
    work = pixels * min(1.0, (mp.WORK_SIDE / max(side, 1)) ** 2)
    return int(decoded + work * WORKING_BYTES_PER_PIXEL)


class MemoryBudget:
    """A number of bytes shared by concurrent analyses.

    Parameters
    ----------
    limit : int
        Bytes the analyses in progress may hold together.
    """

    def __init__(self, limit: int = BUDGET_BYTES) -> None:
        self.limit = limit
        self._used = 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Wait until ``nbytes`` fit (or nothing else is held), and hold them."""
        with self._free:
            while self._used and self._used + nbytes > self.limit:
                self._free.wait()
            self._used += nbytes
        try:
            yield
        finally:
            with self._free:
                self._used -= nbytes
                self._free.notify_all()

    @property
    def used(self) -> int:
        """Bytes held now."""
        with self._free:
            return self._used
