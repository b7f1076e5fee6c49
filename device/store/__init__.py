"""Persistent state of the appliance: cases + images, accounts, settings.

Import the interfaces from here; build the SQLite implementations in the composition
root (``SQLiteCaseStore(data_dir)``, ``SQLiteAccountStore(data_dir)``).
"""
from device.store.base import (
    EXPORT_FIELDS, ROLES, SOURCES, STATUSES, AccountStore, Case, CaseInfo, CaseStore, Token,
    User,
)
from device.store.db import Database
from device.store.sqlite import SQLiteCaseStore
from device.store.sqlite_accounts import SQLiteAccountStore

__all__ = [
    "EXPORT_FIELDS", "ROLES", "SOURCES", "STATUSES", "AccountStore", "Case", "CaseInfo",
    "CaseStore",
    "Database", "SQLiteAccountStore", "SQLiteCaseStore", "Token", "User",
]
