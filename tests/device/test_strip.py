"""What the appliance keeps of an upload (device.imaging.strip, Upload.stored): the bytes
as uploaded minus their metadata, decoding to the very pixels training would see."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import models.core.preprocess as mp
from device.exc import InputError
from device.imaging import decode_upload
from device.imaging.strip import MalformedImage, strip_jpeg, strip_png
from tests.device.images import LIMIT, make_dicom, png_bytes, slice_like

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NAME = b"DOE^JANE 12345"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _dataset_files(site: str, count: int) -> list[Path]:
    files = sorted(p for p in (DATA / site).glob("*/*") if p.is_file())
    if not files:
        pytest.skip(f"shared data not found at {DATA}")
    return files[::max(1, len(files) // count)]


@pytest.mark.parametrize("site", ["brain_tumor_dataset", "site_tcga_lgg_du",
                                  "site_ljubljana_ms"])
def test_dataset_files_keep_their_pixels(site: str) -> None:
    # Prepare: every Kaggle file (JPEG and PNG, with whatever metadata they carry) and a
    # sample of the TCGA PNGs and the MS JPEGs
    files = _dataset_files(site, 253 if site == "brain_tumor_dataset" else 40)
    for path in files:
        data = path.read_bytes()
        # Execute
        kept = (strip_png if data.startswith(b"\x89PNG") else strip_jpeg)(data)
        # Assert
        assert len(kept) <= len(data)
        np.testing.assert_array_equal(_decode(kept), mp.decode_image(data), str(path))


def test_jpeg_loses_exif_xmp_comments_and_trailers_but_not_pixels() -> None:
    # Prepare: a slice with EXIF, XMP, a comment, a Photoshop block and an appended record
    original = cv2.imencode(".jpg", slice_like(96, 96))[1].tobytes()
    meta = (_segment(0xE1, b"Exif\0\0" + NAME) + _segment(0xE1, b"http://ns.adobe.com/"
            + NAME) + _segment(0xFE, NAME) + _segment(0xED, b"Photoshop 3.0\0" + NAME))
    data = original[:2] + meta + original[2:] + b"TRAILER " + NAME
    # Execute
    kept = strip_jpeg(data)
    # Assert
    assert NAME not in kept and b"TRAILER" not in kept
    assert kept == strip_jpeg(original) and kept.endswith(b"\xff\xd9")
    assert b"JFIF" in kept  # APP0 stays: it tells decoders the colour space
    np.testing.assert_array_equal(_decode(kept), _decode(original))


def test_progressive_jpeg_loses_a_comment_between_scans() -> None:
    # Prepare: a progressive JPEG (several scans) with a comment before its second scan
    original = cv2.imencode(".jpg", cv2.cvtColor(slice_like(96, 96), cv2.COLOR_GRAY2BGR),
                            [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    second = original.find(b"\xff\xda", original.find(b"\xff\xda") + 2)
    assert second > 0
    data = original[:second] + _segment(0xFE, NAME) + original[second:]
    # Execute
    kept = strip_jpeg(data)
    # Assert
    assert NAME not in kept
    assert kept.count(b"\xff\xda") == original.count(b"\xff\xda")
    np.testing.assert_array_equal(_decode(kept), _decode(original))


def test_png_loses_text_exif_time_and_private_chunks_but_keeps_transparency() -> None:
    # Prepare: a palette PNG with transparency, gamma, and identifying chunks
    original = png_bytes(slice_like(80, 80))
    ihdr_end = 8 + 25
    meta = (_chunk(b"tEXt", b"Patient\0" + NAME) + _chunk(b"zTXt", b"Name\0\0"
            + zlib.compress(NAME)) + _chunk(b"iTXt", b"Name\0\0\0\0\0" + NAME)
            + _chunk(b"eXIf", b"MM\0*" + NAME) + _chunk(b"tIME", bytes(7))
            + _chunk(b"prVt", NAME) + _chunk(b"gAMA", struct.pack(">I", 45455)))
    data = original[:ihdr_end] + meta + original[ihdr_end:] + NAME
    # Execute
    kept = strip_png(data)
    # Assert
    assert NAME not in kept and b"tIME" not in kept and b"prVt" not in kept
    assert b"gAMA" in kept and kept.endswith(_chunk(b"IEND", b""))
    np.testing.assert_array_equal(_decode(kept), _decode(original))


@pytest.mark.parametrize("strip, data", [
    (strip_png, png_bytes(slice_like())[:60]),
    (strip_png, b"GIF89a"),
    (strip_jpeg, cv2.imencode(".jpg", slice_like())[1].tobytes()[:-2]),
    (strip_jpeg, b"\xff\xd8\xff\xe1\xff\xff" + b"\0" * 10),
])
def test_broken_structure_is_malformed(strip, data: bytes) -> None:
    with pytest.raises(MalformedImage):
        strip(data)


def test_an_upload_keeps_its_stripped_bytes_which_decode_to_its_pixels() -> None:
    # Prepare
    original = cv2.imencode(".jpg", slice_like(96, 96))[1].tobytes()
    data = original[:2] + _segment(0xFE, NAME) + original[2:]
    # Execute
    upload = decode_upload(data, LIMIT)
    # Assert: the JPEG itself, not a PNG re-encoding, and no comment
    stored = upload.stored()
    assert stored == strip_jpeg(original) and NAME not in stored
    np.testing.assert_array_equal(_decode(stored), upload.pixels)


def test_a_dicom_upload_is_kept_as_a_png_of_its_pixels() -> None:
    # Prepare: a DICOM file that carries a patient's name
    upload = decode_upload(make_dicom(slice_like(80, 80)), LIMIT)
    # Execute
    stored = upload.stored()
    # Assert
    assert stored.startswith(b"\x89PNG") and b"DOE^JANE" not in stored
    np.testing.assert_array_equal(_decode(stored), upload.pixels)


def test_a_png_whose_chunks_run_past_the_end_is_400() -> None:
    data = png_bytes(slice_like(80, 80))
    with pytest.raises(InputError, match="corrupt or truncated"):
        decode_upload(data[:40] + b"\0" * 30, LIMIT)
