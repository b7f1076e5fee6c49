"""DICOM uploads (device.imaging): rescale and window, photometric forms, frames,
refusals, and patient data that never reaches the stored PNG, logs or errors."""
from __future__ import annotations

import io
import logging
import struct
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

import models.core.preprocess as mp
from device.exc import InputError, UnsupportedTypeError, UnusableImageError
from device.imaging import decode_dicom, decode_upload
from tests.device.images import LIMIT, MB, PATIENT, make_dicom, png_bytes, slice_like


def windowed(stored: np.ndarray, slope: float, intercept: float, center: float,
             width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, to 0..255."""
    x = stored.astype(np.float64) * slope + intercept
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255


RAMP = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 2)  # 0..8190
MR = dict(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=6000, WindowWidth=8000)


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
