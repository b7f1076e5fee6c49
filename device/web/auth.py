"""Accounts on the web: login/logout, first-run setup, CSRF, API tokens, throttling."""
from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from typing import Callable
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, abort, flash, g, redirect, render_template, request,
                   session, url_for)

from device import accounts as rules
from device.web import services

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

# Endpoints reachable without a session (setup redirects everything else until done).
PUBLIC = {"auth.login", "auth.setup", "health.healthz", "health.metrics", "static"}


def _start_session(name: str, role: str) -> None:
    session.clear()
    session.permanent = True
    session["user"], session["role"], session["since"] = name, role, time.time()


def init_app(app: Flask) -> None:
    @app.before_request
    def _guard():
        if request.endpoint in PUBLIC or request.path.startswith("/api/"):
            return None
        if services().accounts.count_users() == 0:
            return redirect(url_for("auth.setup"))
        if request.method == "POST":
            if not _signed_in():  # an expired session: sign in, then back to the page
                if request.endpoint != "auth.logout":
                    flash("Your session has ended; sign in again, then repeat the action.")
                return redirect(url_for("auth.login", next=_referring_page()))
            check_csrf()
        return None

    @app.context_processor
    def _inject():
        return {"csrf_token": csrf_token, "current_user": session.get("user"),
                "current_role": session.get("role")}


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        abort(400, "missing or invalid CSRF token; reload the page and try again")


def _signed_in() -> bool:
    """A session of a user who still exists and is not disabled (a disabled account's
    sessions end at its next request). Checked once per request: a POST asks twice."""
    if "signed_in" not in g:
        g.signed_in = _session_valid()
    return g.signed_in


def _session_valid() -> bool:
    name = session.get("user")
    if not name:
        return False
    if not rules.session_valid(services().accounts, name, session.get("since", 0)):
        session.clear()
        return False
    return True


def _referring_page() -> str | None:
    """Path and query of the page a form was sent from, if it is this site's."""
    parts = urlsplit(request.referrer or "")
    if parts.netloc != request.host or not parts.path:
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def login_required(view: Callable) -> Callable:
    """A browser session, or an API token in ``Authorization: Bearer`` (for file URLs)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if _signed_in() or token_user(required=False):
            return view(*args, **kwargs)
        here = request.full_path.rstrip("?")  # the query too: a filtered list stays filtered
        return redirect(url_for("auth.login", next=here))
    return wrapped


def admin_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if session.get("role") != "admin":
            abort(403, "administrators only")
        return view(*args, **kwargs)
    return login_required(wrapped)


def token_user(required: bool = True) -> str | None:
    """The user behind a valid ``Authorization: Bearer TOKEN``; 401 when required."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and len(header) > 7:
        user = rules.token_user(services().accounts, header[7:].strip())
        if user is not None:
            g.api_user = user.name
            return user.name
    if required:
        abort(401, "missing or invalid API token")
    return None


def current_user() -> str:
    return session.get("user") or g.get("api_user") or "unknown"


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html")
    check_csrf()
    svc = services()
    name = request.form.get("username", "").strip()
    settings = svc.settings
    try:
        user = rules.sign_in(svc.accounts, name, request.form.get("password", ""),
                             request.remote_addr, attempts=settings.login_attempts,
                             window_s=settings.login_window_s)
    except rules.TooManyAttempts:
        svc.telemetry.record_error("login_throttled")
        minutes = -(-settings.login_window_s // 60)
        return render_template(
            "login.html", username=name,
            error=f"Too many failed attempts for this user name; try again in "
                  f"{minutes} minutes, or ask an administrator to reset the password."), 429
    if user is None:
        svc.telemetry.record_error("login_failed")
        return render_template("login.html", username=name,
                               error="Wrong user name or password."), 401
    _start_session(user.name, user.role)
    return redirect(_safe_next(request.args.get("next")))


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never an open redirect."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("upload.index")


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.login"))


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """One-time creation of the first admin, guarded by the code in the server log."""
    accounts = services().accounts
    if accounts.count_users() > 0:
        return redirect(url_for("auth.login"))
    if request.method == "GET":
        return render_template("setup.html")
    check_csrf()
    code = request.form.get("setup_code", "").strip()
    if not rules.setup_code_matches(accounts, code):
        return render_template("setup.html", error="Wrong setup code (see the server "
                               "log)."), 403
    name = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        return render_template("setup.html", error="Passwords differ.", setup_code=code,
                               username=name), 400
    rules.add_first_admin(accounts, name, password)
    logger.info("first admin account created")
    _start_session(name, "admin")
    return redirect(url_for("upload.index"))
