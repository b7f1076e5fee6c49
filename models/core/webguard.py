"""What both web apps (the appliance and the coordinator's dashboard) do the same way to
stay safe: CSRF (Flask-WTF), throttling (Flask-Limiter, in memory), the security headers
with a strict Content-Security-Policy, session cookies marked ``Secure`` whenever the
request came over HTTPS, and redirects after sign-in that stay on the site.

Only the web apps import this module (it needs Flask and its extensions, which the
``device`` and ``coordinator`` extras install).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect

# Nothing inline: scripts and styles come from the app's static files. Images are the
# app's own (heat maps, slices); no frames, plugins or foreign form targets.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'"))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "Cross-Origin-Opener-Policy": "same-origin",
}
CSRF_MESSAGE = "missing or invalid CSRF token; reload the page and try again"
_UNSAFE_IN_TARGET = re.compile(r"[\x00-\x20\x7f\\]")


def valid_rate(rate: str) -> bool:
    """Whether Flask-Limiter reads ``rate`` ("600 per minute", "10/second")."""
    from limits import parse_many
    try:
        return bool(parse_many(rate))
    except ValueError:
        return False


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site to go to after sign-in, else None.

    Checked as a browser will read it: browsers drop tabs and newlines anywhere in a URL
    and read a backslash as a slash, so ``/\\t/evil.example`` is ``//evil.example``, a
    different site. Any control character, space or backslash is refused outright (a
    newline would also break the ``Location`` header); what is left must have neither a
    scheme nor a host, and start with exactly one slash.
    """
    if not target or _UNSAFE_IN_TARGET.search(target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the cookie ``Secure`` when the app says so
    (``SESSION_COOKIE_SECURE``) or the request came over HTTPS (as a trusted proxy's
    ``X-Forwarded-Proto`` reports it): served over HTTPS, the cookie never travels in
    clear, and a plain-HTTP appliance on a LAN still works."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


@dataclass
class Guards:
    """The extensions :func:`install` set up on an app."""

    csrf: CSRFProtect
    limiter: Limiter


def install(app: Flask) -> Guards:
    """CSRF protection of every form POST, an in-memory limiter (no default limit: each
    app sets its own on the routes that need one), HTTPS-aware session cookies and the
    security headers on every answer. Call before registering blueprints whose
    ``before_request`` must not run ahead of CSRF (the app's own guard runs first if it
    is registered first)."""
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a form lives as long as the session
    app.session_interface = HttpsAwareSessionInterface()
    csrf = CSRFProtect(app)
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://",
                      strategy="moving-window", headers_enabled=True)

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return Guards(csrf, limiter)


__all__ = ["CSRFError", "CSRF_MESSAGE", "Guards", "SECURITY_HEADERS", "install", "safe_next",
           "valid_rate"]
