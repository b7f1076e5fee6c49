"""Small images the imaging tests make: encoded PNG bytes, a slice-like array, a DICOM
file carrying a patient's name, the upload limit."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

MB = 2**20
LIMIT = 20 * MB


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def slice_like(h: int = 64, w: int = 64, dtype: type = np.uint8) -> np.ndarray:
    """A bright disc on black, with texture: something preprocess can crop."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    hi = np.iinfo(dtype).max
    return np.where(disc, (hi * 0.5 + (xx * 7 % 50) / 50 * hi * 0.4), 0).astype(dtype)


PATIENT = ("DOE^JANE", "12345", "19700101")


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", *, pixel_data: bool = True,
               syntax: str = ExplicitVRLittleEndian, **elements: object) -> bytes:
    """A Part 10 MR file built in memory; ``elements`` are extra dataset keywords."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT
    ds.set_pixel_data(pixels, photometric, 8 * pixels.dtype.itemsize)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if not pixel_data:
        del ds.PixelData
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
