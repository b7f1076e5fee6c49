"""A disk cache for preprocessed arrays, keyed by the content of what produced them.

Decoding, masking and fingerprinting 3,230 slices takes a minute on 2 cores; every
training command needs the same arrays. The key hashes every input file's bytes, the
input spec and the source of the code that computes them, so a changed file, manifest
or preprocessing step can never be served stale. The cache lives in
``$NEUROEDGE_CACHE`` (default ``~/.cache/neuroedge``), never beside the data, which may be
read-only.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

import numpy as np

logger = logging.getLogger(__name__)
CACHE_ENV = "NEUROEDGE_CACHE"


def cache_dir() -> Path:
    """Where cached arrays live: ``$NEUROEDGE_CACHE`` or ``~/.cache/neuroedge``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "neuroedge")


def content_key(files: Iterable[Path], code: Iterable[ModuleType], *parts: object) -> str:
    """SHA-256 over the files' bytes (in order), the modules' source and ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode() + b"\0")
    for module in code:
        h.update(inspect.getsource(module).encode())
    for path in files:
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()


def cached_arrays(key: str, compute: Callable[[], dict[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """The arrays stored under ``key``, or ``compute()``'s, stored for next time.

    A cache that cannot be read or written is logged and bypassed: it only saves time.
    """
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        logger.warning("cache %s unreadable (%s): computing again", path, exc)
    arrays = compute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:  # a cache needs no fsync: a torn file is recomputed
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        logger.warning("could not write cache %s: %s", path, exc)
    return arrays
