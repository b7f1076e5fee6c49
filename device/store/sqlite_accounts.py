"""SQLite implementation of the account store: users, token hashes, web sessions and
settings, in the appliance database shared with the case store."""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from device.exc import InputError, NotFoundError
from device.store.base import ROLES, AccountStore, Token, User, check_name
from device.store.db import DB_NAME, Database, number, text
from models.core.sqlitedb import now_iso

log = logging.getLogger(__name__)


def _user(row: sqlite3.Row) -> User:
    return User(row["name"], row["role"], row["password_hash"], row["created_at"],
                bool(row["disabled"]))


def _token(row: sqlite3.Row) -> Token:
    return Token(row["name"], row["user"], row["created_at"], row["last_used_at"])


class SQLiteAccountStore(AccountStore):
    """Users, token hashes, web sessions and settings in ``data_dir/neuroedge.db``.

    Pass ``db`` to share one :class:`Database` with :class:`SQLiteCaseStore`.
    """

    def __init__(self, data_dir: Path, *, db: Database | None = None) -> None:
        self._db = (db if db is not None else Database(Path(data_dir) / DB_NAME)).acquire()
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

    def revoke_user_tokens(self, user: str) -> int:
        with self._db.tx() as conn:
            count = conn.execute("DELETE FROM tokens WHERE user = ?", (user,)).rowcount
        log.info("revoked %d API token(s) of user %s", count, user)
        return count

    def add_session(self, sid_hash: str, user: str, expires_at: float) -> None:
        text(sid_hash, "session hash", 64)
        expires_at = number(expires_at, "expires_at", 0)
        with self._db.tx() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                raise NotFoundError(f"no such user: {user!r:.80}")
            conn.execute("DELETE FROM web_sessions WHERE expires_at < ?", (time.time(),))
            conn.execute("INSERT INTO web_sessions (sid_hash, user, expires_at) "
                         "VALUES (?, ?, ?)", (sid_hash, user, expires_at))

    def session_user(self, sid_hash: str, now: float) -> str | None:
        rows = self._db.read("SELECT user FROM web_sessions WHERE sid_hash = ? AND "
                             "expires_at > ?", (sid_hash, now))
        return rows[0][0] if rows else None

    def end_session(self, sid_hash: str) -> None:
        with self._db.tx() as conn:
            conn.execute("DELETE FROM web_sessions WHERE sid_hash = ?", (sid_hash,))

    def end_user_sessions(self, user: str) -> int:
        with self._db.tx() as conn:
            return conn.execute("DELETE FROM web_sessions WHERE user = ?", (user,)).rowcount

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

    def setting_once(self, key: str, value: str) -> str:
        text(key, "setting key", 128)
        with self._db.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
                         (key, text(value, "setting value", 4096)))
            return conn.execute("SELECT value FROM settings WHERE key = ?",
                                (key,)).fetchone()[0]

    def close(self) -> None:
        if not self._closed:  # idempotent: release the shared database once
            self._closed = True
            self._db.release()
