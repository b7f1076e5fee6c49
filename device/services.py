"""Composition root: builds stores, the verified model, hardware and telemetry.

Hardware is created here, never at import; tests build services with gpiozero's
MockFactory (``GPIOZERO_PIN_FACTORY=mock``) or with ``gpio = false``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from device.config import Settings
from device.hw.camera import Camera, detect_camera
from device.hw.status import Indicator, NullIndicator, StatusIndicator
from device.inference.predictor import Predictor, create_predictor
from device.inference.slot import ModelSlot
from device.store.base import AccountStore, CaseStore
from device.store.sqlite import DB_NAME, Database, SQLiteAccountStore, SQLiteCaseStore
from device.sync.bundles import InstalledBundles
from device.telemetry import Telemetry
from models.core.bundle import verify_bundle
from models.core.signing import load_public_key

logger = logging.getLogger(__name__)


def trusted_keys(settings: Settings) -> list:
    """The public keys this appliance accepts bundles from."""
    return [load_public_key(k) for k in settings.trusted_keys]


def load_predictor(settings: Settings, bundle_dir: Path | None = None) -> Predictor:
    """Verify a bundle (signature, hashes) against the trusted keys and load it."""
    bundle = verify_bundle(bundle_dir or settings.bundle, trusted_keys(settings))
    return create_predictor(settings.predictor, bundle)


@dataclass
class Services:
    """Everything the web app and the CLI need, built once per process."""

    settings: Settings
    store: CaseStore
    accounts: AccountStore
    slot: ModelSlot
    status: Indicator
    camera: Camera | None
    bundles: InstalledBundles
    telemetry: Telemetry = field(default_factory=Telemetry)
    federation: object | None = None  # device.federation.Federation when configured
    _adopted: str | None = field(default=None, repr=False)  # CURRENT last adopted

    @staticmethod
    def backbone_id(predictor: Predictor) -> str:
        """Embeddings are valid for one backbone: the model file's sha256 names it."""
        return predictor.bundle.manifest["files"]["model.tflite"]["sha256"]

    def request_sync(self) -> None:
        """Button press: sync with the coordinator now, in the background."""
        if self.federation is None:
            logger.info("sync requested from the button; %s", "rounds come from the Flower "
                        "SuperNode" if self.settings.transport == "flower"
                        else "no coordinator configured")
            return
        threading.Thread(target=self._sync_quietly, daemon=True, name="sync-now").start()

    def _sync_quietly(self) -> None:
        try:
            self.federation.sync_now()
        except Exception as exc:  # shown on the LED and /healthz, never fatal
            logger.warning("sync failed: %s", exc)  # sync_now recorded it for /healthz

    def adopt_installed(self) -> bool:
        """Serve the bundle another process of this appliance installed (the Flower
        ClientApp verified and gated it), if it is not the one in service. Only a
        changed ``CURRENT`` pointer is looked at (verifying a bundle costs a read)."""
        name = self.bundles.current_name()
        if name == self._adopted:
            return False
        self._adopted = name
        path = self.bundles.current_path().resolve()
        if path == Path(self.slot.current.bundle.path).resolve():
            return False
        predictor = load_predictor(self.settings, path)
        self.slot.swap(predictor)
        logger.info("now serving bundle version %d (installed by another process of this "
                    "appliance)", predictor.version)
        return True

    def follow_installed(self, stop: threading.Event) -> None:
        """Background loop of transport "flower": adopt installed bundles."""
        while not stop.wait(self.settings.bundle_poll_s):
            try:
                self.adopt_installed()
            except Exception as exc:  # a bad install must not stop serving
                logger.warning("could not adopt the installed bundle: %s", exc)
                self.telemetry.record_error("sync", f"adopt failed: {type(exc).__name__}")

    def close(self) -> None:
        self.status.close()
        if self.camera is not None:
            self.camera.close()
        self.store.close()
        self.accounts.close()


def open_stores(settings: Settings) -> tuple[CaseStore, AccountStore]:
    """Case and account stores sharing one SQLite database in the data folder."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.data_dir / DB_NAME)
    return (SQLiteCaseStore(settings.data_dir, db=db),
            SQLiteAccountStore(settings.data_dir, db=db))


def build_federation(svc: Services, client=None):
    """Federation over ``client``; by default the HTTP client of a configured
    coordinator (None without one, or with transport "flower", whose ClientApp brings
    its own :class:`~device.sync.message_link.MessageLink`)."""
    s = svc.settings
    if client is None:
        if s.transport != "http" or not s.coordinator_url:
            return None
        from device.sync.client import CoordinatorClient
        client = CoordinatorClient(s.coordinator_url, s.device_token, s.coordinator_ca)
    from device.federation import Federation
    from device.sync.outbox import Outbox
    from device.sync.updater import BundleUpdater
    updater = BundleUpdater(s, svc.slot, svc.store, svc.bundles, status=svc.status)
    return Federation(svc, client, Outbox(s.data_dir), updater)


def build_services(settings: Settings) -> Services:
    """Build everything; the caller owns the result and must ``close()`` it."""
    store, accounts = open_stores(settings)
    # settings.bundle is the shipped fallback; a bundle installed from the coordinator wins.
    bundles = InstalledBundles(settings.data_dir, settings.bundle, trusted_keys(settings))
    bundles.cleanup_staging()  # downloads of a run that crashed
    predictor = load_predictor(settings, bundles.current_path())
    holder: dict[str, Services] = {}

    def on_sync() -> None:
        holder["svc"].request_sync()

    if settings.gpio:
        status: Indicator = StatusIndicator(settings.led_pin, settings.button_pin,
                                            hold_seconds=settings.hold_seconds,
                                            on_sync=on_sync)
    else:
        status = NullIndicator()
    svc = Services(settings, store, accounts, ModelSlot(predictor), status,
                   detect_camera(settings.camera), bundles)
    holder["svc"] = svc
    svc.federation = build_federation(svc)
    logger.info("serving bundle version %d (%s)", predictor.version,
                predictor.bundle.manifest["architecture"])
    return svc
