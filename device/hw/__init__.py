"""Hardware behind a seam: the status LED/button (gpiozero) and the camera (picamera2).

Nothing here touches hardware or imports a GPIO or camera library at import time; the
composition root builds a :class:`StatusIndicator` (or :class:`NullIndicator`) and calls
:func:`detect_camera`.
"""
from device.hw.camera import (Camera, CameraUnavailableError, FileCamera, Picamera2Camera,
                              detect_camera)
from device.hw.status import (PATTERNS, Indicator, NullIndicator, State,
                              StatusIndicator)

__all__ = [
    "PATTERNS", "Camera", "CameraUnavailableError", "FileCamera", "Indicator",
    "NullIndicator", "Picamera2Camera", "State", "StatusIndicator", "detect_camera",
]
