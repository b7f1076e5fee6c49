"""Coordinator web app: ``create_app(settings, services)`` with blueprints."""
from __future__ import annotations

import logging
from datetime import timedelta

from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from coordinator.exc import CoordinatorError
from models.core import webguard

logger = logging.getLogger(__name__)


def services():
    return current_app.extensions["neuroedge_coordinator"]


def create_app(settings, svc, secret_key: str) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secret_key, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=settings.cookie_secure,
                      SESSION_COOKIE_NAME="neuroedge_coordinator",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
                      MAX_CONTENT_LENGTH=int(settings.max_update_mb * 2**20) + 65536)
    app.extensions["neuroedge_coordinator"] = svc
    from coordinator.api import auth, bundles, dashboard, updates
    guards = webguard.install(app)
    auth.init_app(app)
    for module in (updates, bundles, dashboard):
        app.register_blueprint(module.bp)
    for module in (updates, bundles):  # devices: bearer tokens, no cookies
        guards.csrf.exempt(module.bp)
    auth.limit(app, guards.limiter, settings.api_rate_limit)

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        svc.telemetry.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.errorhandler(CoordinatorError)
    def _error(exc: CoordinatorError):
        body = {"error": str(exc)[:500]}  # messages may quote what was sent
        if getattr(exc, "reason", None):
            body["reason"] = exc.reason
        return _respond(body, exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if exc.response is not None:  # already answered (a sign-in lockout page)
            return exc.response
        if isinstance(exc, webguard.CSRFError):
            return _respond({"error": webguard.CSRF_MESSAGE}, 400)
        message = "update too large" if exc.code == 413 else (exc.description or exc.name)
        return _respond({"error": message}, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unexpected error on %s", request.path)
        return _respond({"error": "internal error"}, 500)

    return app


def _respond(body: dict, status: int):
    if request.path.startswith("/api/") or request.path == "/healthz":
        return jsonify(body), status
    return render_template("error.html", message=body["error"], status=status), status
