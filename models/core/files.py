"""Durable files: the one way this project writes a file that must survive a power cut.

:func:`write_atomic` writes to a temp file in the same folder, fsyncs it, renames it over
the target and fsyncs the folder: the target holds the old content or all of the new,
and the rename is on disk when the call returns. :func:`replace_dir` does the same for
a whole flat folder (a bundle). Temp names are :func:`is_temp`, so the stores' recovery
sweeps what a crash left.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"
LEGACY_TMP_PREFIX = ".tmp-"  # temps of earlier versions, still swept after an upgrade


def is_temp(name: str) -> bool:
    """Whether a file name is a temp of :func:`write_atomic` or :func:`replace_dir`,
    which only a crash leaves behind."""
    return name.startswith(LEGACY_TMP_PREFIX) or (
        name.startswith(".") and name.endswith(TMP_SUFFIX))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the folder's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every regular file of a flat folder, then the folder itself."""
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode``, write ``data``, fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)  # exactly this mode, whatever the umask
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o600,
                 overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns the path.

    Parameters
    ----------
    path : str or os.PathLike
        The target; its folder must exist.
    data : bytes
        The whole content.
    mode : int
        Permissions of the new file (never inherited from the file it replaces).
    overwrite : bool
        False refuses an existing target with FileExistsError, race-free (a hard link
        fails if the name exists): a signing key is never replaced by accident.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        _write_new(tmp, data, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def create_once(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> bytes:
    """The content of ``path``, written with ``data`` first if there is none (a secret
    made on first start): of two processes starting at once, both read the winner's."""
    with contextlib.suppress(FileExistsError):
        write_atomic(path, data, mode=mode, overwrite=False)
    return Path(path).read_bytes()


def replace_dir(target: Path, files: dict[str, bytes], mode: int = 0o755) -> None:
    """Replace the folder ``target`` by one holding exactly ``files`` (mode 0644).

    The new folder is built and fsynced beside the target (same filesystem), then
    renamed into place; an old folder is renamed aside first and removed last, so a
    reader never sees a half-written folder (only, for a moment, none).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX,
                                dir=target.parent))
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    try:
        for name, data in files.items():
            _write_new(tmp / name, data, 0o644)
        os.chmod(tmp, mode)  # mkdtemp gives 0700; services read bundles as other users
        fsync_dir(tmp)
        replaced = target.exists()
        if replaced:
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if replaced:
                os.rename(old, target)
            raise
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
