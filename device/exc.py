"""Exceptions of the appliance. Each maps to one HTTP status; leaves also inherit the
builtin they resemble, so callers outside the web layer can catch those."""
from __future__ import annotations


class DeviceError(Exception):
    """Base class; ``status`` is the HTTP status the web layer answers with."""

    status = 500


class InputError(DeviceError, ValueError):
    """Malformed request or image bytes (400)."""

    status = 400


class TooLargeError(InputError):
    """Upload bigger than the configured limit (413)."""

    status = 413


class UnsupportedTypeError(InputError):
    """Not PNG, JPEG or DICOM (415)."""

    status = 415


class UnusableImageError(InputError):
    """Decodes, but is not a usable slice: too small, too many pixels, blank (422)."""

    status = 422


class NotASliceError(UnusableImageError):
    """The bundle's slice check finds no brain MRI slice (a photo, a document, another
    body part): no prediction is given and nothing is stored (422)."""

    message = "not a brain MRI slice \u2014 no prediction"


class ConflictError(InputError):
    """The request contradicts what is recorded (e.g. a study labelled "no tumour" with a
    slice labelled tumour); nothing was changed."""

    status = 409


class NotFoundError(DeviceError, LookupError):
    """No such case, user or file (404)."""

    status = 404


class ConfigError(DeviceError, ValueError):
    """Invalid configuration; the message names the setting."""


class StoreError(DeviceError, RuntimeError):
    """The case store cannot complete an operation (nothing is half-written)."""


class StorageFullError(StoreError):
    """The disk is full (ENOSPC, or SQLite's "database or disk is full"): nothing was
    stored (507 Insufficient Storage); it works again once space is freed."""

    status = 507


class CameraUnavailableError(DeviceError, RuntimeError):
    """No usable camera: picamera2 missing, no sensor attached, or the camera closed."""

    status = 503


class RollbackError(DeviceError, LookupError):
    """There is no usable previous bundle to roll back to (CURRENT is unchanged)."""

    status = 409
