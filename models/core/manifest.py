"""The signed manifest of a bundle: its canonical bytes, fields and checks.

``manifest.json`` is canonical JSON (sorted keys, compact, UTF-8) plus one newline, and
``manifest["files"]`` lists the SHA-256 and size of every other file, so one signature
over the canonical bytes covers the whole bundle. The file must be byte-for-byte
canonical: then any edit either changes the signed content or is refused. Besides the
documented fields the writer adds ``head`` ({"embedding_dim", "hidden"}) so the head's
expected shapes are signed too.

Format 3 adds ``block`` ({"file": "block.npz", "input": [H, W, C], "channels": K,
"adapter_rank": r}): the model's third output is the input of its last block, whose
weights ``block.npz`` holds; devices compute that block and the head in NumPy, so a
clinic can adapt them (:mod:`models.core.block`). Older software refuses format 3. With
``adapter_rank`` r > 0 the block also has a rank-r adapter on its kernel, in a file of its
own (``"adapter_file": "adapter.npz"``): clinics train and share it with the head, so a
new version changes that small file and the head, never ``block.npz``.

An optional ``slice_check`` ({"file": "slice_head.npz", "threshold": t}) names a head
that scores, from the same embedding, how much an image looks like a brain MRI slice;
below ``t`` the device refuses to predict. Software that predates it ignores both.

The device calls a probability "uncertain" when it is close to the threshold. Format 2
gives that band as a half-width in logits (``uncertain_logit_band``), so it means the same
at any threshold; format 1's ``uncertain_band`` was in probability (|p - threshold| <
band), which around a low threshold reached down to where healthy slices sit. Both are
read; the writer writes format 2 and converts a format-1 source when re-signing.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from models.core import signing

MANIFEST, SIGNATURE, MODEL, HEAD = "manifest.json", "signature", "model.tflite", "head.npz"
SLICE_HEAD = "slice_head.npz"  # optional: the "not a brain MRI slice" check
BLOCK = "block.npz"  # optional: the last block's weights, run in NumPy (format 3)
ADAPTER = "adapter.npz"  # optional: a low-rank adapter on that block's kernel
FORMAT = 2
BLOCK_FORMAT = 3  # a model with a block-input output: older software must refuse it
READABLE_FORMATS = (1, 2, 3)
DEFAULT_LABELS = ("no_tumour", "tumour")
MAX_LOGIT_BAND = 10.0  # +-10 logits already spans probabilities 5e-5 to 1 - 5e-5
MAX_MANIFEST_BYTES = 1024 * 1024
# Flat names only: no separators, no leading dot, so no traversal and no hidden files.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """A bundle cannot be trusted or used."""


class ManifestError(BundleError):
    """manifest.json is missing, unparseable, non-canonical or has invalid fields."""


class IntegrityError(BundleError):
    """A file is missing, altered, unlisted or unsafe (also for bad archives)."""


class VersionError(BundleError):
    """The bundle is not newer than the version the caller already has."""


class SignatureError(BundleError, signing.SignatureError):
    """The manifest signature is missing or not made by a trusted key."""


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: sorted keys, compact separators, UTF-8."""
    try:
        return json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is not plain JSON: {exc}") from exc


def parse(raw: bytes) -> dict:
    def no_constants(name: str) -> None:
        raise ManifestError(f"manifest contains non-JSON constant {name}")
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest.json is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError("manifest.json must hold a JSON object")
    return manifest


