"""Validate and decode an uploaded slice (PNG, JPEG or DICOM) into pixels.

PNG and JPEG go through ``models.core.preprocess.decode_image``, the decoder the training
pipeline uses, so the appliance feeds the network exactly what it was trained on. The
type comes from magic bytes only, never from the file name or the browser's MIME type.
What the appliance keeps is :meth:`Upload.png`, a lossless re-encoding of the pixels:
EXIF, PNG text chunks, JPEG comments and DICOM elements are all left behind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import models.core.preprocess as mp
from device.exc import InputError, TooLargeError, UnsupportedTypeError, UnusableImageError
from device.imaging import limits
from device.imaging.dicom import DicomSlice, SliceIds, decode_dicom_slice, looks_like_dicom
from device.imaging.strip import MalformedImage, strip_jpeg, strip_png

logger = logging.getLogger(__name__)

ACCEPTED = "PNG, JPEG or DICOM (Part 10 .dcm file)"
KINDS = ("png", "jpeg", "dicom")
CORRUPT = "corrupt or truncated image"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True, eq=False)
class Upload:
    """A decoded upload.

    Attributes
    ----------
    pixels : numpy.ndarray
        Read-only, 2-D gray or 3-D BGR, ``uint8`` or ``uint16`` (16-bit PNGs keep their
        depth; DICOM is windowed to ``uint8``); what ``models.core.preprocess.preprocess``
        takes.
    kind : str
        The detected type: ``"png"``, ``"jpeg"`` or ``"dicom"``.
    kept : bytes or None
        For PNG and JPEG, the uploaded bytes without metadata, which decode to
        :attr:`pixels`; None for DICOM.
    dicom : DicomSlice or None
        For DICOM, its study and series UIDs and instance number (in memory only: they
        are hashed before anything is stored) and its stored values.
    """

    pixels: np.ndarray
    kind: str
    kept: bytes | None = None
    dicom: DicomSlice | None = None

    @property
    def ids(self) -> SliceIds | None:
        """Where a DICOM slice belongs (:class:`SliceIds`), else None."""
        return None if self.dicom is None else self.dicom.ids

    def raw_png(self) -> tuple[bytes, int] | None:
        """A DICOM slice's stored values as a 16-bit PNG, and the offset that restores
        them; None without such values."""
        if self.dicom is None or self.dicom.raw is None:
            return None
        return _png(self.dicom.raw), self.dicom.raw_offset

    @property
    def height(self) -> int:
        """Rows of :attr:`pixels`."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns of :attr:`pixels`."""
        return int(self.pixels.shape[1])

    def stored(self) -> bytes:
        """What the appliance keeps: :attr:`kept`, or for DICOM :meth:`png`.

        Returns
        -------
        bytes
            PNG or JPEG bytes with no metadata, which decode to :attr:`pixels`.
        """
        return self.kept if self.kept is not None else self.png()

    def png(self) -> bytes:
        """Lossless PNG of :attr:`pixels` (16-bit kept), with no metadata chunks.

        Returns
        -------
        bytes
            The encoded image; decoding it gives back :attr:`pixels` exactly.
        """
        return _png(self.pixels)


def _png(pixels: np.ndarray) -> bytes:
    # Fast zlib level: 3x quicker than the default for ~10% more bytes on disk.
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # cannot happen for the dtypes and shapes decode_upload produces
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def sniff(data: bytes) -> str | None:
    """Detect the upload type from its magic bytes.

    Parameters
    ----------
    data : bytes
        The start of the file (the first 132 bytes suffice).

    Returns
    -------
    str or None
        ``"png"``, ``"jpeg"`` or ``"dicom"``; ``None`` for anything else.
    """
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if looks_like_dicom(data):
        return "dicom"
    return None


