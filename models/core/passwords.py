"""Passwords of both web apps (appliance accounts, coordinator administrators): the rules
a new one must meet, and its hash.

The rules follow NIST SP 800-63B (5.1.1.2): at least :data:`MIN_LENGTH` characters, no
composition rules, and not a value that is commonly used, repetitive or sequential, or
made from the account's own name. The list of common passwords ships in the package
(``common_passwords.txt.gz``: the 8,359 entries of eight characters or more of Django's
``CommonPasswordValidator`` list, BSD licence), lower-cased.

Hashes are argon2id (argon2-cffi) with OWASP's parameters (19 MiB, 2 passes, 1 lane:
about 50 ms on a laptop core, a few hundred on a Pi). Hashes of older software (Werkzeug's
scrypt or pbkdf2) still verify, and :func:`verify` says when a hash should be replaced.
"""
from __future__ import annotations

import functools
import gzip
import secrets
import unicodedata
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from werkzeug.security import check_password_hash

MIN_LENGTH = 10
MAX_LENGTH = 256  # NIST: allow at least 64; longer only costs the hash more
COMMON_PASSWORDS = Path(__file__).with_name("common_passwords.txt.gz")
SERVICE_WORDS = ("neuroedge",)
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


class WeakPasswordError(ValueError):
    """A new password breaks a rule; the message says which, in words for the user."""


@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased (read once)."""
    with gzip.open(COMMON_PASSWORDS, "rt", encoding="utf-8") as fh:
        return frozenset(line.strip().lower() for line in fh if line.strip())


def _sequential(text: str) -> bool:
    """Whether every character is the previous one's code point plus (or minus) one."""
    steps = {ord(b) - ord(a) for a, b in zip(text, text[1:])}
    return len(steps) == 1 and steps <= {1, -1}


def check_password(password: str, user: str = "") -> str:
    """``password`` normalised (NFKC), if it meets the rules; else WeakPasswordError.

    Parameters
    ----------
    password : str
        The new password.
    user : str
        The account's name: a password that contains it is refused.
    """
    if not isinstance(password, str):
        raise WeakPasswordError("password must be text")
    password = unicodedata.normalize("NFKC", password)
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"password must be at most {MAX_LENGTH} characters")
    folded = password.casefold()
    if folded in common_passwords() or folded.strip() in common_passwords():
        raise WeakPasswordError("password is on the list of common passwords; choose "
                                "another (a few unrelated words make a good one)")
    name = unicodedata.normalize("NFKC", user or "").casefold().strip()
    if len(name) >= 3 and name in folded or any(w in folded for w in SERVICE_WORDS):
        raise WeakPasswordError("password must not contain the user name or the name of "
                                "this service")
    if len(set(folded)) < 4 or _sequential(folded):
        raise WeakPasswordError("password is too easy to guess: repeated or sequential "
                                "characters; a few unrelated words make a good one")
    return password


def hash_password(password: str, user: str = "") -> str:
    """The argon2id hash of a new password that meets :func:`check_password`."""
    return _HASHER.hash(check_password(password, user))


def _legacy(stored: str) -> bool:
    return stored.startswith(("scrypt:", "pbkdf2:"))


def verify(stored: str, password: str) -> tuple[bool, bool]:
    """Whether ``password`` matches the hash ``stored``, and whether the hash should be
    replaced (an older scheme or weaker parameters): ``(ok, rehash)``.

    Sign-in checks the password a user typed, which older software may not have
    normalised: it is tried as typed, then NFKC-normalised.
    """
    candidates = dict.fromkeys([password, unicodedata.normalize("NFKC", password)])
    if _legacy(stored):
        return any(check_password_hash(stored, p) for p in candidates), True
    for candidate in candidates:
        try:
            _HASHER.verify(stored, candidate)
        except (VerificationError, InvalidHashError):
            continue
        return True, _HASHER.check_needs_rehash(stored)
    return False, False


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(16))


def waste_a_verification(password: str) -> None:
    """Take as long as :func:`verify` on a real hash, for a user who does not exist (or
    is disabled): the answer must not tell which names are accounts."""
    verify(_dummy_hash(), password)


def rehash(password: str) -> str:
    """The argon2id hash of a password that has just verified (no rules: it is the user's
    existing password, upgraded at sign-in)."""
    return _HASHER.hash(password)
