"""Appliance settings: defaults, a TOML file, then environment; validated with clear errors.

Secrets (the session key) come from the environment or a file in the data folder,
never from the repository.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from device.exc import ConfigError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_BUNDLE = MODELS_DIR / "default_bundle"
DEV_PUBLIC_KEY = MODELS_DIR / "dev_keys" / "dev_signing.key.pub"


def default_data_dir() -> Path:
    """``$NEUROEDGE_DATA_DIR``, else a per-user folder (XDG data home)."""
    env = os.environ.get("NEUROEDGE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "neuroedge"


@dataclass
class Settings:
    """Every tunable of the appliance; see README "Configuration" for each."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    bundle: Path = DEFAULT_BUNDLE
    trusted_keys: list[str] = field(default_factory=lambda: [str(DEV_PUBLIC_KEY)])
    predictor: str = "litert"
    threads: int = 8                 # waitress request threads
    max_upload_mb: float = 20.0
    gpio: bool = True                # False: no LED/button (NullIndicator)
    led_pin: str = "GPIO17"
    button_pin: str = "GPIO27"
    hold_seconds: float = 3.0
    camera: bool = True              # offered only if picamera2 is importable
    cookie_secure: bool = False      # set True when served behind HTTPS
    login_attempts: int = 5          # failures allowed per user+address ...
    login_window_s: int = 900        # ... within this many seconds
    secret_key: str = field(default="", repr=False)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def validate(self) -> "Settings":
        """Check ranges and paths; raise :class:`ConfigError` naming the setting."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: {self.port} is not a TCP port (1-65535)")
        if not 0 < self.max_upload_mb <= 200:
            raise ConfigError(f"max_upload_mb: {self.max_upload_mb} not in (0, 200]")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"threads: {self.threads} not in 1..64")
        if not (self.bundle / "manifest.json").is_file():
            raise ConfigError(f"bundle: no manifest.json in {self.bundle}")
        if not self.trusted_keys:
            raise ConfigError("trusted_keys: at least one public key is needed")
        if self.login_attempts < 1 or self.login_window_s < 1:
            raise ConfigError("login_attempts and login_window_s must be positive")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: object) -> object:
    kind = _FIELDS[name].type
    try:
        if kind == "Path":
            return Path(os.path.expanduser(str(value)))
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind == "int":
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        if kind == "list[str]":
            return [str(v) for v in (value if isinstance(value, list) else [value])]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Defaults, then the TOML ``config`` file, then ``NEUROEDGE_*`` env, then overrides.

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    values: dict[str, object] = {}
    if config is not None:
        try:
            values.update(tomllib.loads(Path(config).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config}: {exc}") from None
    for name in _FIELDS:
        env = os.environ.get(f"NEUROEDGE_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    settings = Settings(**{k: _coerce(k, v) for k, v in values.items()})
    return settings.validate()


def ensure_secret_key(settings: Settings) -> str:
    """The session signing key: from settings/env, else a 0600 file in the data folder."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    settings.secret_key = path.read_text().strip()
    return settings.secret_key
