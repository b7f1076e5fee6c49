"""Who is talking: devices by bearer token, administrators by session (dashboard)."""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from typing import Callable

from flask import (Blueprint, Flask, abort, g, redirect, render_template, request, session,
                   url_for)
from werkzeug.security import check_password_hash

from coordinator.api import services
from coordinator.exc import AuthError

bp = Blueprint("auth", __name__)


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


def admin_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not session.get("admin"):
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)
    return wrapped


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def _csrf() -> None:
        if request.method == "POST" and not request.path.startswith("/api/"):
            sent = request.form.get("csrf_token", "")
            if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
                abort(400, "missing or invalid CSRF token; reload the page")

    @app.context_processor
    def _inject():
        return {"csrf_token": csrf_token, "admin": session.get("admin")}


LOGIN_ATTEMPTS, LOGIN_WINDOW_S = 5, 900


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        store = services().store
        name = request.form.get("username", "")
        key = f"{name}|{request.remote_addr}"
        if store.recent_failures(key, time.time() - LOGIN_WINDOW_S) >= LOGIN_ATTEMPTS:
            return render_template("login.html", error="Too many attempts; wait."), 429
        admin = store.get_admin(name) if name else None
        if admin and check_password_hash(admin.password_hash, request.form.get("password", "")):
            store.clear_failures(key)
            session.clear()
            session["admin"] = admin.name
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/") and not target.startswith("//")
                            else url_for("dashboard.index"))
        store.record_login_failure(key, time.time())
        return render_template("login.html", error="Wrong name or password."), 401
    return render_template("login.html")


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))
