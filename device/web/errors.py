"""Error answers of the web app: JSON for the API and ``/healthz``, a page with a
heading in words for browsers; every refusal is counted, never a traceback shown."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from device.config import Settings
from device.exc import DeviceError
from device.hw.status import Indicator
from device.telemetry import Telemetry
from models.core.webguard import CSRF_MESSAGE, CSRFError

logger = logging.getLogger(__name__)


def wants_json() -> bool:
    """Whether the request is answered in JSON (the API, /healthz) rather than a page."""
    return request.path.startswith("/api/") or request.path in ("/healthz",)


def register(app: Flask, settings: Settings, telemetry: Telemetry, status: Indicator
             ) -> None:
    """Answer :mod:`device.exc` errors with their status, HTTP errors with their own,
    and anything else with a 500 that lights the error LED."""
    @app.errorhandler(DeviceError)
    def _device_error(exc: DeviceError):
        telemetry.record_error(type(exc).__name__)
        return _error_response(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.response is not None:  # already answered (a sign-in lockout page)
            return exc.response
        if isinstance(exc, CSRFError):
            return _error_response(CSRF_MESSAGE, 400)
        if exc.code == 413:
            telemetry.record_error("TooLargeError")
            if _body_over_limit():
                return _error_response(f"upload larger than {settings.max_upload_mb:g} MB",
                                       413)
            return _error_response(
                f"form too large: more than {request.max_form_parts} parts, or a text "
                f"field or part header longer than {request.max_form_memory_size:,} bytes",
                413)
        return _error_response(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unexpected error on %s", request.path)
        telemetry.record_error("internal", "internal error (see server log)")
        status.error("internal error")
        return _error_response("internal error", 500)


def _body_over_limit() -> bool:
    """Whether a 413 came from the body size limit rather than a form limit.

    Werkzeug raises the same ``RequestEntityTooLarge`` for ``max_content_length`` (the
    upload limit) and for ``max_form_memory_size``/``max_form_parts`` (a long text field
    or part header, too many parts), which a small request can exceed.
    """
    limit = request.max_content_length
    if limit is None:
        return False
    if request.content_length is not None:
        return request.content_length > limit
    # Chunked: the body is read through a LimitedStream that stops at the limit.
    return bool(getattr(request.stream, "is_exhausted", True))


def _error_response(message: str, status: int):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", message=message, status=status), status
