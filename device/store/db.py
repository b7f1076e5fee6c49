"""The appliance's SQLite database (``schema.sql``, one file shared by the case and
account stores), the argument checks both stores make, and cases from its rows."""
from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from device.exc import InputError, StoreError
from device.store.base import Case
from models.core import sqlitedb

DB_NAME = "neuroedge.db"
SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 1


class Database(sqlitedb.Database):
    """The appliance database (``schema.sql``); see :class:`models.core.sqlitedb.Database`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, SCHEMA_VERSION, StoreError)


# The argument checks of both stores, raising the appliance's InputError (400).
number = functools.partial(sqlitedb.check_number, error=InputError)
text = functools.partial(sqlitedb.check_text, error=InputError)


CASE_FIELDS = tuple(Case.__dataclass_fields__)  # also the ``cases`` table's columns


def case_from_row(row: sqlite3.Row) -> Case:
    """A Case from a database row with the :data:`CASE_FIELDS` columns."""
    values = {name: row[name] for name in CASE_FIELDS}
    return Case(**{**values, "uncertain": bool(values["uncertain"])})
