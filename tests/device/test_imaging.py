"""Upload validation and decoding: device.imaging (PNG, JPEG, DICOM -> pixels)."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         JPEGLSLossless, MRImageStorage, generate_uid)

import models.core.preprocess as mp
from device.exc import InputError, TooLargeError, UnsupportedTypeError, UnusableImageError
from device.imaging import Upload, decode_dicom, decode_upload, sniff

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_tumor_dataset"
MB = 2**20
LIMIT = 20 * MB
PATIENT = ("DOE^JANE", "12345", "19700101")


@pytest.fixture(scope="module")
def y1() -> bytes:
    path = DATA / "yes" / "Y1.jpg"
    if not path.is_file():
        pytest.skip(f"shared dataset not found at {DATA}")
    return path.read_bytes()


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def slice_like(h: int = 64, w: int = 64, dtype: type = np.uint8) -> np.ndarray:
    """A bright disc on black, with texture: something preprocess can crop."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    hi = np.iinfo(dtype).max
    return np.where(disc, (hi * 0.5 + (xx * 7 % 50) / 50 * hi * 0.4), 0).astype(dtype)


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", *, pixel_data: bool = True,
               syntax: str = ExplicitVRLittleEndian, **elements: object) -> bytes:
    """A Part 10 MR file built in memory; ``elements`` are extra dataset keywords."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT
    ds.set_pixel_data(pixels, photometric, 8 * pixels.dtype.itemsize)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if not pixel_data:
        del ds.PixelData
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def windowed(stored: np.ndarray, slope: float, intercept: float, center: float,
             width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, to 0..255."""
    x = stored.astype(np.float64) * slope + intercept
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255


RAMP = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 2)  # 0..8190
MR = dict(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=6000, WindowWidth=8000)


# --- sniffing ---------------------------------------------------------------------------

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


# --- PNG and JPEG -----------------------------------------------------------------------

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


# --- refusals -------------------------------------------------------------------------

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


# --- DICOM ----------------------------------------------------------------------------

def test_dicom_applies_rescale_then_window() -> None:
    data = make_dicom(RAMP, **MR)

    upload = decode_upload(data, LIMIT)

    assert (upload.kind, upload.width, upload.height) == ("dicom", 64, 64)
    assert upload.pixels.dtype == np.uint8 and upload.pixels.ndim == 2
    expected = windowed(RAMP, 2, -100, 6000, 8000)
    assert np.abs(upload.pixels.astype(float) - expected).max() <= 0.5 + 1e-9
    assert upload.pixels.min() == 0 and upload.pixels.max() == 255  # window clips both ends


def test_dicom_monochrome1_is_the_inverse_of_monochrome2() -> None:
    mono2 = decode_dicom(make_dicom(RAMP, "MONOCHROME2", **MR))

    mono1 = decode_dicom(make_dicom(RAMP, "MONOCHROME1", **MR))

    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_without_window_is_min_max_scaled() -> None:
    stored = (RAMP // 4 + 1000).astype(np.uint16)  # 1000..3047

    out = decode_dicom(make_dicom(stored))

    expected = (stored - 1000.0) / 2047 * 255
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_dicom_voi_lut_sequence_is_applied() -> None:
    stored = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) // 16)  # 0..255
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 12]  # entries, first stored value mapped, output bits
    lut.add_new(0x00283006, "US", [int(v) for v in np.linspace(4095, 0, 256)])  # LUTData

    out = decode_dicom(make_dicom(stored, VOILUTSequence=Sequence([lut])))

    np.testing.assert_allclose(out, 255 - stored, atol=1)  # this LUT inverts the ramp


def test_dicom_multiframe_takes_the_middle_frame() -> None:
    frames = np.zeros((5, 32, 32), np.uint16)
    for i in range(5):
        frames[i, i * 6:i * 6 + 4, :] = 1000  # a bright band whose row marks the frame

    out = decode_dicom(make_dicom(frames))

    assert out.shape == (32, 32)
    assert np.flatnonzero(out[:, 0]).tolist() == [12, 13, 14, 15]


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_dicom_is_422_as_the_same_picture_in_png(photometric: str) -> None:
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)  # a colour scale, as a screenshot
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    stored = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)
    with pytest.raises(mp.UnusableImageError, match="colour image"):
        mp.preprocess(decode_upload(png_bytes(bgr), LIMIT).pixels)

    with pytest.raises(UnusableImageError, match="colour image") as err:
        decode_upload(make_dicom(stored, photometric), LIMIT)

    assert err.value.status == 422 and "greyscale" in str(err.value)


