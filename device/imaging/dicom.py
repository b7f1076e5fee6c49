"""DICOM slices to 8-bit grayscale pixels, reading no patient data at all.

Only the Image Pixel / Modality LUT / VOI LUT elements (group 0028), the pixel data, and
the Study and Series Instance UIDs and Instance Number (to group the slices of a study)
are parsed (``dcmread(specific_tags=...)``): PatientName, PatientID and every other
identifying element are skipped by the parser, so they can reach neither the result,
nor a log line, nor an exception message. The two UIDs are handed on only to be hashed
with the appliance's salt (:mod:`device.studies`); they are never stored or logged.
Messages and log lines name element keywords and transfer syntaxes, never element values.

Deflated Explicit VR Little Endian is refused from the file meta group alone, before
``dcmread``: pydicom inflates the whole deflated dataset in memory before any element
(let alone the pixel limits) is looked at, so a 1 MB upload could become gigabytes.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
# The meta-group reader dcmread itself runs (private, hence pinned by the tests): the
# transfer syntax checked here is exactly the one dcmread would act on, duplicates and
# implicit-VR meta groups included.
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi, apply_windowing,
                            get_decoder, pixel_array)
from pydicom.uid import DeflatedExplicitVRLittleEndian

import models.core.preprocess as mp
from device.exc import DeviceError, InputError, UnsupportedTypeError, UnusableImageError
from device.imaging import limits

logger = logging.getLogger(__name__)

_PREFIX_OFFSET = 128
# A Part 10 file written without the 128-byte preamble and "DICM" starts with its file
# meta group: tag (0002,00xx) in explicit VR little endian, VR UL (group length), OB
# (meta version) or UI (SOP class). Eight fixed-pattern bits plus a VR cannot match
# HTML, PDF, ZIP or image magic; files without a meta group (bare implicit-VR datasets,
# ACR-NEMA) have no reliable signature and are refused rather than guessed at.
_META_VRS = (b"UL", b"OB", b"UI")
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, DoubleFloat, (plain) PixelData
_SLICE_ID_TAGS = (0x0020000D, 0x0020000E, 0x00200013)  # Study/Series UID, Instance Number
_WANTED_TAGS = sorted(
    {tag for tag, entry in DicomDictionary.items() if tag >> 16 == 0x0028 and not entry[3]}
    | {0x7FE00001, 0x7FE00002, *_PIXEL_TAGS, *_SLICE_ID_TAGS})


@dataclass(frozen=True)
class SliceIds:
    """Where a slice belongs: its study's and series' instance UIDs (identifiers: only
    ever hashed, never stored or logged) and its Instance Number (None if absent)."""

    study_uid: str
    series_uid: str
    instance: int | None


@dataclass(frozen=True, eq=False)
class DicomSlice:
    """A decoded DICOM slice: its display-ready 8-bit ``pixels``, its ``ids`` (None
    without a StudyInstanceUID), and its stored values before any LUT as ``uint16``
    (``raw``; a signed image is shifted by ``raw_offset``, which adding back restores)
    for window/level in the viewer, or None (colour, MONOCHROME1, not integer)."""

    pixels: np.ndarray
    ids: SliceIds | None
    raw: np.ndarray | None = None
    raw_offset: int = 0


def _raw(arr: np.ndarray, photometric: str) -> tuple[np.ndarray | None, int]:
    if arr.ndim != 2 or photometric != "MONOCHROME2" or arr.dtype.kind not in "iu" \
            or arr.dtype.itemsize > 2:
        return None, 0
    if arr.dtype.kind == "i":
        return (arr.astype(np.int32) + 32768).astype(np.uint16), -32768
    return arr.astype(np.uint16), 0


def _slice_ids(ds: Dataset) -> SliceIds | None:
    """The slice's ids, None without a valid StudyInstanceUID (no study to group by)."""
    study, series = ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID")
    study = str(study).strip() if study else ""
    if not study or len(study) > 64:  # a UID is at most 64 characters
        return None
    try:
        instance = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        instance = None
    if instance is not None and not 0 <= instance < 2**31:
        instance = None
    return SliceIds(study, str(series).strip()[:64] if series else "", instance)


_EXPORT_HINT = "export it uncompressed (Explicit VR Little Endian), or as PNG or JPEG"


