"""SQLite implementation of the account store: users, token hashes, login failures and
settings, in the appliance database shared with the case store."""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from device.exc import InputError, NotFoundError
from device.store.base import ROLES, AccountStore, Token, User, check_name
from device.store.db import DB_NAME, Database, text
from models.core.sqlitedb import LoginFailures, now_iso

log = logging.getLogger(__name__)


def _user(row: sqlite3.Row) -> User:
    return User(row["name"], row["role"], row["password_hash"], row["created_at"],
                bool(row["disabled"]))


def _token(row: sqlite3.Row) -> Token:
    return Token(row["name"], row["user"], row["created_at"], row["last_used_at"])


class SQLiteAccountStore(AccountStore):
    """Users, token hashes, login failures and settings in ``data_dir/neuroedge.db``.

    Pass ``db`` to share one :class:`Database` with :class:`SQLiteCaseStore`.
    """

    def __init__(self, data_dir: Path, *, db: Database | None = None) -> None:
        self._db = (db if db is not None else Database(Path(data_dir) / DB_NAME)).acquire()
        self._failures = LoginFailures(self._db, InputError)
        self._closed = False

    def add_user(self, name: str, role: str, password_hash: str) -> None:
        check_name(name, "user name")
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}")
        text(password_hash, "password hash")
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise InputError("a user with that name already exists")
            conn.execute("INSERT INTO users (name, role, password_hash, created_at) "
                         "VALUES (?, ?, ?, ?)", (name, role, password_hash, now_iso()))
        log.info("added user %s (%s)", name, role)

    def get_user(self, name: str) -> User | None:
        rows = self._db.read("SELECT * FROM users WHERE name = ?", (name,))
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [_user(row) for row in self._db.read("SELECT * FROM users ORDER BY name")]

    def _update_user(self, name: str, column: str, value: Any) -> None:
        with self._db.tx() as conn:
            if conn.execute(f"UPDATE users SET {column} = ? WHERE name = ?",
                            (value, name)).rowcount == 0:
                raise NotFoundError(f"no such user: {name!r:.80}")

    def set_password(self, name: str, password_hash: str) -> None:
        self._update_user(name, "password_hash", text(password_hash, "password hash"))
        log.info("password of user %s changed", name)

    def set_disabled(self, name: str, disabled: bool) -> None:
        self._update_user(name, "disabled", int(bool(disabled)))
        log.info("user %s %s", name, "disabled" if disabled else "enabled")

    def count_users(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM users")[0][0])

    def add_token(self, name: str, token_hash: str, user: str) -> None:
        check_name(name, "token name")
        text(token_hash, "token hash")
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                raise NotFoundError(f"no such user: {user!r:.80}")
            if conn.execute("SELECT 1 FROM tokens WHERE name = ? OR token_hash = ?",
                            (name, token_hash)).fetchone():
                raise InputError("a token with that name or hash already exists")
            conn.execute("INSERT INTO tokens (name, token_hash, user, created_at) "
                         "VALUES (?, ?, ?, ?)", (name, token_hash, user, now_iso()))
        log.info("added API token %s for user %s", name, user)

    def find_token(self, token_hash: str) -> Token | None:
        rows = self._db.read("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    def touch_token(self, token_hash: str) -> None:
        with self._db.tx() as conn:
            conn.execute("UPDATE tokens SET last_used_at = ? WHERE token_hash = ?",
                         (now_iso(), token_hash))

    def revoke_token(self, name: str) -> None:
        with self._db.tx() as conn:
            if conn.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError("no such token")
        log.info("revoked API token %s", name)

    def list_tokens(self) -> list[Token]:
        return [_token(row) for row in
                self._db.read("SELECT * FROM tokens ORDER BY created_at, name")]

    def record_login_failure(self, key: str, now: float) -> None:
        self._failures.record(key, now)

    def recent_failures(self, key: str, since: float) -> int:
        return self._failures.recent(key, since)

    def clear_failures(self, key: str, prefix: bool = False) -> None:
        self._failures.clear(key, prefix)

    def get_setting(self, key: str) -> str | None:
        rows = self._db.read("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_setting(self, key: str, value: str) -> None:
        text(key, "setting key", 128)
        if not isinstance(value, str):
            raise InputError("setting value must be a string")
        with self._db.tx() as conn:
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (key, value))

    def close(self) -> None:
        if not self._closed:  # idempotent: release the shared database once
            self._closed = True
            self._db.release()
