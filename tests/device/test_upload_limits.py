"""Issue 26, finding 2: what an upload may cost in memory. Decode limits count decoded
bytes (pixels x channels x bytes per sample), not pixels, and each file of a browser
batch is measured before it is read."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import pytest
from werkzeug.test import EnvironBuilder

from tests.device.images import MB, LIMIT
from tests.device.webclient import csrf, login


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body))


def zero_png(side: int, depth: int, colour_type: int, channels: int) -> bytes:
    """A PNG of ``side`` x ``side`` zeros, compressed row by row (never all in memory):
    6300 px of 16-bit RGBA is 317 MB decoded and 300 KB on the wire."""
    header = struct.pack(">IIBBBBB", side, side, depth, colour_type, 0, 0, 0)
    row = bytes(1 + side * channels * depth // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The finding's PNG: 6300 x 6300 16-bit RGBA zeros, under the pixel limit."""
    return zero_png(6300, 16, 6, 4)


def test_a_png_under_the_pixel_limit_but_huge_once_decoded_is_refused_from_its_header(bomb):
    from device.exc import UnusableImageError
    from device.imaging import decode_upload
    assert 6300 * 6300 < 40_000_000 and len(bomb) < MB

    # Execute: finding 2, one upload took the appliance from 181 to 711 MB
    with pytest.raises(UnusableImageError) as refused:
        decode_upload(bomb, LIMIT)

    # Assert: a 422 that says why, in the words of the decoded size
    assert refused.value.status == 422
    assert "MB once decoded" in str(refused.value)


def test_the_same_pixels_in_8_bit_grey_are_decoded(bomb):
    from device.imaging import decode_upload
    grey = zero_png(6300, 8, 0, 1)  # 40 MB decoded

    assert decode_upload(grey, LIMIT).pixels.shape == (6300, 6300)


def test_the_memory_estimate_counts_channels_and_bytes_per_sample(bomb):
    from device.admission import analysis_bytes
    grey = zero_png(6300, 8, 0, 1)

    assert analysis_bytes(bomb) >= 8 * 6300 * 6300 > analysis_bytes(grey)


def test_a_file_over_the_limit_in_a_browser_batch_is_refused_without_being_read(
        app, admin, services, settings):
    # Prepare: a signed-in client and a batch whose second file is 25 MB (limit 20 MB),
    # encoded before memory is traced
    client = app.test_client()
    login(client)
    big = bytes(25 * MB)
    environ = EnvironBuilder(path="/upload", method="POST", data={
        "csrf_token": csrf(client, "/"),
        "images": [(io.BytesIO(b"not an image"), "a.png"), (io.BytesIO(big), "b.png")]},
    ).get_environ()
    del big

    # Execute: finding 2, the 25 MB part used to be read into memory before its check
    tracemalloc.start()
    try:
        response = client.open(environ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert: the part stayed in Werkzeug's spool file, and the answer names the limit
    page = response.get_data(as_text=True)
    assert peak < 8 * MB, f"{peak / MB:.1f} MB traced"
    assert 400 <= response.status_code < 500 and "the limit is 20 MB" in page
    assert services.store.count() == 0
