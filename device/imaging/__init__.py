"""Upload validation and decoding: PNG/JPEG/DICOM bytes -> pixels for the model.

Public API: :func:`sniff`, :func:`decode_upload` (returns an :class:`Upload`),
:func:`decode_dicom` and :func:`stored_model_input`. Preprocessing for the network stays
in ``models.core.preprocess``.
"""
from device.imaging.decode import (ACCEPTED, KINDS, Upload, decode_upload, sniff,
                                   stored_model_input)
from device.imaging.dicom import decode_dicom

__all__ = ["ACCEPTED", "KINDS", "Upload", "decode_dicom", "decode_upload", "sniff",
           "stored_model_input"]
