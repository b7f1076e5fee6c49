"""Accounts in the browser, for administrators: add users, reset a password, disable and
enable, create and revoke API tokens (a new token is shown once, on its own page). Every
action is a CSRF-protected POST and is written to the log with who did it."""
from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from device.accounts import end_sessions, hash_password, new_api_token, reset_password
from device.exc import InputError
from device.web import services
from device.web.auth import admin_required, current_user

logger = logging.getLogger(__name__)
bp = Blueprint("accounts", __name__, url_prefix="/admin/accounts")


def _new_password(name: str) -> str:
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        raise InputError("the two passwords differ")
    return hash_password(password, name)  # InputError names the rule it breaks


def _back(message: str):
    flash(message)
    return redirect(url_for("admin.index") + "#accounts", 303)


@bp.route("/users", methods=["POST"])
@admin_required
def add_user():
    name, role = request.form.get("name", "").strip(), request.form.get("role", "")
    services().accounts.add_user(name, role, _new_password(name))
    logger.info("user %s (%s) added by %s", name, role, current_user())
    return _back(f"User {name} ({role}) added.")


@bp.route("/password", methods=["POST"])
@admin_required
def password():
    name = request.form.get("user", "")
    accounts = services().accounts
    if accounts.get_user(name) is None:
        abort(404, "no such user")
    revoked = reset_password(accounts, name, _new_password(name))
    logger.info("password of %s reset by %s; %d API token(s) revoked", name, current_user(),
                revoked)
    return _back(f"Password of {name} changed; their sessions ended and {revoked} API "
                 f"token(s) were revoked.")


@bp.route("/users/<name>/<action>", methods=["POST"])
@admin_required
def set_enabled(name: str, action: str):
    if action not in ("disable", "enable"):
        abort(404)
    if name == current_user():
        raise InputError("you cannot disable or enable your own account")
    accounts = services().accounts
    accounts.set_disabled(name, action == "disable")
    end_sessions(accounts, name)
    logger.info("user %s %sd by %s", name, action, current_user())
    return _back(f"User {name} {action}d.")


@bp.route("/tokens", methods=["POST"])
@admin_required
def create_token():
    name, user = request.form.get("name", "").strip(), request.form.get("user", "")
    token = new_api_token(services().accounts, name, user)
    logger.info("API token %s for %s created by %s", name, user, current_user())
    # Shown on this page only: never stored in the session (as a flash would be) or cached.
    page = render_template("token.html", name=name, user=user, token=token)
    return page, 201, {"Cache-Control": "no-store"}


@bp.route("/tokens/<name>/revoke", methods=["POST"])
@admin_required
def revoke_token(name: str):
    services().accounts.revoke_token(name)
    logger.info("API token %s revoked by %s", name, current_user())
    return _back(f"API token {name} revoked.")
