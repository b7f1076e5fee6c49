"""Account rules shared by the CLI and the web: passwords, API tokens, the first-run setup
code, sign-in throttling and ending a user's sessions.

Only hashes are stored: SHA-256 for tokens and the setup code (random, long), Werkzeug's
salted hash for passwords. State lives in an :class:`~device.store.base.AccountStore`.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import datetime, timezone

from werkzeug.security import check_password_hash, generate_password_hash

from device.exc import InputError
from device.store.base import MAX_NAME, AccountStore, User

MIN_PASSWORD = 10
TOKEN_PREFIX = "ne_"
SETUP_CODE_KEY = "setup_code_sha256"
SESSIONS_AFTER = "sessions_after:"  # + user name: sessions begun before then have ended
# A token's last use is recorded to this many seconds: a write (and its fsync) on every
# API request would cost as much as storing the upload.
TOKEN_USE_RESOLUTION_S = 60.0


class TooManyAttempts(Exception):
    """Too many failed sign-ins for a user name from one address within the window."""


def hash_token(token: str) -> str:
    """SHA-256 of an API token or setup code: only hashes are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """A salted hash of a new password; InputError if it is too short."""
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password must be at least {MIN_PASSWORD} characters")
    return generate_password_hash(password)


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
    accounts.add_user(name, "admin", hash_password(password))
    accounts.set_setting(SETUP_CODE_KEY, "")


def _throttle_key(name: str, address: str | None) -> str:
    # A longer name is never a user, and cut there the key keeps within the store's limit.
    return f"{name[:MAX_NAME]}|{address}"


def sign_in(accounts: AccountStore, name: str, password: str, address: str | None, *,
            attempts: int, window_s: float) -> User | None:
    """The user if ``name`` and ``password`` match an enabled account, else None (the
    failure counts against ``name`` from ``address``).

    Raises TooManyAttempts, before the password is checked, after ``attempts`` failures
    within ``window_s`` seconds.
    """
    key = _throttle_key(name, address)
    if accounts.recent_failures(key, time.time() - window_s) >= attempts:
        raise TooManyAttempts(name)
    user = accounts.get_user(name) if name else None
    if user and not user.disabled and check_password_hash(user.password_hash, password):
        accounts.clear_failures(key)
        return user
    accounts.record_login_failure(key, time.time())
    return None


def end_sessions(accounts: AccountStore, name: str) -> None:
    """End the user's open sessions and lift their sign-in lockout: after a password
    reset, or when the account is disabled or enabled again."""
    accounts.set_setting(SESSIONS_AFTER + name, repr(time.time()))
    accounts.clear_failures(_throttle_key(name, ""), prefix=True)


def session_valid(accounts: AccountStore, name: str, since: float) -> bool:
    """Whether a session of ``name`` begun at ``since`` still holds: the user exists, is
    enabled, and their sessions were not ended after it began."""
    user = accounts.get_user(name)
    ended = float(accounts.get_setting(SESSIONS_AFTER + name) or 0)
    return user is not None and not user.disabled and since >= ended
