"""SQLite plumbing of the coordinator store: its database (on :mod:`models.core.sqlitedb`,
shared with the appliance's store) and the argument checks the store's methods share.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

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


def number(value: Any, what: str, lo: float, hi: float = math.inf,
           integer: bool = False) -> Any:
    """``value`` as int/float if it is a finite number in [lo, hi] (never a bool)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{what} must be a{'n integer' if integer else ' number'} "
                         f"in [{lo}, {hi}]")
    return int(value) if integer else float(value)


def optional_int(value: Any, what: str) -> int | None:
    """None, or ``value`` as an int >= 0."""
    return None if value is None else number(value, what, 0, integer=True)


def text(value: Any, what: str, max_len: int = 1024, allow_empty: bool = False) -> str:
    """``value`` if it is a string of at most ``max_len`` chars (non-empty unless
    ``allow_empty``), else InputError."""
    if not isinstance(value, str) or len(value) > max_len or not (value or allow_empty):
        raise InputError(f"{what} must be a {'' if allow_empty else 'non-empty '}string "
                         f"of at most {max_len} chars")
    return value


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
