"""Settings dataclasses from defaults, a TOML file, the environment and overrides.

Shared by the appliance and the coordinator (both depend on ``models``): each declares
a dataclass of typed fields and gets the same precedence and the same clear errors.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def user_data_dir(name: str) -> Path:
    """``$XDG_DATA_HOME/name`` (default ``~/.local/share/name``): a per-user data folder.

    The ``<PREFIX>DATA_DIR``-style environment variables are applied by :func:`load`.
    """
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / name


def _coerce(name: str, kind: str, value: object, error: type[Exception]) -> object:
    """``value`` as the field's annotated type (annotations are strings here)."""
    try:
        if "Path" in kind:
            if value in (None, ""):
                if "None" not in kind:  # a required folder or file
                    raise ValueError(value)
                return None
            return Path(os.path.expanduser(str(value)))
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in _TRUE + _FALSE:
                    raise ValueError(value)
                return value.lower() in _TRUE
            if not isinstance(value, bool):
                raise TypeError(value)
            return value
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float)
                                           and not value.is_integer()):
                raise TypeError(value)
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        if kind == "list[str]":  # from the environment: comma-separated
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in (value if isinstance(value, list) else [value])]
        return str(value)
    except (TypeError, ValueError):
        raise error(f"{name}: {value!r} is not a valid {kind}") from None


def load(cls: type[T], env_prefix: str, config: Path | None, overrides: dict,
         error: type[Exception]) -> T:
    """Defaults < TOML ``config`` < ``<env_prefix><NAME>`` env < non-None ``overrides``.

    Unknown keys raise ``error`` (a typo must not silently fall back to a default); the
    result's ``validate()`` is called when it has one.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    if config is not None:
        try:
            values.update(tomllib.loads(Path(config).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise error(f"config file {config}: {exc}") from None
    for name in fields:
        env = os.environ.get(f"{env_prefix}{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"unknown setting(s): {', '.join(unknown)}")
    settings = cls(**{k: _coerce(k, str(fields[k].type), v, error)
                      for k, v in values.items()})
    validate = getattr(settings, "validate", None)
    return validate() if validate else settings
