"""SQLite plumbing of the coordinator store: its database (on :mod:`models.core.sqlitedb`,
shared with the appliance's store) and the argument checks the store's methods share.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from coordinator.exc import InputError, StoreError
from models.core import sqlitedb
from models.core.sqlitedb import now_iso  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 1
MAX_JSON_CHARS = 65536


class Database(sqlitedb.Database):
    """The coordinator database (``schema.sql``); see :class:`models.core.sqlitedb.Database`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, SCHEMA_VERSION, StoreError)


# The argument checks of the store, raising the coordinator's InputError (400).
number = functools.partial(sqlitedb.check_number, error=InputError)
text = functools.partial(sqlitedb.check_text, error=InputError)


def optional_int(value: Any, what: str) -> int | None:
    """None, or ``value`` as an int >= 0."""
    return None if value is None else number(value, what, 0, integer=True)


def to_json(value: Any, what: str) -> str:
    """``value`` as canonical JSON text if it is a dict with str keys that serialises
    without NaN/inf and within :data:`MAX_JSON_CHARS`, else InputError."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{what} must be a JSON object (dict with str keys)")
    try:
        out = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be JSON-serialisable without NaN/inf") from exc
    if len(out) > MAX_JSON_CHARS:
        raise InputError(f"{what} must serialise to at most {MAX_JSON_CHARS} chars")
    return out


def from_json(raw: str) -> dict[str, Any]:
    """A dict from a JSON column (written by :func:`to_json`)."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise StoreError("a JSON column does not hold an object")
    return value
