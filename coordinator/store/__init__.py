"""Persistent state of the coordinator: devices, rounds, updates, bundles, audit, admins.

Import the interface from here; build the SQLite implementation in the composition root
(``SQLiteCoordinatorStore(state_dir)``, which runs ``recover()`` on open).
"""
from coordinator.store.base import (
    AUDIT_FIELDS, CLOSED_STATUSES, ROUND_STATUSES, Admin, AuditEvent, BundleRecord,
    CoordinatorStore, Device, Round, Update,
)
from coordinator.store.db import Database
from coordinator.store.sqlite import DB_NAME, UPDATES_DIR, SQLiteCoordinatorStore

__all__ = [
    "AUDIT_FIELDS", "CLOSED_STATUSES", "DB_NAME", "ROUND_STATUSES", "UPDATES_DIR", "Admin",
    "AuditEvent", "BundleRecord", "CoordinatorStore", "Database", "Device", "Round",
    "SQLiteCoordinatorStore", "Update",
]
