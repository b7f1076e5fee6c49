"""Cameras: a still from the Pi camera (or a file) as image bytes for the upload pipeline.

``picamera2`` exists only on a Raspberry Pi (apt ``python3-picamera2``), so it is imported
inside :class:`Picamera2Camera`, never at import time; :func:`detect_camera` returns None
where it is missing or disabled, and the web UI then hides the capture action.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from device.exc import CameraUnavailableError, NotFoundError

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


class Camera(Protocol):
    """A source of still images, encoded as PNG or JPEG bytes."""

    def capture(self) -> bytes:
        """Take one still and return it encoded (PNG or JPEG)."""
        ...

    def close(self) -> None:
        """Release the device; capture() afterwards raises CameraUnavailableError."""
        ...


def to_bgr(array: np.ndarray, pixel_format: str) -> np.ndarray:
    """Reorder a picamera2 array into OpenCV's BGR channel order.

    picamera2 names formats after libcamera/DRM, i.e. by the packed little-endian word,
    so the byte order in the array is the reverse of the name: ``RGB888`` arrays hold
    B, G, R per pixel (already OpenCV's BGR), ``BGR888`` hold R, G, B, ``XRGB8888`` hold
    B, G, R, 255 and ``XBGR8888`` hold R, G, B, 255.

    Parameters
    ----------
    array : numpy.ndarray
        ``(height, width, 3 or 4)`` uint8 array from ``capture_array``.
    pixel_format : str
        The stream's format in the camera configuration.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` uint8 array in BGR order.

    Raises
    ------
    CameraUnavailableError
        If the format is not one of the four RGB formats above.
    """
    import cv2

    conversions = {"RGB888": None, "BGR888": cv2.COLOR_RGB2BGR,
                   "XRGB8888": cv2.COLOR_BGRA2BGR, "XBGR8888": cv2.COLOR_RGBA2BGR}
    if pixel_format not in conversions:
        raise CameraUnavailableError(f"unsupported camera pixel format {pixel_format!r}")
    code = conversions[pixel_format]
    return array.copy() if code is None else cv2.cvtColor(array, code)


class Picamera2Camera:
    """The Raspberry Pi camera through picamera2, kept running for quick stills.

    Parameters
    ----------
    size : tuple of int
        Still size ``(width, height)``; the ISP scales the sensor image to it.
    jpeg_quality : int
        OpenCV JPEG quality, 0-100.
    warmup_seconds : float
        Time to let exposure and white balance settle after starting.

    Raises
    ------
    CameraUnavailableError
        If picamera2 is not installed or no camera can be opened.
    """

    #: Asked for explicitly: its arrays are in BGR byte order, OpenCV's native one.
    PIXEL_FORMAT = "RGB888"

    def __init__(self, size: tuple[int, int] = (1920, 1440), *, jpeg_quality: int = 92,
                 warmup_seconds: float = 1.0) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraUnavailableError(
                "picamera2 is not installed (on a Raspberry Pi: apt install "
                "python3-picamera2)") from exc
        self._lock = threading.Lock()
        self._quality = int(jpeg_quality)
        self._camera: Any = None
        try:
            self._camera = Picamera2()
            config = self._camera.create_still_configuration(
                main={"size": tuple(size), "format": self.PIXEL_FORMAT})
            self._camera.configure(config)
            self._format = str(config["main"]["format"])
            self._camera.start()
        except Exception as exc:
            self.close()
            raise CameraUnavailableError(f"cannot open the camera: {exc}") from exc
        time.sleep(warmup_seconds)
        logger.info("camera ready: %sx%s %s", size[0], size[1], self._format)

    def capture(self) -> bytes:
        """Take one still and return it as JPEG bytes.

        Raises
        ------
        CameraUnavailableError
            If the camera is closed or the capture fails.
        """
        import cv2

        with self._lock:
            if self._camera is None:
                raise CameraUnavailableError("the camera is closed")
            try:
                array = self._camera.capture_array("main")
            except Exception as exc:
                raise CameraUnavailableError(f"camera capture failed: {exc}") from exc
        ok, encoded = cv2.imencode(".jpg", to_bgr(array, self._format),
                                   [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise CameraUnavailableError("could not encode the captured image")
        return encoded.tobytes()

    def close(self) -> None:
        """Stop and release the camera (idempotent)."""
        with self._lock:
            camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.close()  # stops it too; picamera2 releases the device only here
            except Exception:
                logger.exception("closing the camera failed")


class FileCamera:
    """A camera double for tests and demos: every capture returns one file's bytes.

    The file is re-read on each capture, so a demo can swap the image under it.

    Parameters
    ----------
    path : str or Path
        A PNG or JPEG (or DICOM) file the upload pipeline accepts.

    Raises
    ------
    NotFoundError
        If ``path`` is not a file.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        if not self._path.is_file():
            raise NotFoundError(f"camera image file not found: {self._path}")
        self._closed = False

    def capture(self) -> bytes:
        """Return the file's bytes.

        Raises
        ------
        CameraUnavailableError
            If the camera is closed or the file cannot be read.
        """
        if self._closed:
            raise CameraUnavailableError("the camera is closed")
        try:
            return self._path.read_bytes()
        except OSError as exc:
            raise CameraUnavailableError(f"cannot read the camera image: {exc}") from exc

    def close(self) -> None:
        """Mark the camera closed."""
        self._closed = True


def detect_camera(enabled: bool | None = None, **options: Any) -> Camera | None:
    """Open the Pi camera if it is wanted and present.

    Parameters
    ----------
    enabled : bool or None
        False: no camera. None (auto) or True: try picamera2; True only makes a missing
        camera a warning instead of an info message.
    **options
        Passed to :class:`Picamera2Camera` (``size``, ``jpeg_quality``, ...).

    Returns
    -------
    Camera or None
        An open camera, or None (disabled, picamera2 missing, or no camera attached).
    """
    if enabled is False:
        return None
    try:
        return Picamera2Camera(**options)
    except CameraUnavailableError as exc:
        log = logger.warning if enabled else logger.info
        log("no camera: %s", exc)
        return None