class NotRegularFile(OSError):
    pass


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` if it is a regular file (OSError otherwise).

    O_NOFOLLOW + fstat: judge the file actually read, never a symlink's target;
    O_NONBLOCK so that a FIFO planted under a bundle's file name cannot hang the reader.
    """
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | flags)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(0, "not a regular file")
        return fh.read(limit)


def _read_raw_manifest(root: Path) -> bytes:
    try:
        raw = read_regular(root / MANIFEST, MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {root / MANIFEST}: {exc.strerror}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest.json exceeds {MAX_MANIFEST_BYTES} bytes")
    return raw


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Parse manifest.json without verifying anything (for display only)."""
    return parse(_read_raw_manifest(Path(bundle_dir)))


def _field(m: Mapping, key: str, types: type | tuple, ok: Any = None, what: str = "") -> Any:
    value = m.get(key)
    # bool is an int subclass; True must not pass as version 1.
    if (key not in m or isinstance(value, bool) or not isinstance(value, types)
            or (ok is not None and not ok(value))):
        raise ManifestError(f"manifest field {key!r} must be {what}, got {value!r:.80}")
    return value


def _positive_ints(d: Mapping, keys: Sequence[str]) -> bool:
    return all(type(d.get(k)) is int and d[k] > 0 for k in keys)


def check_manifest(m: Mapping[str, Any]) -> None:
    """Validate the manifest's required fields and types; raise :class:`ManifestError`."""
    fmt = _field(m, "format", int, lambda v: v in READABLE_FORMATS,
                 f"one of {', '.join(map(str, READABLE_FORMATS))}")
    version = _field(m, "version", int, lambda v: v >= 1, "an integer >= 1")
    _field(m, "created_at", str, _is_utc_iso, "an ISO-8601 UTC timestamp")
    _field(m, "parent_version", (int, type(None)),
           lambda v: v is None or 1 <= v < version, "null or an integer in [1, version)")
    _field(m, "architecture", str, bool, "a non-empty string")
    _field(m, "input", dict, lambda v: _positive_ints(v, ("height", "width", "channels")),
           "an object with positive integer height, width, channels")
    _field(m, "labels", list, lambda v: all(isinstance(s, str) for s in v)
           and len(v) == len(set(v)) == 2, "a list of two distinct strings")
    _field(m, "threshold", (int, float), lambda v: 0 < v < 1, "a number in (0, 1)")
    # Each format names its band one way; the other name is refused, never ignored.
    if fmt == 1:
        band, other, ok, what = ("uncertain_band", "uncertain_logit_band",
                                 lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")
    else:
        band, other, ok, what = ("uncertain_logit_band", "uncertain_band",
                                 lambda v: 0 <= v <= MAX_LOGIT_BAND,
                                 f"a number in [0, {MAX_LOGIT_BAND}]")
    if other in m:
        raise ManifestError(f"format {fmt} gives the uncertain band as {band}, not {other}")
    _field(m, band, (int, float), ok, what)
    _field(m, "head", dict, lambda v: _positive_ints(v, ("embedding_dim", "hidden")),
           "an object with positive integer embedding_dim, hidden")
    _field(m, "metrics", dict, what="an object")
    _field(m, "training", dict, what="an object")
    _field(m, "signer", str, bool, "a key id")
    files = _field(m, "files", dict, lambda v: {MODEL, HEAD} <= set(v),
                   f"an object listing at least {MODEL} and {HEAD}")
    if (fmt == BLOCK_FORMAT) != ("block" in m):
        raise ManifestError(f"format {BLOCK_FORMAT} is a bundle with a block and only it")
    if "block" in m:
        _field(m, "block", dict, lambda v: v.get("file") == BLOCK and BLOCK in files
               and isinstance(v.get("input"), list) and len(v["input"]) == 3
               and all(type(d) is int and d > 0 for d in v["input"])
               and type(v.get("channels")) is int and v["channels"] > 0
               and type(v.get("adapter_rank", 0)) is int and v.get("adapter_rank", 0) >= 0
               and (v.get("adapter_file") == ADAPTER and ADAPTER in files
                    if v.get("adapter_rank", 0) else "adapter_file" not in v),
               f"an object naming {BLOCK} (listed in files), its input [H, W, C], "
               f"channels and adapter_rank (> 0: with adapter_file {ADAPTER}, listed)")
    if "slice_check" in m:
        _field(m, "slice_check", dict, lambda v: v.get("file") == SLICE_HEAD
               and SLICE_HEAD in files and type(v.get("threshold")) in (int, float)
               and 0 < v["threshold"] < 1,
               f"an object naming {SLICE_HEAD} (listed in files) and a threshold in (0, 1)")
    for name, entry in files.items():
        # Names are checked before any file is opened: this is the traversal guard.
        if not SAFE_NAME.fullmatch(name) or name in (MANIFEST, SIGNATURE):
            raise ManifestError(f"manifest lists unsafe file name {name!r:.80}")
        if not (isinstance(entry, dict) and _SHA256.fullmatch(str(entry.get("sha256")))
                and type(entry.get("bytes")) is int and entry["bytes"] >= 0):
            raise ManifestError(f"files[{name!r}] must be {{'sha256': hex, 'bytes': n}}")


def uncertain_logit_band(manifest: Mapping[str, Any]) -> float:
    """A checked manifest's uncertain band as a half-width in logits. A format-1 band
    (in probability) is read as the band it gives around 0.5: 0.15 -> 0.619 logits."""
    if manifest["format"] == 1:
        p = 0.5 + manifest["uncertain_band"]
        return round(min(math.log(p / (1 - p)), MAX_LOGIT_BAND), 4)
    return float(manifest["uncertain_logit_band"])


def _is_utc_iso(text: str) -> bool:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return False
    return parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0


def load_checked_manifest(root: Path) -> tuple[dict, bytes]:
    raw = _read_raw_manifest(root)
    manifest = parse(raw)
    body = canonical_bytes(manifest)
    if raw != body + b"\n":
        raise ManifestError("manifest.json is not in canonical form (edited after signing?)")
    check_manifest(manifest)
    return manifest, body