def test_grey_dicom_stored_as_rgb_is_accepted_as_grey() -> None:
    gray = slice_like()
    rgb = np.repeat(gray[..., None], 3, axis=2)

    out = decode_dicom(make_dicom(rgb, "RGB"))

    assert out.shape == (64, 64) and out.dtype == np.uint8
    np.testing.assert_allclose(out, decode_dicom(make_dicom(gray)), atol=1)


def test_dicom_without_preamble_is_accepted() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(RAMP, **MR)))
    buf = io.BytesIO()
    ds.preamble = None
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"

    out = decode_upload(data, LIMIT)

    np.testing.assert_array_equal(out.pixels, decode_dicom(make_dicom(RAMP, **MR)))


def test_dicom_without_pixel_data_is_422() -> None:
    data = make_dicom(RAMP, pixel_data=False)

    with pytest.raises(UnusableImageError, match="no pixel data") as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 422


def test_dicom_header_claiming_huge_frame_is_422() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(RAMP)))
    ds.Rows = ds.Columns = 65535
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()

    with pytest.raises(UnusableImageError, match="too large") as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 422


def test_compressed_dicom_without_codec_is_415() -> None:
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    ds = pydicom.dcmread(io.BytesIO(make_dicom(RAMP)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)

    with pytest.raises(UnsupportedTypeError, match="JPEG-LS") as err:
        decode_upload(buf.getvalue(), LIMIT)

    assert err.value.status == 415


def deflate_bomb(inflated: int) -> bytes:
    """A deflated DICOM: a real file meta group, then ``inflated`` zero bytes deflated
    (about a thousandth of that on the wire), built in 1 MiB steps."""
    meta_end = 132 + 12 + struct.unpack_from(  # group length value + its 12-byte element
        "<I", make_dicom(RAMP, syntax=DeflatedExplicitVRLittleEndian), 140)[0]
    head = make_dicom(RAMP, syntax=DeflatedExplicitVRLittleEndian)[:meta_end]
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = b"".join(deflate.compress(bytes(MB)) for _ in range(inflated // MB))
    return head + body + deflate.flush()


@pytest.mark.parametrize("what", ["a real slice", "a bomb"])
def test_deflated_dicom_is_415_before_inflating(what: str) -> None:
    data = (make_dicom(RAMP, syntax=DeflatedExplicitVRLittleEndian, **MR)
            if what == "a real slice" else deflate_bomb(50 * MB))
    assert len(data) < MB

    with pytest.raises(UnsupportedTypeError, match="Deflated Explicit VR") as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 415 and "uncompressed" in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "short pixel data"])
def test_corrupt_dicom_is_400(damage: str) -> None:
    good = make_dicom(RAMP, **MR)
    data = (good[:132] + np.random.default_rng(2).bytes(500) if damage == "garbage"
            else good[:-1000])

    with pytest.raises(InputError) as err:
        decode_upload(data, LIMIT)

    assert err.value.status == 400


def test_patient_data_never_reaches_png_logs_or_errors(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    good = make_dicom(RAMP, **MR)
    bad = [make_dicom(RAMP, pixel_data=False), good[:-1000],
           make_dicom(RAMP, WindowCenter=10, WindowWidth=0)]  # invalid window: warning path
    assert b"DOE^JANE" in good and b"12345" in good  # the input does carry them

    stored = decode_upload(good, LIMIT).png()
    messages = []
    for data in bad:
        try:
            decode_upload(data, LIMIT)
        except InputError as exc:
            messages.append(str(exc))
            messages.append(repr(exc.__cause__) + repr(exc.__context__))

    assert len(messages) == 4  # the two broken files were refused, the bad window tolerated
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    for secret in PATIENT:
        assert secret.encode() not in stored
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)
