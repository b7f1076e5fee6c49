"""Coordinator settings: defaults, a TOML file, ``NEUROEDGE_COORD_*`` env, CLI overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coordinator.exc import ConfigError
from models.core import configfile

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
METHODS = ("fedavg", "median", "trimmed_mean", "clipped_fedavg")


@dataclass
class Settings:
    """Every tunable of the coordinator; the README's "Coordinator" section explains each."""

    state_dir: Path = field(
        default_factory=lambda: configfile.user_data_dir("neuroedge-coordinator"))
    host: str = "127.0.0.1"
    port: int = 8443
    # The address of the TLS terminator (nginx) in front: its X-Forwarded-For and
    # X-Forwarded-Proto are believed (client address for sign-in throttling, https
    # links), anyone else's are dropped. "" = no proxy.
    trusted_proxy: str = ""
    cookie_secure: bool = False       # the dashboard's cookie only over https (the proxy)
    # No longer served: TLS is the terminator's job (an idle connection stalled
    # cheroot's TLS for every client, issue 26). Kept only to say so clearly.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    initial_bundle: Path = MODELS_DIR / "default_bundle"
    initial_weights: Path = MODELS_DIR / "default_float.weights.h5"
    data: Path | None = None          # the coordinator's own labelled images (never devices')
    min_updates: int = 2              # close a round as soon as this many arrived
    min_quorum: int = 1               # ... or at the deadline with at least this many
    round_deadline_s: float = 3600.0
    carry_over: bool = True           # under-quorum round: carry updates over (else expire)
    method: str = "fedavg"
    trim: float = 0.2
    max_norm: float = 50.0            # refuse updates whose delta norm is larger
    clip_norm: float = 5.0            # clipped_fedavg and DP clipping
    max_examples: int = 100_000
    max_staleness: int = 2            # versions an update's base may lag the latest
    sparsity: float = 0.0             # head pruning at publication (costs the clinics)
    publish_margin: float = 0.02      # max validation AUC/accuracy drop accepted
    dp_noise_multiplier: float = 0.0  # > 0 enables central DP (clipped mean + noise)
    dp_delta: float = 1e-5
    max_update_mb: float = 16.0
    api_rate_limit: str = "120 per minute"  # device API requests per token; "" for none
    threads: int = 8

    def validate(self) -> "Settings":
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: {self.port} is not a TCP port (1-65535)")
        if self.tls_cert is not None or self.tls_key is not None:
            raise ConfigError("tls_cert, tls_key: the coordinator no longer serves TLS "
                              "itself; terminate TLS in nginx in front of it and set "
                              "trusted_proxy (docs/operations.md, TLS)")
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r}; choose from {', '.join(METHODS)}")
        if not 1 <= self.min_quorum <= self.min_updates:
            raise ConfigError("need 1 <= min_quorum <= min_updates")
        if not 0 <= self.sparsity < 1 or not 0 <= self.trim < 0.5:
            raise ConfigError("sparsity must be in [0, 1) and trim in [0, 0.5)")
        if self.max_norm <= 0 or self.clip_norm <= 0 or self.round_deadline_s <= 0:
            raise ConfigError("max_norm, clip_norm and round_deadline_s must be positive")
        if not (self.initial_bundle / "manifest.json").is_file():
            raise ConfigError(f"initial_bundle: no manifest.json in {self.initial_bundle}")
        if self.api_rate_limit:
            from models.core.webguard import valid_rate  # (Flask only when configured)
            if not valid_rate(self.api_rate_limit):
                raise ConfigError(f"api_rate_limit: {self.api_rate_limit!r} is not a rate "
                                  "such as '120 per minute'")
        if self.data is not None and not self.data.exists():
            raise ConfigError(f"data: {self.data} does not exist")
        return self


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Defaults < TOML ``config`` < ``NEUROEDGE_COORD_<NAME>`` env < non-None ``overrides``."""
    return configfile.load(Settings, "NEUROEDGE_COORD_", config, overrides, ConfigError)
