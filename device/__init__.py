"""The appliance; see README.

OpenBLAS reads its thread count when NumPy is first imported, so it is set here, before
``models`` imports NumPy: the appliance's matrix products (the last block and the head of
one slice) are small, and OpenBLAS's worker threads, spinning after each one, took the
cores that the other requests needed (measured: docs/operations.md, "Capacity").
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import models  # noqa: E402,F401  (sets OpenCV's decode limit before any cv2 import)