def looks_like_dicom(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM Part 10 file (magic bytes only)."""
    if data[_PREFIX_OFFSET:_PREFIX_OFFSET + 4] == b"DICM":
        return True
    return data[:2] == b"\x02\x00" and data[3:4] == b"\x00" and data[4:6] in _META_VRS


def decode_dicom(data: bytes) -> np.ndarray:
    """The pixels of :func:`decode_dicom_slice` alone."""
    return decode_dicom_slice(data).pixels


def decode_dicom_slice(data: bytes) -> DicomSlice:
    """Decode one DICOM slice into a display-ready 8-bit grayscale image, with the ids
    that place it in its study and its stored values (:class:`DicomSlice`).

    Steps: modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then the VOI
    LUT Sequence or the first Window Center/Width (min-max of the rescaled values when
    neither is present or they are invalid), scaled to 0..255; MONOCHROME1 is inverted
    so it looks like MONOCHROME2. Colour (RGB, YBR, palette) is refused by the rule PNG
    and JPEG meet in ``models.core.preprocess`` (:func:`models.core.preprocess.colour_share`);
    greyscale stored as colour (R = G = B) is converted to luma and min-max scaled. Of a
    multi-frame object only the middle frame is decoded: in a stack of MR slices it is
    the one most likely to cross the middle of the brain.

    Parameters
    ----------
    data : bytes
        The whole file, with the 128-byte preamble and "DICM", or starting directly with
        its file meta group.

    Returns
    -------
    DicomSlice
        ``pixels``: 2-D ``uint8`` array (rows, columns); the study and series UIDs and
        instance number; the stored values.

    Raises
    ------
    InputError
        Unparsable or corrupt file, or pixel data that fails to decode (400).
    UnsupportedTypeError
        Transfer syntax this device has no decoder for (JPEG Lossless, JPEG-LS, JPEG,
        JPEG 2000 and RLE decode through GDCM, Pillow or pydicom; HTJ2K does not), or
        Deflated Explicit VR Little Endian (refused before anything is inflated) (415).
    UnusableImageError
        No pixel data, more than ``models.core.preprocess.MAX_PIXELS`` pixels per frame
        (422, checked from the header before decoding), or a colour picture (422).
    """
    try:
        return _decode(data)
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        # Only the type: pydicom messages may quote element values.
        logger.info("refused DICOM upload: %s while parsing or decoding", type(exc).__name__)
        raise InputError("corrupt or unreadable DICOM file") from None


def _decode(data: bytes) -> DicomSlice:
    preamble = data[_PREFIX_OFFSET:_PREFIX_OFFSET + 4] == b"DICM"
    _refuse_deflated(data)
    ds = pydicom.dcmread(io.BytesIO(data), force=not preamble, specific_tags=_WANTED_TAGS)
    _check_decodable(ds)  # first: garbage after "DICM" parses, with no file meta
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise UnusableImageError("DICOM has no pixel data")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > mp.MAX_PIXELS:
        raise UnusableImageError(f"image too large: {cols}x{rows} pixels")
    decoded = limits.dicom_decoded_bytes(rows, cols, int(ds.get("SamplesPerPixel") or 1))
    if decoded > limits.MAX_DECODED_BYTES:
        raise UnusableImageError(f"image too large: {limits.describe(decoded)}")
    frames = int(ds.get("NumberOfFrames") or 1)
    arr = pixel_array(ds, index=frames // 2)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        _refuse_colour(arr)
        # pixel_array already converted YBR to RGB; Rec. 601 luma, as cv2's BGR2GRAY.
        unit = _minmax(arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    else:
        unit = _voi(apply_modality_lut(arr, ds), ds)
    out = np.rint(unit * 255.0).astype(np.uint8)
    if photometric == "MONOCHROME1":  # minimum value displays white
        out = 255 - out
    logger.debug("decoded DICOM frame %d of %d: %dx%d %s", frames // 2 + 1, frames, cols,
                 rows, photometric)
    return DicomSlice(out, _slice_ids(ds), *_raw(arr, photometric))


def _refuse_deflated(data: bytes) -> None:
    """Refuse a deflated dataset (415) from the file meta group, which is never deflated.

    Only the preamble and group 0002 are read; the deflated bytes after them are not
    touched, so the cost is bounded by the upload size, not by what it would inflate to.
    """
    fp = io.BytesIO(data)
    read_preamble(fp, True)  # positions fp after "DICM", or at 0 without a preamble
    tsuid = _read_file_meta_info(fp).get("TransferSyntaxUID")
    if tsuid == DeflatedExplicitVRLittleEndian:
        raise UnsupportedTypeError(
            f"DICOM transfer syntax {tsuid.name} is not supported; {_EXPORT_HINT}")


def _check_decodable(ds: Dataset) -> None:
    """Refuse transfer syntaxes that need a codec this installation lacks (415)."""
    tsuid = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if not tsuid:
        raise InputError("DICOM file has no transfer syntax (file meta information)")
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise UnsupportedTypeError(
            f"DICOM transfer syntax {tsuid} is not supported; {_EXPORT_HINT}") from None
    if not decoder.is_available:
        logger.info("no DICOM decoder for %s (missing: %s)", tsuid.name,
                    "; ".join(decoder.missing_dependencies))
        raise UnsupportedTypeError(
            f"DICOM compressed as {tsuid.name} cannot be decoded on this device; "
            f"{_EXPORT_HINT}")


def _refuse_colour(rgb: np.ndarray) -> None:
    """Refuse colour as preprocessing refuses a colour PNG/JPEG (422): once reduced to
    luma it would no longer be recognisable as colour, yet never was a slice."""
    try:
        mp.refuse_colour(rgb[..., 2::-1])  # RGB(A) -> the BGR it expects
    except mp.UnusableImageError as exc:
        raise UnusableImageError(str(exc)) from None


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the VOI LUT or window and return float values in [0, 1]."""
    try:
        if "VOILUTSequence" in ds:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            return np.clip(apply_voi(values, ds).astype(np.float64) / (2 ** bits - 1), 0, 1)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            # apply_windowing maps onto a range that depends on Bits Stored, Pixel
            # Representation and the rescale; infinities land exactly on its two ends,
            # for LINEAR, LINEAR_EXACT and SIGMOID alike.
            with np.errstate(over="ignore"):
                lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
            if np.isfinite(lo) and np.isfinite(hi) and hi != lo:
                return np.clip((apply_windowing(values, ds) - lo) / (hi - lo), 0.0, 1.0)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        logger.warning("ignoring invalid VOI LUT/window in DICOM (%s); using min-max",
                       type(exc).__name__)
    return _minmax(values)


def _minmax(values: np.ndarray) -> np.ndarray:
    """Stretch the value range to [0, 1]; a constant image becomes all zeros."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return (values - lo) / (hi - lo)
