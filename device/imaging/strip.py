"""Metadata out of PNG and JPEG bytes, pixels untouched: what the appliance keeps of an
upload without re-encoding it.

Only byte ranges are dropped, never decoded and written again. PNG keeps its critical
chunks and the ancillary chunks that describe pixels (transparency, gamma, colour
space, animation); text, EXIF, time and unknown chunks go. JPEG keeps every marker a
decoder reads (frames, tables, scans, restart intervals) and its APP0 (JFIF) and APP14
(Adobe) segments, which tell the decoder the colour space; other APPn segments (EXIF,
XMP, ICC, Photoshop), comments and anything after the end-of-image marker go. The
caller decodes the result, so what is stored is exactly what was analysed.
"""
from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks a decoder may use for the pixels; every other ancillary chunk (tEXt,
# zTXt, iTXt, eXIf, tIME, private ones) is dropped. Critical chunks are always kept.
PNG_PIXEL_CHUNKS = frozenset({b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
                              b"bKGD", b"pHYs", b"hIST", b"cICP", b"mDCV", b"cLLI",
                              b"acTL", b"fcTL", b"fdAT"})
# JPEG markers without a length field: SOI, EOI, TEM, RST0-7.
_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
_SOS, _EOI, _COM = 0xDA, 0xD9, 0xFE
_KEPT_APP = frozenset({0xE0, 0xEE})  # APP0 (JFIF, JFXX) and APP14 (Adobe)


class MalformedImage(ValueError):
    """The bytes do not hold the PNG or JPEG structure they claim to."""


def strip_png(data: bytes) -> bytes:
    """``data`` without its non-pixel ancillary chunks; MalformedImage if a chunk runs
    past the end. Bytes after IEND are dropped."""
    if not data.startswith(PNG_MAGIC):
        raise MalformedImage("not a PNG")
    out, pos = [PNG_MAGIC], len(PNG_MAGIC)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise MalformedImage("PNG chunk runs past the end of the file")
        if kind[0] & 0x20 == 0 or kind in PNG_PIXEL_CHUNKS:  # bit 5 of byte 0: ancillary
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_jpeg(data: bytes) -> bytes:
    """``data`` without its APP1-APP13 and APP15 segments, comments and trailing bytes;
    MalformedImage if a segment runs past the end or no scan ends in EOI."""
    if not data.startswith(b"\xff\xd8"):
        raise MalformedImage("not a JPEG")
    out, pos = [b"\xff\xd8"], 2
    while True:
        pos = _next_marker(data, pos)
        if pos < 0:
            raise MalformedImage("JPEG ends before its end-of-image marker")
        marker = data[pos + 1]
        if marker == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker in _STANDALONE:
            out.append(data[pos:pos + 2])
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end > len(data) or end < pos + 4:
            raise MalformedImage("JPEG segment runs past the end of the file")
        if marker == _SOS:  # the header, then entropy-coded data up to the next marker
            end = _scan_end(data, end)
        if marker != _COM and not (0xE0 <= marker <= 0xEF and marker not in _KEPT_APP):
            out.append(data[pos:end])
        pos = end


def _next_marker(data: bytes, pos: int) -> int:
    """Index of the next marker's 0xFF at or after ``pos`` (fill bytes and stray bytes
    before it skipped, as decoders do), or -1 when the data ends first."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        if data[pos + 1] not in (0xFF, 0x00):
            return pos
        pos += 1


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data from ``pos`` ends: at the first marker that is not a
    stuffed 0xFF00 or a restart marker (or at the end of the data)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos
