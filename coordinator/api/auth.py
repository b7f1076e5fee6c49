"""Who is talking: devices by bearer token, administrators by session (dashboard).

Dashboard sessions live on the coordinator (the cookie carries a random id), so signing
out ends them wherever the cookie was copied. CSRF is Flask-WTF's and throttling
Flask-Limiter's (:mod:`models.core.webguard`): sign-in failures per name and address,
device API requests per token.
"""
from __future__ import annotations

import functools
import hashlib
import secrets
import time
from typing import Callable

from flask import (Blueprint, Flask, current_app, g, redirect, render_template, request,
                   session, url_for)
from flask_limiter import Limiter

from coordinator.api import services
from coordinator.exc import AuthError
from models.core import passwords
from models.core.serving import Credential, bearer_token
from models.core.webguard import safe_next

bp = Blueprint("auth", __name__)
LOGIN_ATTEMPTS, LOGIN_WINDOW_S = 5, 900
SESSION_LIFETIME_S = 8 * 3600.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_device_token() -> str:
    return "nd_" + secrets.token_urlsafe(32)


def device_required(view: Callable) -> Callable:
    """A valid, non-revoked device token in ``Authorization: Bearer``; else 401."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        device = None
        if header.startswith("Bearer ") and len(header) > 7:
            device = services().store.device_by_token(hash_token(header[7:].strip()))
        if device is None:
            raise AuthError("unknown, revoked or missing device token")
        g.device = device
        return view(*args, **kwargs)
    return wrapped


def _session_admin() -> str | None:
    """The admin of this request's live session (once per request), else None."""
    if "admin" not in g:
        sid = session.get("sid", "")
        name = services().store.session_admin(hash_token(sid), time.time()) if sid else None
        g.admin = name if name is not None and name == session.get("admin") else None
        if g.admin is None:
            session.pop("admin", None)
    return g.admin


def admin_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if _session_admin() is None:
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)
    return wrapped


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _inject():
        return {"admin": _session_admin()}


def limit(app: Flask, limiter: Limiter, api_rate: str) -> None:
    """Sign-in failures per name and address; device API requests per token."""
    view = app.view_functions["auth.login"]
    app.view_functions["auth.login"] = limiter.limit(
        f"{LOGIN_ATTEMPTS} per {LOGIN_WINDOW_S} seconds", key_func=_login_key,
        methods=["POST"], deduct_when=lambda response: response.status_code == 401,
        on_breach=_locked_out)(view)
    if api_rate:
        for name in ("updates", "bundles"):
            limiter.limit(api_rate, key_func=_device_key)(app.blueprints[name])


def _login_key() -> str:
    name = request.form.get("username", "")[:256]
    return f"login|{hashlib.sha256(name.encode()).hexdigest()[:32]}|{request.remote_addr}"


def _device_key() -> str:
    token = request.headers.get("Authorization", "")
    return f"device|{hash_token(token)[:32]}" if token else f"address|{request.remote_addr}"


def _locked_out(_limit) -> object:
    return current_app.make_response((render_template(
        "login.html", error="Too many attempts; wait."), 429))


def large_body_credential(app: Flask) -> Credential:
    """For :func:`models.core.serving.serve`: a large body needs a valid device token
    (only updates are large); read-only, it runs on the I/O thread."""
    store = app.extensions["neuroedge_coordinator"].store

    def credential(headers, _path: str) -> bool:
        token = bearer_token(headers)
        return bool(token) and store.device_by_token(hash_token(token)) is not None
    return credential


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html")
    store = services().store
    name = request.form.get("username", "")
    password = request.form.get("password", "")
    admin = store.get_admin(name) if name else None
    ok, rehash = passwords.verify(admin.password_hash, password) if admin else (False, False)
    if admin is None:
        passwords.waste_a_verification(password)  # unknown names take as long
    if not ok or admin is None:
        return render_template("login.html", error="Wrong name or password."), 401
    if rehash:
        store.set_admin_password(admin.name, passwords.rehash(password))
    sid = secrets.token_urlsafe(32)
    store.add_session(hash_token(sid), admin.name, time.time() + SESSION_LIFETIME_S)
    session.clear()
    # A browser-session cookie, without Expires: the server ends the session after its
    # lifetime (the signed cookie's age, the sessions table). An Expires set by a server
    # whose clock is behind the browser's would make the browser drop the cookie at once.
    session.permanent = False
    session["admin"], session["sid"] = admin.name, sid
    return redirect(safe_next(request.args.get("next")) or url_for("dashboard.index"))


@bp.route("/logout", methods=["POST"])
def logout():
    sid = session.get("sid", "")
    if sid:
        services().store.end_session(hash_token(sid))
    session.clear()
    return redirect(url_for("auth.login"))
