"""The cameras: a file as a camera, and the Pi camera on a stand-in for picamera2
(which exists only on a Raspberry Pi)."""
from __future__ import annotations

import importlib.util
import sys
import types

import cv2
import numpy as np
import pytest

from device.exc import NotFoundError
from device.hw import CameraUnavailableError, FileCamera, Picamera2Camera, detect_camera
from device.hw.camera import to_bgr


def test_file_camera_returns_the_files_bytes(tmp_path):
    ok, png = cv2.imencode(".png", np.full((8, 8), 128, np.uint8))
    path = tmp_path / "slice.png"
    path.write_bytes(png.tobytes())
    camera = FileCamera(path)

    captured = camera.capture()
    camera.close()

    assert captured == path.read_bytes()
    with pytest.raises(CameraUnavailableError):
        camera.capture()


def test_file_camera_needs_an_existing_file(tmp_path):
    with pytest.raises(NotFoundError):
        FileCamera(tmp_path / "missing.png")


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None,
                    reason="picamera2 is installed here")
def test_detect_camera_is_none_without_picamera2():
    assert detect_camera() is None
    assert detect_camera(enabled=True) is None
    with pytest.raises(CameraUnavailableError, match="picamera2"):
        Picamera2Camera()


class FakePicamera2:
    """The part of picamera2's API the camera uses; fills frames with pure red."""

    def __init__(self) -> None:
        self.config = None
        self.closed = False

    def create_still_configuration(self, main):
        return {"main": dict(main)}

    def configure(self, config) -> None:
        self.config = config

    def start(self) -> None:
        pass

    def capture_array(self, name="main"):
        red = {"RGB888": [0, 0, 255], "BGR888": [255, 0, 0]}[self.config["main"]["format"]]
        return np.tile(np.array(red, np.uint8), (6, 8, 1))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module


def test_detect_camera_disabled_does_not_open_a_camera(fake_picamera2):
    assert detect_camera(enabled=False) is None


def test_picamera2_camera_returns_a_correctly_coloured_jpeg(fake_picamera2):
    camera = detect_camera(warmup_seconds=0, size=(8, 6))

    jpeg = camera.capture()
    camera.close()

    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert decoded.shape == (6, 8, 3)
    assert decoded[..., 2].min() > 200 and decoded[..., :2].max() < 60  # red, in BGR
    with pytest.raises(CameraUnavailableError):
        camera.capture()


@pytest.mark.parametrize("fmt, pixel", [
    ("RGB888", [0, 0, 255]), ("BGR888", [255, 0, 0]),
    ("XRGB8888", [0, 0, 255, 255]), ("XBGR8888", [255, 0, 0, 255]),
])
def test_to_bgr_reads_picamera2_byte_orders(fmt, pixel):
    array = np.tile(np.array(pixel, np.uint8), (2, 3, 1))

    bgr = to_bgr(array, fmt)

    assert bgr.shape == (2, 3, 3)
    assert bgr[0, 0].tolist() == [0, 0, 255]


def test_to_bgr_rejects_yuv():
    with pytest.raises(CameraUnavailableError):
        to_bgr(np.zeros((6, 4), np.uint8), "YUV420")
