"""Exceptions of the coordinator. Each maps to one HTTP status (``status``); leaves also
inherit the builtin they resemble, so callers outside the web layer can catch those."""
from __future__ import annotations


class CoordinatorError(Exception):
    """Base class; ``status`` is the HTTP status the API answers with."""

    status = 500


class InputError(CoordinatorError, ValueError):
    """Malformed request, identifier or argument (400)."""

    status = 400


class AuthError(CoordinatorError, PermissionError):
    """Missing, unknown or revoked credentials (401)."""

    status = 401


class NotFoundError(CoordinatorError, LookupError):
    """No such device, round, update, bundle or file (404)."""

    status = 404


class ConflictError(CoordinatorError, ValueError):
    """The request contradicts the current state: a second open round, a second update
    from one device in a round, a bundle version that does not increase (409)."""

    status = 409


class RejectedError(CoordinatorError, ValueError):
    """Well-formed but refused content, e.g. a head update with a NaN (422); ``reason``
    is a short machine-readable word (``"norm"``, ``"shape"``, ...)."""

    status = 422

    def __init__(self, message: str, reason: str = "rejected") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(CoordinatorError, RuntimeError):
    """The state store cannot complete an operation (nothing is half-written) (500)."""

    status = 500


class ConfigError(CoordinatorError, ValueError):
    """Invalid configuration; the message names the setting."""
