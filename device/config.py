"""Appliance settings: defaults, a TOML file, then environment; validated with clear errors.

Secrets (the session key) come from the environment or a file in the data folder,
never from the repository.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from device.exc import ConfigError
from models.core import configfile
from models.core.files import create_once
from models.core.head_training import TrainConfig
from models.core.signing import load_public_key

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_BUNDLE = MODELS_DIR / "default_bundle"
DEV_PUBLIC_KEY = MODELS_DIR / "dev_keys" / "dev_signing.key.pub"


@dataclass
class Settings:
    """Every tunable of the appliance; see README "Configuration" for each."""

    data_dir: Path = field(default_factory=lambda: configfile.user_data_dir("neuroedge"))
    host: str = "127.0.0.1"
    port: int = 8080
    # The address of the TLS terminator (nginx) in front: its X-Forwarded-For and
    # X-Forwarded-Proto are believed (client address for sign-in throttling), anyone
    # else's are dropped. "" = no proxy.
    trusted_proxy: str = ""
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
    api_rate_limit: str = "1200 per minute"  # per API token (Flask-Limiter); "" for none
    secret_key: str = field(default="", repr=False)
    # Federation (empty coordinator_url: this appliance works alone). Transport "http"
    # talks to `python -m coordinator serve`; "flower" takes rounds from a Flower
    # SuperNode on this machine (see README "Flower transport"), which runs the ClientApp
    # on this data folder; the appliance then only serves what that installed.
    transport: str = "http"
    coordinator_url: str = ""
    device_id: str = ""
    device_token: str = field(default="", repr=False)
    coordinator_ca: Path | None = None   # CA certificate that signed the coordinator's TLS
    coordinator_timeout_s: float = 30.0  # connect, each read; a JSON answer in twice this
    sync_interval_s: float = 900.0       # outbox flush + bundle check
    keep_file_names: bool = True         # keep an upload's file name with its case (Pi only)
    train_min_new_cases: int = 8         # newly confirmed cases that start a training run
    train_epochs: int = 20               # most passes over the cases in one training run
    train_rounds_per_cases: int = 5      # runs on one set of cases, each from a newer version
    train_prox_mu: float = 0.01          # FedProx pull towards the head the run starts from
    gate_margin: float = 0.05            # refuse a bundle this much worse on local cases
    personalise: bool = False            # serve this clinic's own head where it does better
    update_encoding: str = "int8"        # or "float32"
    update_topk: float = 0.0             # > 0: send only this fraction of the delta
    dp_clip: float = 0.0                 # > 0 with dp_noise: local DP on the delta
    dp_noise: float = 0.0
    bundle_poll_s: float = 5.0           # transport "flower": adopt a newly installed bundle

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
        for key in self.trusted_keys:
            try:
                load_public_key(key)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"trusted_keys: {key!r:.200}: {exc}") from None
        if self.coordinator_ca is not None and not self.coordinator_ca.is_file():
            raise ConfigError(f"coordinator_ca: no file {self.coordinator_ca}")
        if self.login_attempts < 1 or self.login_window_s < 1:
            raise ConfigError("login_attempts and login_window_s must be positive")
        if self.api_rate_limit:
            from models.core.webguard import valid_rate  # (Flask only when configured)
            if not valid_rate(self.api_rate_limit):
                raise ConfigError(f"api_rate_limit: {self.api_rate_limit!r} is not a rate "
                                  "such as '600 per minute'")
        if self.transport not in ("http", "flower"):
            raise ConfigError(f"transport: {self.transport!r} is not 'http' or 'flower'")
        if self.transport == "flower" and not self.device_id:
            raise ConfigError("transport 'flower' needs device_id (the coordinator's name "
                              "for this appliance)")
        if self.personalise and self.transport == "flower":
            raise ConfigError("personalise: not with transport 'flower' (its ClientApp trains "
                              "in another process, which cannot choose what this one serves)")
        if self.bundle_poll_s <= 0:
            raise ConfigError("bundle_poll_s must be positive")
        if self.coordinator_url and not (self.device_id and self.device_token):
            raise ConfigError("coordinator_url needs device_id and device_token")
        if self.coordinator_url and not self.coordinator_url.startswith(("http://",
                                                                         "https://")):
            raise ConfigError(f"coordinator_url: {self.coordinator_url!r} is not http(s)")
        if self.update_encoding not in ("int8", "float32"):
            raise ConfigError("update_encoding must be int8 or float32")
        if not 0 < self.coordinator_timeout_s <= 600:
            raise ConfigError(f"coordinator_timeout_s: {self.coordinator_timeout_s} not in "
                              "(0, 600]")
        try:
            self.train_config()
        except ValueError as exc:
            raise ConfigError(f"train_epochs/train_prox_mu: {exc}") from None
        if not isinstance(self.train_rounds_per_cases, int) or \
                not 1 <= self.train_rounds_per_cases <= 100:
            raise ConfigError("train_rounds_per_cases must be an integer from 1 to 100")
        if not 0 <= self.update_topk < 1 or self.sync_interval_s <= 0:
            raise ConfigError("update_topk must be in [0, 1) and sync_interval_s positive")
        return self

    def train_config(self) -> TrainConfig:
        """The head trainer's settings for this appliance."""
        return TrainConfig(epochs=self.train_epochs, prox_mu=self.train_prox_mu)


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Defaults < TOML ``config`` < ``NEUROEDGE_<NAME>`` env < non-None ``overrides``."""
    return configfile.load(Settings, "NEUROEDGE_", config, overrides, ConfigError)


def ensure_secret_key(settings: Settings) -> str:
    """The session signing key: from settings/env, else a 0600 file in the data folder."""
    if settings.secret_key:
        return settings.secret_key
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = create_once(settings.data_dir / "secret_key", secrets.token_hex(32).encode())
    settings.secret_key = key.decode().strip()
    return settings.secret_key
