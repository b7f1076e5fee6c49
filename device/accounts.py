"""Account rules shared by the CLI and the web: passwords, API tokens, the first-run setup
code, sign-in, web sessions and ending a user's sessions.

Only hashes are stored: SHA-256 for tokens, session ids and the setup code (random,
long), argon2id for passwords (:mod:`models.core.passwords`, which also holds the
password rules). State lives in an :class:`~device.store.base.AccountStore`. Throttling
of sign-ins is the web layer's (Flask-Limiter, :mod:`device.web.auth`).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import datetime, timezone

from device.exc import InputError
from device.store.base import AccountStore, User
from models.core import passwords

MIN_PASSWORD = passwords.MIN_LENGTH
TOKEN_PREFIX = "ne_"
SETUP_CODE_KEY = "setup_code_sha256"
# + user name: when the user's sessions were last ended (a reset, disable or enable); part
# of the sign-in throttling key, so that it also lifts a lockout.
SESSIONS_AFTER = "sessions_after:"
SESSION_LIFETIME_S = 8 * 3600.0
# A token's last use is recorded to this many seconds: a write (and its fsync) on every
# API request would cost as much as storing the upload.
TOKEN_USE_RESOLUTION_S = 60.0


def hash_token(token: str) -> str:
    """SHA-256 of an API token or setup code: only hashes are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str, user: str = "") -> str:
    """The hash of a new password for ``user``; InputError (400) with the reason if it
    breaks a rule of :func:`models.core.passwords.check_password`."""
    try:
        return passwords.hash_password(password, user)
    except passwords.WeakPasswordError as exc:
        raise InputError(str(exc)) from None


def new_api_token(accounts: AccountStore, name: str, user: str) -> str:
    """Create the API token ``name`` acting for ``user``; returns it (shown only once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    accounts.add_token(name, hash_token(token), user)
    return token


def token_user(accounts: AccountStore, token: str) -> User | None:
    """The enabled user behind an API token (its last use is recorded, to the minute),
    else None."""
    digest = hash_token(token)
    found = accounts.find_token(digest)
    user = accounts.get_user(found.user) if found is not None else None
    if user is None or user.disabled or found is None:
        return None
    if not _used_within(found.last_used_at, TOKEN_USE_RESOLUTION_S):
        accounts.touch_token(digest)
    return user


def token_valid(accounts: AccountStore, token: str) -> bool:
    """Whether a token acts for an enabled user, without recording its use (the server
    asks this before it reads a large body)."""
    found = accounts.find_token(hash_token(token)) if token else None
    user = accounts.get_user(found.user) if found is not None else None
    return user is not None and not user.disabled


def _used_within(last_used_at: str | None, seconds: float) -> bool:
    """Whether an ISO-8601 time is less than ``seconds`` ago."""
    try:
        then = datetime.fromisoformat(last_used_at or "")
    except ValueError:
        return False
    return 0 <= (datetime.now(timezone.utc) - then).total_seconds() < seconds


def new_setup_code(accounts: AccountStore) -> str:
    """Create (or replace) the one-time setup code; returns it for the server log."""
    code = secrets.token_urlsafe(9)
    accounts.set_setting(SETUP_CODE_KEY, hash_token(code))
    return code


def setup_code_matches(accounts: AccountStore, code: str) -> bool:
    """Whether ``code`` is the pending setup code (False once setup is done)."""
    expected = accounts.get_setting(SETUP_CODE_KEY) or ""
    return bool(expected) and hmac.compare_digest(hash_token(code), expected)


def add_first_admin(accounts: AccountStore, name: str, password: str) -> None:
    """Create the first administrator and retire the setup code."""
    accounts.add_user(name, "admin", hash_password(password, name))
    accounts.set_setting(SETUP_CODE_KEY, "")


def sign_in(accounts: AccountStore, name: str, password: str) -> User | None:
    """The user if ``name`` and ``password`` match an enabled account, else None.

    An unknown or disabled name costs one password verification too, so the time taken
    does not tell which names are accounts. A hash of older software (or weaker
    parameters) is replaced at a successful sign-in.
    """
    user = accounts.get_user(name) if name else None
    if user is None or user.disabled:
        passwords.waste_a_verification(password)
        return None
    ok, rehash = passwords.verify(user.password_hash, password)
    if not ok:
        return None
    if rehash:
        accounts.set_password(user.name, passwords.rehash(password))
    return user


def account_epoch(accounts: AccountStore, name: str) -> str:
    """When ``name``'s sessions were last ended ("" if never): sign-in throttling keys
    include it, so that a reset, disable or enable starts the count again."""
    return accounts.get_setting(SESSIONS_AFTER + name) or ""


def start_session(accounts: AccountStore, name: str) -> str:
    """A new web session of ``name``: its id (for the cookie; only its hash is stored)."""
    sid = secrets.token_urlsafe(32)
    accounts.add_session(hash_token(sid), name, time.time() + SESSION_LIFETIME_S)
    return sid


def session_user(accounts: AccountStore, sid: str) -> User | None:
    """The enabled user of a live session, else None (ended, expired or unknown)."""
    name = accounts.session_user(hash_token(sid), time.time()) if sid else None
    user = accounts.get_user(name) if name else None
    return user if user is not None and not user.disabled else None


def end_session(accounts: AccountStore, sid: str) -> None:
    """Sign-out: the session ends on the appliance, whatever copies of its cookie exist."""
    if sid:
        accounts.end_session(hash_token(sid))


def end_sessions(accounts: AccountStore, name: str) -> None:
    """End the user's open sessions and lift their sign-in lockout: after a password
    reset, or when the account is disabled or enabled again."""
    accounts.end_user_sessions(name)
    accounts.set_setting(SESSIONS_AFTER + name, repr(time.time()))


def reset_password(accounts: AccountStore, name: str, password_hash: str) -> int:
    """Set a new password, end the user's sessions and revoke their API tokens (whoever
    copied one knew the old password); returns the number of tokens revoked."""
    accounts.set_password(name, password_hash)
    revoked = accounts.revoke_user_tokens(name)
    end_sessions(accounts, name)
    return revoked
