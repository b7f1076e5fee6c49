"""The appliance's installed bundles: versions on disk, CURRENT and PREVIOUS pointers.

Layout of ``<data_dir>/bundles/``::

    v2/ v3/ ...     installed, verified bundles (at most KEEP, never CURRENT or PREVIOUS
                    removed)
    CURRENT         "v<N>" or "shipped": the bundle the appliance serves
    PREVIOUS        the last good bundle before CURRENT (the rollback target)
    REJECTED        versions an operator rolled back from, one per line (never reinstalled)
    staging/        downloads in progress (removed by :meth:`cleanup_staging`)
    .lock           serialises install/rollback between processes (server, CLI)

Crash safety: a bundle is fsynced and renamed into ``v<N>/`` *before* any pointer
names it, and each pointer is replaced atomically (temp file + fsync + ``os.replace``
+ directory fsync). A crash at any point therefore leaves CURRENT naming a complete
bundle, or the previous one. Pointers are only trusted after the bundle they name
verifies; otherwise :meth:`InstalledBundles.current_path` falls back to PREVIOUS, then
to the shipped bundle, and logs why.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import nacl.signing

from device.exc import RollbackError
from models.core.bundle import BundleError, verify_bundle
from models.core.files import fsync_dir, fsync_tree, is_temp, write_atomic

logger = logging.getLogger(__name__)

BUNDLES_DIR = "bundles"
STAGING_DIR = "staging"
CURRENT, PREVIOUS, REJECTED = "CURRENT", "PREVIOUS", "REJECTED"
SHIPPED = "shipped"
KEEP = 3  # installed versions kept on disk
_VERSION_DIR = re.compile(r"v([1-9][0-9]{0,8})")
_TRASH_PREFIX = ".trash-"


class InstalledBundles:
    """Installed bundle versions of one appliance and the pointers that choose one.

    Parameters
    ----------
    data_dir : Path
        The appliance data folder; bundles live in ``data_dir/bundles``.
    shipped : Path
        The bundle that came with the software (``settings.bundle``): served when
        nothing is installed or nothing installed verifies.
    trusted_keys : sequence of nacl.signing.VerifyKey
        Keys whose bundles are accepted (``device.services.trusted_keys(settings)``).
    """

    def __init__(self, data_dir: Path, shipped: Path,
                 trusted_keys: Sequence[nacl.signing.VerifyKey]) -> None:
        self.root = Path(data_dir) / BUNDLES_DIR
        self.shipped = Path(shipped)
        self.trusted_keys = list(trusted_keys)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------

    def _path_of(self, name: str) -> Path:
        return self.shipped if name == SHIPPED else self.root / name

    def _read_pointer(self, pointer: str) -> str | None:
        """The pointer's target name ("v<N>" or "shipped"), None if absent or malformed."""
        try:
            text = (self.root / pointer).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("bundle pointer %s unreadable: %s", pointer, exc)
            return None
        if text == SHIPPED or _VERSION_DIR.fullmatch(text):
            return text
        logger.warning("bundle pointer %s holds %r, not v<N> or %s; ignored",
                       pointer, text[:40], SHIPPED)
        return None

    def _verified(self, name: str, pointer: str) -> bool:
        if name == SHIPPED:
            return True  # load_predictor verifies it; there is nothing to fall back to
        try:
            bundle = verify_bundle(self.root / name, self.trusted_keys)
        except BundleError as exc:
            logger.warning("%s names %s, which does not verify: %s", pointer, name, exc)
            return False
        if f"v{bundle.version}" != name:
            logger.warning("%s names %s, but that folder holds version %s", pointer, name,
                           bundle.version)
            return False
        return True

    def _resolve(self) -> str:
        """Name of the bundle to serve: CURRENT, else PREVIOUS, else shipped."""
        current = self._read_pointer(CURRENT)
        if current is None and not (self.root / CURRENT).exists():
            logger.info("no bundle installed; serving the shipped bundle %s", self.shipped)
            return SHIPPED
        if current is not None and self._verified(current, CURRENT):
            return current
        previous = self._read_pointer(PREVIOUS)
        if previous not in (None, current) and self._verified(previous, PREVIOUS):
            logger.warning("CURRENT is unusable; serving the last good bundle %s", previous)
            return previous
        logger.warning("no installed bundle verifies; serving the shipped bundle %s",
                       self.shipped)
        return SHIPPED

    def current_path(self) -> Path:
        """The bundle to serve: CURRENT if it verifies, else PREVIOUS if it verifies, else
        the shipped bundle (each fallback is logged with its reason)."""
        return self._path_of(self._resolve())

    def current_name(self) -> str | None:
        """CURRENT's raw value ("v<N>" or "shipped"), None if nothing is installed."""
        return self._read_pointer(CURRENT)

    def previous_name(self) -> str | None:
        """PREVIOUS's raw value, None if there is no rollback target."""
        return self._read_pointer(PREVIOUS)

    def versions(self) -> list[int]:
        """Installed version folders on disk (verified or not), ascending."""
        found = (_VERSION_DIR.fullmatch(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def rejected_versions(self) -> set[int]:
        """Versions an operator rolled back from: the updater never installs them again."""
        try:
            lines = (self.root / REJECTED).read_text(encoding="ascii").split()
        except FileNotFoundError:
            return set()
        return {int(v) for v in lines if v.isdigit()}

    # -- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock: a CLI rollback and the server's updater never interleave their steps.
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_file(self, name: str, text: str) -> None:
        """Replace ``root/name`` atomically and durably (readable by the service group)."""
        write_atomic(self.root / name, text.encode("ascii"), mode=0o644)

    def _write_pointer(self, pointer: str, name: str) -> None:
        self._write_file(pointer, name + "\n")
        logger.info("bundle pointer %s -> %s", pointer, name)

    def _remove_dir(self, path: Path) -> None:
        # Rename first: a half-deleted folder never sits under a v<N> name.
        trash = self.root / f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
        os.rename(path, trash)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def staging_dir(self, version: int) -> Path:
        """A fresh, empty folder for downloading ``version`` (same filesystem as the
        installed versions, so :meth:`install` is a rename)."""
        staging = self.root / STAGING_DIR
        staging.mkdir(exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"v{int(version)}-", dir=staging))
        os.chmod(path, 0o755)  # like models.core.bundle: readable by the service's group
        return path

    def cleanup_staging(self) -> None:
        """Remove downloads, half-deleted folders and temp pointer files of earlier runs."""
        with self._locked():
            shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
            for child in self.root.iterdir():
                if child.name.startswith(_TRASH_PREFIX):
                    shutil.rmtree(child, ignore_errors=True)
                elif is_temp(child.name):
                    child.unlink(missing_ok=True)

    def install(self, staged: Path, version: int) -> Path:
        """Move a staged bundle to ``v<version>/`` and make it CURRENT.

        The staged folder is verified again (signature, hashes, version) and fsynced
        before it is renamed; then PREVIOUS := the bundle served so far and
        CURRENT := ``v<version>``. Older versions beyond :data:`KEEP` are removed, never
        CURRENT or PREVIOUS.

        Returns
        -------
        Path
            The installed bundle folder.

        Raises
        ------
        models.core.bundle.BundleError
            The staged folder does not verify or holds another version.
        """
        staged = Path(staged)
        bundle = verify_bundle(staged, self.trusted_keys)
        if bundle.version != version:
            raise BundleError(f"staged bundle is version {bundle.version}, not {version}")
        name = f"v{int(version)}"
        target = self.root / name
        with self._locked():
            previous = self._resolve()
            if previous == name:
                raise BundleError(f"{name} is already the bundle in service")
            fsync_tree(staged)
            if target.exists():  # e.g. left by a crash before its pointer was written
                self._remove_dir(target)
            os.rename(staged, target)
            fsync_dir(self.root)
            # A crash before this line: CURRENT unchanged, v<N> is an orphan (pruned).
            self._write_pointer(PREVIOUS, previous)
            # A crash here: CURRENT and PREVIOUS both name the old bundle.
            self._write_pointer(CURRENT, name)
            self._prune()
        logger.info("installed bundle %s (previous %s)", name, previous)
        return target

    def _prune(self) -> None:
        keep = {self._read_pointer(CURRENT), self._read_pointer(PREVIOUS)}
        for version in sorted(self.versions(), reverse=True):
            name = f"v{version}"
            if name in keep:
                continue
            if len(keep - {None, SHIPPED}) < KEEP:
                keep.add(name)
                continue
            logger.info("removing old bundle %s", name)
            self._remove_dir(self.root / name)

    def rollback(self) -> Path:
        """Make PREVIOUS current again, after verifying it; return its path.

        The version rolled back from is recorded in REJECTED, so the updater does not
        install it again; PREVIOUS is cleared (a rollback is one step).

        Raises
        ------
        RollbackError
            No PREVIOUS, or it no longer verifies (CURRENT is then left unchanged).
        """
        with self._locked():
            target, leaving = self._read_pointer(PREVIOUS), self._read_pointer(CURRENT)
            if target is None or target == (leaving or SHIPPED):
                raise RollbackError("no previous bundle to roll back to")
            try:
                verify_bundle(self._path_of(target), self.trusted_keys)
            except BundleError as exc:
                raise RollbackError(f"previous bundle {target} does not verify: {exc}") from exc
            if leaving not in (None, SHIPPED):  # "v<N>": the folder name is the version
                rejected = self.rejected_versions() | {int(leaving[1:])}
                self._write_file(REJECTED, "".join(f"{v}\n" for v in sorted(rejected)))
            self._write_pointer(CURRENT, target)
            (self.root / PREVIOUS).unlink(missing_ok=True)
            fsync_dir(self.root)
        logger.warning("rolled back from %s to %s", leaving, target)
        return self._path_of(target)
