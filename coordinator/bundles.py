"""The coordinator's bundles: ``state_dir/bundles/v<N>/`` plus float weights beside them.

On first start the initial bundle (by default the shipped one) is re-signed with the
coordinator's own key as version 1. Every published version stays downloadable.

A new version is built in ``bundles/.staging/`` and moved into place (:meth:`promote`)
only after the store has recorded it: a version folder exists only for a recorded
version, so a coordinator killed while publishing never serves, nor builds on, a
version it has no record of (:meth:`recover` tidies up at the next start).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from nacl.signing import SigningKey

from models.core.bundle import Bundle, resign_bundle, verify_bundle
from models.core.files import fsync_dir

# The largest bundle version the coordinator answers for: beyond any fleet's lifetime,
# inside SQLite's INTEGER and a file name's length.
MAX_VERSION = 2**31 - 1

logger = logging.getLogger(__name__)


class BundleRegistry:
    """Verified bundles by version; the latest published one is what devices fetch."""

    def __init__(self, root: Path, key: SigningKey) -> None:
        self.root = root
        self.key = key
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[int, Bundle] = {}

    def path(self, version: int) -> Path:
        return self.root / f"v{int(version)}"

    def weights_path(self, version: int) -> Path:
        """Float Keras weights the version was built from (coordinator only)."""
        return self.root / f"v{int(version)}.weights.h5"

    def initialise(self, initial_bundle: Path, initial_weights: Path) -> Bundle:
        """Re-sign the initial bundle as v1 with our key, once."""
        if not self.path(1).exists():
            resign_bundle(initial_bundle, self.path(1), self.key, version=1,
                          parent_version=None)
            if initial_weights.exists():
                shutil.copyfile(initial_weights, self.weights_path(1))
            logger.info("initial bundle re-signed as version 1")
        return self.get(1)

    @property
    def staging(self) -> Path:
        """Where a version is built before the store records it."""
        return self.root / ".staging"

    def promote(self, version: int) -> None:
        """Move a recorded version from :attr:`staging` into place: its float weights
        first, then the folder, whose appearance makes it the version devices fetch."""
        for name in (self.weights_path(version).name, self.path(version).name):
            staged = self.staging / name
            if staged.exists():
                if staged.is_file():
                    with open(staged, "rb") as fh:  # Keras does not fsync what it saves
                        os.fsync(fh.fileno())
                os.replace(staged, self.root / name)
        fsync_dir(self.root)

    def recover(self, recorded: set[int]) -> None:
        """After a restart: promote staged versions the store recorded, remove the
        others and any version folder the store has no record of (a crash while
        publishing); the round that built them is then finished again."""
        staged = {int(p.name[1:]) for p in self.staging.glob("v*")
                  if p.is_dir() and p.name[1:].isdigit()}
        for version in sorted(staged & recorded):
            self.promote(version)
        shutil.rmtree(self.staging, ignore_errors=True)
        for version in set(self.versions()) - recorded:
            logger.warning("removing bundle v%d: built but never recorded", version)
            shutil.rmtree(self.path(version))
            self.weights_path(version).unlink(missing_ok=True)
        self.staging.mkdir(exist_ok=True)
        fsync_dir(self.root)

    def versions(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self.root.glob("v*")
                      if p.is_dir() and p.name[1:].isdigit())

    def get(self, version: int) -> Bundle | None:
        """The verified bundle ``version``, or None if there is none."""
        if not 0 < version <= MAX_VERSION:  # a 300-digit number is no file name either
            return None
        with self._lock:
            if version not in self._cache:
                if not self.path(version).is_dir():
                    return None
                self._cache[version] = verify_bundle(self.path(version),
                                                     [self.key.verify_key])
            return self._cache[version]

    def latest(self) -> Bundle:
        versions = self.versions()
        if not versions:
            raise RuntimeError("no bundle: initialise() first")
        return self.get(versions[-1])  # type: ignore[return-value]
