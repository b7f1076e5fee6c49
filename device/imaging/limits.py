"""How much memory an upload becomes once decoded, read from its header.

A pixel limit alone lets a small file through that decodes huge: 6300 x 6300 pixels are
under 40 megapixels, yet as 16-bit RGBA they are 317 MB (a 300 KB PNG of zeros took the
appliance from 181 to 711 MB, issue 26 finding 2). The limit therefore counts decoded
bytes: pixels x channels x bytes per sample, as OpenCV (PNG, JPEG) or pydicom and its
float64 look-up tables (DICOM) hold them.
"""
from __future__ import annotations

import struct

from models.core.headers import jpeg_frame

MAX_DECODED_BYTES = 64 * 2**20  # a 12-megapixel colour photo is 36 MB; an MR slice < 2 MB

# Channels OpenCV's IMREAD_UNCHANGED gives per PNG colour type: grey, RGB, palette (RGB,
# or RGBA with transparency: counted as 4), grey + alpha (BGRA), RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
DICOM_BYTES_PER_SAMPLE = 8  # the modality and VOI look-up tables work in float64


def png_decoded_bytes(data: bytes) -> int | None:
    """Decoded size of a PNG from its IHDR chunk; None if there is none to read."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = _PNG_CHANNELS.get(colour, 4)
    return width * height * channels * (2 if depth > 8 else 1)


def jpeg_decoded_bytes(data: bytes) -> int | None:
    """Decoded size of a JPEG from its first start-of-frame segment; None if none."""
    frame = jpeg_frame(data)
    if frame is None:
        return None
    precision, height, width, components = frame
    return width * height * max(components, 3 if components > 1 else 1) * (
        2 if precision > 8 else 1)


def dicom_decoded_bytes(rows: int, columns: int, samples: int) -> int:
    """Working size of one DICOM frame: its samples in float64."""
    return rows * columns * max(samples, 1) * DICOM_BYTES_PER_SAMPLE


def describe(nbytes: int) -> str:
    """"317 MB once decoded (the limit is 64 MB)", for a refusal message."""
    return (f"{nbytes / 2**20:.0f} MB once decoded (the limit is "
            f"{MAX_DECODED_BYTES / 2**20:g} MB)")
