"""How much memory an upload becomes once decoded, read from its header.

A pixel limit alone lets a small file through that decodes huge: 6300 x 6300 pixels are
under 40 megapixels, yet as 16-bit RGBA they are 317 MB (a 300 KB PNG of zeros took the
appliance from 181 to 711 MB, issue 26 finding 2). The limit therefore counts decoded
bytes: pixels x channels x bytes per sample, as OpenCV (PNG, JPEG) or pydicom and its
float64 look-up tables (DICOM) hold them.
"""
from __future__ import annotations

import struct

MAX_DECODED_BYTES = 64 * 2**20  # a 12-megapixel colour photo is 36 MB; an MR slice < 2 MB

# Channels OpenCV's IMREAD_UNCHANGED gives per PNG colour type: grey, RGB, palette (RGB,
# or RGBA with transparency: counted as 4), grey + alpha (BGRA), RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
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
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in _SOF:
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4:i + 10])
            return width * height * max(components, 3 if components > 1 else 1) * (
                2 if precision > 8 else 1)
        if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def dicom_decoded_bytes(rows: int, columns: int, samples: int) -> int:
    """Working size of one DICOM frame: its samples in float64."""
    return rows * columns * max(samples, 1) * DICOM_BYTES_PER_SAMPLE


def describe(nbytes: int) -> str:
    """"317 MB once decoded (the limit is 64 MB)", for a refusal message."""
    return (f"{nbytes / 2**20:.0f} MB once decoded (the limit is "
            f"{MAX_DECODED_BYTES / 2**20:g} MB)")
