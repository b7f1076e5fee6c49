"""The appliance's SQLite database (``schema.sql``, one file shared by the case and
account stores) and the argument checks both stores make."""
from __future__ import annotations

import functools
from pathlib import Path

from device.exc import InputError, StoreError
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
