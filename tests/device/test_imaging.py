"""Upload validation and decoding of PNG and JPEG (device.imaging): magic bytes, what
training sees, lossless storage, and every refusal with its status."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import models.core.preprocess as mp
from device.exc import InputError, TooLargeError, UnsupportedTypeError, UnusableImageError
from device.imaging import Upload, decode_upload, sniff
from tests.device.images import LIMIT, MB, png_bytes, slice_like


DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_tumor_dataset"


@pytest.fixture(scope="module")
def y1() -> bytes:
    path = DATA / "yes" / "Y1.jpg"
    if not path.is_file():
        pytest.skip(f"shared dataset not found at {DATA}")
    return path.read_bytes()


@pytest.mark.parametrize("data, kind", [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "png"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 20, "jpeg"),
    (b"\0" * 128 + b"DICM" + b"\0" * 20, "dicom"),
    (b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 20, "dicom"),  # Part 10 without preamble
    (b"<!DOCTYPE html><html>", None),
    (b"%PDF-1.7\n", None),
    (b"PK\x03\x04" + b"\0" * 200, None),
    (b"GIF89a", None),
    (b"", None),
])
def test_sniff_uses_magic_bytes_only(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_dataset_jpeg_decodes_to_what_training_sees(y1: bytes) -> None:
    upload = decode_upload(y1, LIMIT)

    x = mp.preprocess(upload.pixels, mp.InputSpec(128, 128, 1))

    assert (upload.kind, upload.width, upload.height) == ("jpeg", 180, 218)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert 0 <= x.min() < x.max() <= 255
    training = mp.preprocess(mp.decode_image(y1), mp.InputSpec(128, 128, 1))
    np.testing.assert_array_equal(x, training)


def test_stored_png_is_lossless_and_drops_jpeg_comments(y1: bytes) -> None:
    comment = b"DOE^JANE 12345"
    with_comment = y1[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + y1[2:]
    upload = decode_upload(with_comment, LIMIT)

    stored = upload.png()

    assert comment not in stored and b"DOE^JANE" not in stored
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(stored, np.uint8), -1),
                                  upload.pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_png_round_trips_with_its_depth(dtype: type) -> None:
    img = slice_like(80, 100, dtype)
    if dtype is np.uint16:
        img = (img.astype(np.float64) / 65535 * 60000).astype(np.uint16)
        assert img.max() > 50000

    upload = decode_upload(png_bytes(img), LIMIT)

    assert (upload.kind, upload.width, upload.height) == ("png", 100, 80)
    assert upload.pixels.dtype == dtype and upload.pixels.ndim == 2
    np.testing.assert_array_equal(upload.pixels, img)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(upload.png(), np.uint8), -1), img)
    assert mp.preprocess(upload.pixels, mp.InputSpec(32, 32, 1)).max() > 0


def test_rgba_png_becomes_bgr_without_alpha() -> None:
    bgr = cv2.cvtColor(slice_like(), cv2.COLOR_GRAY2BGR)
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])

    upload = decode_upload(png_bytes(bgra), LIMIT)

    assert upload.pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(upload.pixels, bgr)


def test_upload_pixels_are_read_only() -> None:
    upload = decode_upload(png_bytes(slice_like()), LIMIT)

    with pytest.raises(ValueError):
        upload.pixels[0, 0] = 1
    assert isinstance(upload, Upload)


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).bytes(4096),          # random bytes named .jpg
    b"<!DOCTYPE html><html><body>hi</body></html>",
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\0" * 100,  # a ZIP renamed .jpg
])
def test_unknown_types_are_415_listing_what_is_accepted(data: bytes) -> None:
    with pytest.raises(UnsupportedTypeError) as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 415
    assert all(name in str(err.value) for name in ("PNG", "JPEG", "DICOM"))


def test_empty_file_is_400() -> None:
    with pytest.raises(InputError, match="empty file") as err:
        decode_upload(b"", LIMIT)

    assert err.value.status == 400


def test_too_large_is_413_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    monkeypatch.setattr(mp, "decode_image", lambda data: decoded.append(len(data)))
    data = b"\x89PNG\r\n\x1a\n" + bytes(50 * MB)

    with pytest.raises(TooLargeError) as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 413 and decoded == []


@pytest.mark.parametrize("cut", [0.6, 0.99])
def test_truncated_jpeg_is_400(y1: bytes, cut: float) -> None:
    with pytest.raises(InputError, match="corrupt or truncated") as err:
        decode_upload(y1[:int(len(y1) * cut)], LIMIT)

    assert err.value.status == 400


def test_truncated_jpeg_refused_even_if_decoder_returns_partial_image(
        y1: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenCV 4 builds return the decoded top part of a truncated JPEG with a warning.
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.full((218, 180, 3), 9, np.uint8))

    with pytest.raises(InputError) as err:
        decode_upload(y1[:int(len(y1) * 0.6)], LIMIT)

    assert err.value.status == 400


def test_jpeg_with_trailing_zero_padding_is_accepted(y1: bytes) -> None:
    upload = decode_upload(y1 + bytes(512), LIMIT)

    assert (upload.width, upload.height) == (180, 218)


@pytest.mark.parametrize("trailer", ["text", "second jpeg"])
def test_jpeg_with_data_after_the_end_marker_is_accepted(y1: bytes, trailer: str) -> None:
    # Cameras append a preview JPEG (MPF); editors and phones append their own records.
    extra = (b"EDITOR-TRAILER\x01\x02" * 40 if trailer == "text"
             else cv2.imencode(".jpg", np.full((16, 16), 90, np.uint8))[1].tobytes())

    upload = decode_upload(y1 + extra, LIMIT)

    np.testing.assert_array_equal(upload.pixels, decode_upload(y1, LIMIT).pixels)


def test_truncated_jpeg_with_a_complete_exif_thumbnail_is_400(y1: bytes) -> None:
    # The thumbnail's own scan and end marker come before the main image's scan.
    thumb = cv2.imencode(".jpg", np.full((16, 16), 90, np.uint8))[1].tobytes()
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = y1[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + y1[2:]
    assert decode_upload(with_thumb, LIMIT).width == 180

    with pytest.raises(InputError, match="corrupt or truncated") as err:
        decode_upload(with_thumb[:len(with_thumb) * 9 // 10], LIMIT)

    assert err.value.status == 400


def test_truncated_png_is_400() -> None:
    data = png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8))

    with pytest.raises(InputError, match="corrupt or truncated") as err:
        decode_upload(data[:len(data) // 2], LIMIT)

    assert err.value.status == 400


def test_decompression_bomb_is_422_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(png_bytes(np.zeros((10, 10), np.uint8)))
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    calls: list[int] = []
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: calls.append(1))

    with pytest.raises(UnusableImageError, match="too large") as err:
        decode_upload(bytes(data), LIMIT)

    assert err.value.status == 422 and calls == []


@pytest.mark.parametrize("side", [1, mp.MIN_SIDE - 1])
def test_too_small_is_422(side: int) -> None:
    with pytest.raises(UnusableImageError, match="too small") as err:
        decode_upload(png_bytes(np.full((side, side), 200, np.uint8)), LIMIT)

    assert err.value.status == 422
