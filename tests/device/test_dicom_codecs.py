"""Compressed DICOM as MR exports make it: JPEG Lossless and JPEG-LS (through GDCM), RLE
and JPEG 2000 decode to exactly the frame the uncompressed file gives; a damaged
codestream is a 400 and a syntax without a decoder a 415."""
from __future__ import annotations

import io
from pathlib import Path

import gdcm
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless

from device.exc import InputError, UnsupportedTypeError
from device.imaging import decode_upload
from tests.device.images import LIMIT, PATIENT, make_dicom

MR = get_testdata_file("MR_small.dcm")  # 64x64, 16-bit, Explicit VR Little Endian


def transcoded(src: str, syntax: int, tmp_path: Path) -> bytes:
    """``src`` compressed by GDCM to ``syntax`` (a gdcm.TransferSyntax constant), as an
    MR console or PACS would export it."""
    reader = gdcm.ImageReader()
    reader.SetFileName(src)
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    out = tmp_path / "compressed.dcm"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return out.read_bytes()


@pytest.fixture(scope="module")
def uncompressed() -> np.ndarray:
    return decode_upload(Path(MR).read_bytes(), LIMIT).pixels


@pytest.mark.parametrize("syntax, uid", [
    (gdcm.TransferSyntax.JPEGLosslessProcess14_1, JPEGLosslessSV1),
    (gdcm.TransferSyntax.JPEGLSLossless, JPEGLSLossless),
])
def test_lossless_jpeg_exports_decode_to_the_uncompressed_frame(
        syntax, uid, uncompressed, tmp_path) -> None:
    data = transcoded(MR, syntax, tmp_path)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == uid

    upload = decode_upload(data, LIMIT)

    assert upload.kind == "dicom"
    np.testing.assert_array_equal(upload.pixels, uncompressed)
    kept = upload.stored()  # a PNG of the pixels: the file's patient name and id stay out
    assert kept.startswith(b"\x89PNG") and b"CompressedSamples" not in kept
    assert b"4MR1" not in kept


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_other_encoders_files_decode_to_the_uncompressed_frame(name, uncompressed) -> None:
    upload = decode_upload(Path(get_testdata_file(name)).read_bytes(), LIMIT)

    np.testing.assert_array_equal(upload.pixels, uncompressed)


def test_a_damaged_jpeg_ls_codestream_is_a_400(tmp_path) -> None:
    ds = pydicom.dcmread(io.BytesIO(transcoded(MR, gdcm.TransferSyntax.JPEGLSLossless,
                                               tmp_path)))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:len(frame) // 3]])  # cut short, as a broken export
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)

    with pytest.raises(InputError, match="corrupt or unreadable DICOM") as err:
        decode_upload(buf.getvalue(), LIMIT)

    assert err.value.status == 400
    assert PATIENT[0] not in str(err.value)


def test_a_syntax_without_a_decoder_here_is_a_415_that_names_it() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((64, 64), np.uint16))))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless  # no decoder for it is installed
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)

    with pytest.raises(UnsupportedTypeError, match="High-Throughput JPEG 2000") as err:
        decode_upload(buf.getvalue(), LIMIT)

    assert err.value.status == 415
    assert "export it uncompressed" in str(err.value)
