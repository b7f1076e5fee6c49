"""Image sizes read from PNG and JPEG headers, without decoding the pixels: the
appliance refuses what would decode too large before it decodes anything."""
from __future__ import annotations

import struct


def jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) of a JPEG's first start-of-frame segment,
    or None if there is none to read."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            return struct.unpack(">BHHB", data[i + 4:i + 10])
        if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from PNG/JPEG headers without decoding the pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8" and (frame := jpeg_frame(data)) is not None:
        return frame[2], frame[1]
    return None
