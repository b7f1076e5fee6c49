"""Flask application factory: ``create_app(settings, services)``.

Services live in ``app.extensions["neuroedge"]``; blueprints reach them through
:func:`services`. One process owns the GPIO pins and the interpreter; requests run on
waitress threads.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from flask import Flask, current_app, g, request

from device.config import Settings, ensure_secret_key
from device.services import Services
from models.core import webguard

# Browser batch uploads may carry several slices (a series' folder dropped on the page: as
# many files as a .zip may hold), all together at most MAX_BATCH_FACTOR times the limit
# of one file; the API takes one (see api.py).
MAX_FILES_PER_UPLOAD = 400
MAX_BATCH_FACTOR = 20


def services() -> Services:
    """The :class:`device.services.Services` of the running app."""
    return current_app.extensions["neuroedge"]


def local_time(when: str | float | None) -> str:
    """A stored ISO-8601 time (or epoch seconds) as the appliance's local time:
    "2026-11-28 03:21 CET"; "—" for none."""
    try:
        t = datetime.fromtimestamp(when, timezone.utc) if isinstance(when, (int, float)) \
            else datetime.fromisoformat(when or "")
    except ValueError:
        return when or "—"
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone().strftime(
        "%Y-%m-%d %H:%M %Z")


def create_app(settings: Settings, svc: Services) -> Flask:
    """Build the web app around already-built services (the composition root's job)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=ensure_secret_key(settings),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes * MAX_BATCH_FACTOR,
        MAX_FORM_PARTS=MAX_FILES_PER_UPLOAD + 16,  # the files and the form's fields
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_NAME="neuroedge_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
    )
    app.extensions["neuroedge"] = svc

    from device.web import (accounts_admin, admin, api, auth, cases, errors, health, model,
                            studies, upload)
    auth.init_app(app)  # before CSRF: an expired session's form goes to sign-in
    guards = webguard.install(app)
    guards.csrf.exempt(api.bp)  # bearer tokens, no cookies
    for module in (auth, upload, cases, studies, api, health, admin, accounts_admin, model):
        app.register_blueprint(module.bp)
    auth.limit(app, guards.limiter)
    api.limit(guards.limiter, settings.api_rate_limit)

    app.add_template_filter(local_time, "when")
    app.jinja_env.globals["status_text"] = cases.STATUS_TEXT

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        svc.telemetry.requests.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            svc.telemetry.latency.labels(route).observe(time.perf_counter() - g.started)
        return response

    errors.register(app, settings, svc.telemetry, svc.status)
    return app
