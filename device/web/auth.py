"""Accounts on the web: login/logout, first-run setup, API tokens, throttling.

Sessions live on the appliance (the cookie carries a random id, :mod:`device.accounts`),
so signing out ends them everywhere. CSRF is Flask-WTF's and throttling Flask-Limiter's
(:mod:`models.core.webguard`): sign-in failures per user name and address, and per
address; API requests per token.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from typing import Callable
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, abort, current_app, flash, g, redirect, render_template,
                   request, session, url_for)
from flask_limiter import Limiter
from itsdangerous import BadSignature

from device import accounts as rules
from device.exc import InputError
from device.web import services
from models.core.serving import Credential, bearer_token, cookie
from models.core.webguard import safe_next

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

# Endpoints reachable without a session (setup redirects everything else until done).
PUBLIC = {"auth.login", "auth.setup", "health.healthz", "health.metrics", "static"}


def _start_session(name: str, role: str) -> None:
    session.clear()
    # A browser-session cookie, without Expires: the server ends the session after its
    # lifetime (the signed cookie's age, the sessions table). An Expires set by a server
    # whose clock is behind the browser's would make the browser drop the cookie at once.
    session.permanent = False
    session["user"], session["role"] = name, role
    session["sid"] = rules.start_session(services().accounts, name)


def init_app(app: Flask) -> None:
    """The sign-in guard of every page; registered before CSRF protection, so a form
    sent after its session ended goes to sign-in rather than to a CSRF error."""
    @app.before_request
    def _guard():
        if request.endpoint in PUBLIC or request.path.startswith("/api/"):
            return None
        if services().accounts.count_users() == 0:
            return redirect(url_for("auth.setup"))
        if request.method == "POST" and not _signed_in():
            if request.endpoint != "auth.logout":  # an expired session: sign in, then back
                flash("Your session has ended; sign in again, then repeat the action.")
            return redirect(url_for("auth.login", next=_referring_page()))
        return None

    @app.context_processor
    def _inject():
        return {"current_user": session.get("user"), "current_role": session.get("role")}


def limit(app: Flask, limiter: Limiter) -> None:
    """Sign-in throttling: failures per user name and address (lifted when the account's
    sessions are ended by a reset, disable or enable), and ten times as many per address
    for all names."""
    failed = functools.partial(_status_is, 401)
    view = app.view_functions["auth.login"]
    for factor, key in ((1, _login_key), (10, _address_key)):
        view = limiter.limit(functools.partial(_login_limit, factor), key_func=key,
                             methods=["POST"], deduct_when=failed, on_breach=_locked_out)(view)
    app.view_functions["auth.login"] = view


def _status_is(status: int, response) -> bool:
    return response.status_code == status


def _login_limit(factor: int) -> str:
    settings = services().settings
    return f"{settings.login_attempts * factor} per {settings.login_window_s} seconds"


def _login_key() -> str:
    name = request.form.get("username", "").strip()[:256]
    epoch = rules.account_epoch(services().accounts, name) if name else ""
    digest = hashlib.sha256(f"{name}|{epoch}".encode()).hexdigest()[:32]
    return f"login|{digest}|{request.remote_addr}"


def _address_key() -> str:
    return f"login-address|{request.remote_addr}"


def _locked_out(_limit) -> object:
    svc = services()
    svc.telemetry.record_error("login_throttled")
    minutes = -(-svc.settings.login_window_s // 60)
    return current_app.make_response((render_template(
        "login.html", username=request.form.get("username", "").strip(),
        error=f"Too many failed attempts for this user name; try again in {minutes} "
              "minutes, or ask an administrator to reset the password."), 429))


def _signed_in() -> bool:
    """A live session of a user who still exists and is not disabled (a disabled
    account's sessions end at its next request). Checked once per request."""
    if "signed_in" not in g:
        g.signed_in = _session_valid()
    return g.signed_in


def _session_valid() -> bool:
    user = rules.session_user(services().accounts, session.get("sid", ""))
    if user is None or user.name != session.get("user"):
        session.clear()
        return False
    return True


def large_body_credential(app: Flask) -> Credential:
    """For :func:`models.core.serving.serve`: whether a request's headers carry a live
    session cookie or a valid API token, read-only (it runs on the I/O thread)."""
    serializer = app.session_interface.get_signing_serializer(app)
    name = app.config["SESSION_COOKIE_NAME"]
    max_age = int(app.permanent_session_lifetime.total_seconds())
    accounts = app.extensions["neuroedge"].accounts

    def credential(headers, _path: str) -> bool:
        token = bearer_token(headers)
        if token:
            return rules.token_valid(accounts, token)
        value = cookie(headers, name)
        try:
            data = serializer.loads(value, max_age=max_age) if value and serializer else {}
        except BadSignature:
            return False
        return rules.session_user(accounts, data.get("sid", "")) is not None
    return credential


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
    svc = services()
    name = request.form.get("username", "").strip()
    user = rules.sign_in(svc.accounts, name, request.form.get("password", ""))
    if user is None:
        svc.telemetry.record_error("login_failed")
        return render_template("login.html", username=name,
                               error="Wrong user name or password."), 401
    _start_session(user.name, user.role)
    return redirect(safe_next(request.args.get("next")) or url_for("upload.index"))


@bp.route("/logout", methods=["POST"])
def logout():
    rules.end_session(services().accounts, session.get("sid", ""))
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
    code = request.form.get("setup_code", "").strip()
    name = request.form.get("username", "").strip()
    if not rules.setup_code_matches(accounts, code):
        return render_template("setup.html", error="Wrong setup code (see the server "
                               "log).", username=name), 403
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        return render_template("setup.html", error="Passwords differ.", setup_code=code,
                               username=name), 400
    try:
        rules.add_first_admin(accounts, name, password)
    except InputError as exc:
        return render_template("setup.html", error=f"{exc}.", setup_code=code,
                               username=name), 400
    logger.info("first admin account created")
    _start_session(name, "admin")
    return redirect(url_for("upload.index"))
