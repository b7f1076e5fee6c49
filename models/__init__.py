"""Training, evaluation and bundles; see README.

OpenCV reads its decode limit from the environment when ``cv2`` is first imported, so it
is set here, before any module of the project (``models`` or ``device``, which imports
this package first) can import ``cv2``: a 30000x30000 PNG is a few KB.
"""
import os

MAX_PIXELS = 40_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
