"""Composition root: builds stores, the verified model, hardware and telemetry, and
hands each part the few collaborators it uses.

Hardware is created here, never at import; tests build services with gpiozero's
MockFactory (``GPIOZERO_PIN_FACTORY=mock``) or with ``gpio = false``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from device.admission import bound_allocator
from device.analysis import Analyser
from device.config import DEV_PUBLIC_KEY, Settings
from device.federation import Federation
from device.heatmaps import HeatmapQueue
from device.hw.camera import Camera, detect_camera
from device.hw.status import Indicator, NullIndicator, StatusIndicator
from device.inference.predictor import Predictor, create_predictor
from device.inference.slot import ModelSlot
from device.store.base import AccountStore, CaseStore
from device.store.db import DB_NAME, Database
from device.store.sqlite import SQLiteCaseStore
from device.store.sqlite_accounts import SQLiteAccountStore
from device.studies import StudyKeys
from device.sync.bundles import InstalledBundles
from device.sync.follow import InstalledFollower
from device.sync.link import CoordinatorLink
from device.sync.outbox import Outbox
from device.sync.updater import BundleUpdater
from device.telemetry import Telemetry
from models.core.bundle import BundleError, SignatureError, read_manifest, verify_bundle
from models.core.signing import key_id, load_public_key

logger = logging.getLogger(__name__)


def trusted_keys(settings: Settings) -> list:
    """The public keys this appliance accepts bundles from."""
    return [load_public_key(k) for k in settings.trusted_keys]


def load_predictor(settings: Settings, bundle_dir: Path | None = None) -> Predictor:
    """Verify a bundle (signature, hashes) against the trusted keys and load it; a
    signature no trusted key made names the key that would, and where it is set."""
    path = bundle_dir or settings.bundle
    keys = trusted_keys(settings)
    try:
        bundle = verify_bundle(path, keys)
    except SignatureError as exc:
        raise SignatureError(f"{exc}. {_which_key(path, keys)}") from None
    return create_predictor(settings.predictor, bundle)


def _which_key(path: Path, keys: list) -> str:
    """The fix for a bundle signed by a key the appliance does not trust."""
    try:
        signer = read_manifest(path).get("signer", "unknown")
    except (BundleError, OSError):
        signer = "unknown"
    dev = key_id(load_public_key(DEV_PUBLIC_KEY))
    whose = (f" (the development key that signs the shipped model: {DEV_PUBLIC_KEY})"
             if signer == dev else " (a coordinator's key is the signing.key.pub of its "
             "state folder)")
    return (f"The bundle {path} is signed by key {signer}{whose}; trusted are "
            f"{', '.join(key_id(k) for k in keys) or 'none'}. Add that public key's file to "
            "trusted_keys in the appliance's configuration (keep the shipped model's key "
            "while it serves the shipped model).")


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
    telemetry: Telemetry
    analyser: Analyser
    follower: InstalledFollower          # transport "flower": serve what was installed
    federation: Federation | None = None  # with a coordinator over HTTP

    def request_sync(self) -> None:
        """Button press: sync with the coordinator now, in the background."""
        if self.federation is None:
            logger.info("sync requested from the button; %s", "rounds come from the Flower "
                        "SuperNode" if self.settings.transport == "flower"
                        else "no coordinator configured")
            return
        self.federation.sync_in_background()

    def close(self) -> None:
        self.analyser.heatmaps.close()
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


def build_federation(svc: Services, link: CoordinatorLink | None = None
                     ) -> Federation | None:
    """Federation over ``link``; by default the HTTP client of a configured coordinator
    (None without one, or with transport "flower", whose ClientApp brings its own
    :class:`~device.sync.message_link.MessageLink`)."""
    s = svc.settings
    if link is None:
        if s.transport != "http" or not s.coordinator_url:
            return None
        from device.sync.client import CoordinatorClient
        link = CoordinatorClient(s.coordinator_url, s.device_token, s.coordinator_ca,
                                 timeout=s.coordinator_timeout_s)
    updater = BundleUpdater(s, svc.slot, svc.store, svc.bundles, status=svc.status)
    return Federation(link, Outbox(s.data_dir), updater, settings=s, store=svc.store,
                      slot=svc.slot, status=svc.status, telemetry=svc.telemetry,
                      train_config=s.train_config())


def _indicator(settings: Settings, on_sync) -> Indicator:
    """The LED and button; without a usable GPIO pin factory (a laptop, a Pi without
    the pins' library) the appliance serves anyway, with a warning and no LED."""
    if not settings.gpio:
        return NullIndicator()
    from gpiozero.exc import GPIOZeroError
    try:
        return StatusIndicator(settings.led_pin, settings.button_pin,
                               hold_seconds=settings.hold_seconds, on_sync=on_sync)
    except GPIOZeroError as exc:  # BadPinFactory among them
        logger.warning("no status LED or button: %s (%s). Serving without them; set "
                       "gpio = false to silence this, or GPIOZERO_PIN_FACTORY=mock to "
                       "simulate them", exc, type(exc).__name__)
        return NullIndicator()


def build_services(settings: Settings) -> Services:
    """Build everything; the caller owns the result and must ``close()`` it."""
    bound_allocator()  # memory freed by large uploads leaves the process
    store, accounts = open_stores(settings)
    # settings.bundle is the shipped fallback; a bundle installed from the coordinator wins.
    bundles = InstalledBundles(settings.data_dir, settings.bundle, trusted_keys(settings))
    bundles.cleanup_staging()  # downloads of a run that crashed
    predictor = load_predictor(settings, bundles.current_path())
    slot, telemetry = ModelSlot(predictor), Telemetry()
    status = _indicator(settings, lambda: svc.request_sync())  # svc: bound just below
    analyser = Analyser(slot, store, status, telemetry, settings.max_upload_bytes,
                        HeatmapQueue(), study_keys=StudyKeys.of(accounts))
    analyser.heatmaps.start(analyser.draw_queued)
    telemetry.heatmaps_waiting.set_function(analyser.heatmaps.pending)
    svc = Services(
        settings, store, accounts, slot, status, detect_camera(settings.camera), bundles,
        telemetry, analyser,
        InstalledFollower(bundles, slot, partial(load_predictor, settings), telemetry,
                          settings.bundle_poll_s))
    svc.federation = build_federation(svc)
    if svc.federation is not None:  # this clinic's own head, if it is still the better one
        if settings.personalise:
            svc.federation.personalisation.restore()
        else:
            svc.federation.personalisation.serve_global("personalise is off")
    logger.info("serving bundle version %d (%s)", predictor.version,
                predictor.bundle.manifest["architecture"])
    return svc
