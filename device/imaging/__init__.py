"""Upload validation and decoding: PNG/JPEG/DICOM bytes -> pixels for the model.

Public API: :func:`sniff`, :func:`decode_upload` (returns an :class:`Upload`) and
:func:`decode_dicom`. Preprocessing for the network stays in ``models.preprocess``.
"""
from device.imaging.decode import ACCEPTED, KINDS, Upload, decode_upload, sniff
from device.imaging.dicom import decode_dicom

__all__ = ["ACCEPTED", "KINDS", "Upload", "decode_dicom", "decode_upload", "sniff"]