def decode_upload(data: bytes, max_bytes: int) -> Upload:
    """Check and decode uploaded bytes.

    Parameters
    ----------
    data : bytes
        The uploaded file.
    max_bytes : int
        Largest accepted size; checked before anything is decoded.

    Returns
    -------
    Upload
        The pixels, at least ``models.core.preprocess.MIN_SIDE`` on each side.

    Raises
    ------
    InputError
        Empty file, or a PNG/JPEG/DICOM that is corrupt or truncated (400).
    TooLargeError
        More than ``max_bytes`` bytes (413).
    UnsupportedTypeError
        Not PNG, JPEG or DICOM, or a DICOM compression this device cannot decode (415).
    UnusableImageError
        More than ``models.core.preprocess.MAX_PIXELS`` pixels or, decoded, more than
        :data:`device.imaging.limits.MAX_DECODED_BYTES` (both refused from the header,
        before allocating), smaller than ``MIN_SIDE`` on a side, or a DICOM without
        pixel data (422).
    """
    if not data:
        raise InputError("empty file")
    if len(data) > max_bytes:
        raise TooLargeError(f"file too large: {len(data) / 2**20:.1f} MB, "
                            f"the limit is {max_bytes / 2**20:g} MB")
    kind = sniff(data)
    if kind is None:
        logger.info("refused upload of unknown type (%d bytes)", len(data))
        raise UnsupportedTypeError(f"unsupported file type; accepted: {ACCEPTED}")
    _check_decoded_size(data, kind)
    kept = None if kind == "dicom" else _strip(data, kind)
    dicom = decode_dicom_slice(data) if kept is None else None
    pixels = dicom.pixels if dicom is not None else _decode_raster(kept, kind)
    height, width = pixels.shape[:2]
    if min(height, width) < mp.MIN_SIDE:
        raise UnusableImageError(f"image too small: {width}x{height} pixels, at least "
                                 f"{mp.MIN_SIDE} on each side needed")
    pixels.flags.writeable = False
    logger.info("decoded %s upload: %dx%d %s", kind, width, height, pixels.dtype)
    return Upload(pixels, kind, kept, dicom)


def _check_decoded_size(data: bytes, kind: str) -> None:
    """UnusableImageError (422) if a PNG or JPEG header announces more than
    :data:`~device.imaging.limits.MAX_DECODED_BYTES` of pixels (DICOM: checked by its
    decoder, from its own header)."""
    decoded = limits.png_decoded_bytes(data) if kind == "png" else \
        limits.jpeg_decoded_bytes(data) if kind == "jpeg" else None
    if decoded is not None and decoded > limits.MAX_DECODED_BYTES:
        logger.info("refused %s upload: %d bytes once decoded", kind, decoded)
        raise UnusableImageError(f"image too large: {limits.describe(decoded)}")


def _strip(data: bytes, kind: str) -> bytes:
    """The upload without metadata (:mod:`device.imaging.strip`); InputError if its
    structure is broken."""
    # OpenCV builds differ: libjpeg(-turbo) in OpenCV 4 returns the decoded top of a
    # truncated JPEG with only a warning, so a missing EOI marker is refused here.
    if kind == "jpeg" and not _jpeg_complete(data):
        logger.info("refused JPEG upload: no end-of-image marker")
        raise InputError(CORRUPT)
    try:
        return strip_png(data) if kind == "png" else strip_jpeg(data)
    except MalformedImage as exc:
        logger.info("refused %s upload: %s", kind, exc)
        raise InputError(CORRUPT) from None


def _decode_raster(data: bytes, kind: str) -> np.ndarray:
    """PNG/JPEG through the training decoder, as 2-D gray or 3-D BGR."""
    try:
        img = mp.decode_image(data)
    except mp.UnusableImageError as exc:
        logger.info("refused %s upload: %s", kind, exc)
        raise UnusableImageError(str(exc)) from exc
    except (mp.ImageDecodeError, cv2.error) as exc:
        logger.info("refused %s upload: does not decode", kind)
        raise InputError(CORRUPT) from exc
    if img.dtype not in (np.uint8, np.uint16):  # PNG/JPEG decode to these only
        raise InputError(f"unsupported sample type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        # Alpha is dropped, not composited: models.core.preprocess.to_gray does the same in
        # training, and the appliance must see what training saw.
        img = np.ascontiguousarray(img[:, :, :3])
    return img


def _jpeg_complete(data: bytes) -> bool:
    """Whether an end-of-image marker follows the last start-of-scan marker.

    Entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart
    marker), and an EXIF thumbnail's EOI comes before the main scan; bytes that cameras
    and editors append after the EOI are allowed, a truncated last scan is not.
    """
    sos = data.rfind(_JPEG_SOS)
    return sos >= 0 and data.find(_JPEG_EOI, sos + 2) >= 0


def stored_model_input(path: Path, spec: mp.InputSpec) -> np.ndarray:
    """The model's input from an image the store kept (:meth:`Upload.stored`).

    Raises OSError when the file is gone, ``mp.UnusableImageError`` (a ValueError) for an
    image older software accepted that preprocessing now refuses (a colour picture), and
    ``mp.ImageDecodeError`` (a ValueError) when it no longer decodes.
    """
    return stored_input_and_crop(path, spec)[0]


def stored_input_and_crop(path: Path, spec: mp.InputSpec) -> tuple[np.ndarray, mp.Crop]:
    """:func:`stored_model_input`, and where that input lies in the stored image."""
    return mp.preprocess_with_crop(mp.decode_image(path.read_bytes()), spec)
