"""The coordinator as the appliance sees it, whatever carries the messages.

:class:`~device.federation.Federation` talks to its coordinator through a
:class:`CoordinatorLink`: the HTTP client (:class:`~device.sync.client.CoordinatorClient`)
or one Flower round message (:class:`~device.sync.message_link.MessageLink`). Both raise
the errors below, so the outbox and the updater act the same under either transport.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from device.exc import DeviceError


@runtime_checkable
class CoordinatorLink(Protocol):
    """Four calls to the coordinator and two byte counters (bodies only)."""

    bytes_up: int
    bytes_down: int

    def post_update(self, payload: bytes, meta: dict) -> dict:
        """Send one head update; UpdateRefused (never retry) or CoordinatorUnavailable."""
        ...

    def latest(self, model_version: int | None = None) -> dict:
        """The latest bundle: ``{"version", "files": {name: url}}`` (and inline
        ``manifest``/``signature`` from older coordinators)."""
        ...

    def download(self, url: str, dest: Path, max_bytes: int) -> int:
        """Fetch one listed file to ``dest`` (never half-written); returns its size.
        UnsafeDownload if it is not the coordinator's or too large."""
        ...

    def report(self, kind: str, version: int | None, reason: str = "") -> dict:
        """Tell the coordinator what happened to a bundle (its audit log)."""
        ...


class CoordinatorUnavailable(DeviceError, ConnectionError):
    """The coordinator cannot be reached or cannot answer now; retry later (503).

    ``http_status`` is the coordinator's status when it answered (5xx, 401, 429, ...),
    ``None`` for connection errors and timeouts.
    """

    status = 503

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class CoordinatorRefused(DeviceError, ValueError):
    """The coordinator refused the request (4xx); retrying it cannot help.

    ``status`` is the coordinator's HTTP status, ``error`` its message and ``reason`` a
    short machine-readable word (the coordinator's, else derived from the status).
    """

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"coordinator refused ({status}, {reason}): {error}")
        self.status = status
        self.error = error
        self.reason = reason


class UpdateRefused(CoordinatorRefused):
    """A head update refused by the coordinator (400/409/413/422); never retry it."""


class UnsafeDownload(DeviceError, ValueError):
    """A download refused by the device: another origin (``reason="origin"``) or larger
    than allowed (``reason="size"``)."""

    status = 502

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
