"""Signed model bundles: what the coordinator ships and devices verify before use.

A bundle is a flat directory::

    manifest.json   canonical JSON (sorted keys, compact, UTF-8) plus one newline
    signature       the raw 64-byte Ed25519 signature of the canonical manifest bytes
    model.tflite    the (int8, pruned) model; not parsed here
    head.npz        float head weights, see :mod:`models.core.weights`

``manifest["files"]`` lists the SHA-256 and size of every file except manifest.json and
signature, so one signature covers everything. The manifest file must be byte-for-byte
canonical: then any edit either changes the signed content or is refused as
non-canonical. Besides the documented fields the writer adds ``head``
({"embedding_dim", "hidden"}) so the head's expected shapes are signed too.

The device calls a probability "uncertain" when it is close to the threshold. Format 2
gives that band as a half-width in logits (``uncertain_logit_band``), so it means the same
at any threshold; format 1's ``uncertain_band`` was in probability (|p - threshold| <
band), which around a low threshold reached down to where healthy slices sit. Both are
read; the writer writes format 2 and converts a format-1 source when re-signing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import nacl.signing
import numpy as np

from models.core import signing, weights
from models.core.files import replace_dir

log = logging.getLogger(__name__)

MANIFEST, SIGNATURE, MODEL, HEAD = "manifest.json", "signature", "model.tflite", "head.npz"
FORMAT = 2
READABLE_FORMATS = (1, 2)
DEFAULT_LABELS = ("no_tumour", "tumour")
MAX_LOGIT_BAND = 10.0  # +-10 logits already spans probabilities 5e-5 to 1 - 5e-5
MAX_MANIFEST_BYTES = 1024 * 1024
DEFAULT_MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
_MAX_MEMBERS = 64
_COMPUTED = ("format", "files", "signer", "head")  # set by the writer, never by callers
# Flat names only: no separators, no leading dot, so no traversal and no hidden files.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
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


def _parse(raw: bytes) -> dict:
    def no_constants(name: str) -> None:
        raise ManifestError(f"manifest contains non-JSON constant {name}")
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest.json is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError("manifest.json must hold a JSON object")
    return manifest


class _NotRegularFile(OSError):
    pass


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` if it is a regular file (OSError otherwise).

    O_NOFOLLOW + fstat: judge the file actually read, never a symlink's target;
    O_NONBLOCK so that a FIFO planted under a bundle's file name cannot hang the reader.
    """
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | flags)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegularFile(0, "not a regular file")
        return fh.read(limit)


def _read_raw_manifest(root: Path) -> bytes:
    try:
        raw = _read_regular(root / MANIFEST, MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {root / MANIFEST}: {exc.strerror}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest.json exceeds {MAX_MANIFEST_BYTES} bytes")
    return raw


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Parse manifest.json without verifying anything (for display only)."""
    return _parse(_read_raw_manifest(Path(bundle_dir)))


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
    for name, entry in files.items():
        # Names are checked before any file is opened: this is the traversal guard.
        if not _SAFE_NAME.fullmatch(name) or name in (MANIFEST, SIGNATURE):
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


def _load_checked_manifest(root: Path) -> tuple[dict, bytes]:
    raw = _read_raw_manifest(root)
    manifest = _parse(raw)
    body = canonical_bytes(manifest)
    if raw != body + b"\n":
        raise ManifestError("manifest.json is not in canonical form (edited after signing?)")
    check_manifest(manifest)
    return manifest, body


def _read_checked(root: Path, name: str, entry: Mapping[str, Any]) -> bytes:
    try:
        data = _read_regular(root / name, entry["bytes"] + 1)
    except _NotRegularFile:
        raise IntegrityError(f"bundle file {name} is not a regular file") from None
    except OSError as exc:
        raise IntegrityError(f"bundle file {name} is missing or unreadable") from exc
    if len(data) != entry["bytes"]:
        raise IntegrityError(f"bundle file {name} is {len(data)} bytes, manifest says "
                             f"{entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IntegrityError(f"bundle file {name} does not match its SHA-256 in the manifest")
    return data


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory. Treat ``manifest`` as read-only."""

    path: Path
    manifest: dict

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def parent_version(self) -> int | None:
        return self.manifest["parent_version"]

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def uncertain_interval(self) -> tuple[float, float]:
        """Probabilities strictly inside this interval are shown as uncertain."""
        t = self.threshold
        if self.manifest["format"] == 1:
            band = float(self.manifest["uncertain_band"])
            return t - band, t + band
        # sigmoid(logit(t) -+ band) in odds form: no clamping, exact at any t in (0, 1).
        e = math.exp(self.manifest["uncertain_logit_band"])
        return t / (t + (1 - t) * e), t * e / (t * e + 1 - t)

    @property
    def uncertain_logit_band(self) -> float:
        return uncertain_logit_band(self.manifest)

    @property
    def labels(self) -> tuple[str, str]:
        return tuple(self.manifest["labels"])

    @property
    def signer(self) -> str:
        return self.manifest["signer"]

    @property
    def head_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected head array shapes, from the signed manifest."""
        head = self.manifest["head"]
        return weights.head_shapes(head["embedding_dim"], head["hidden"])

    def read_file(self, name: str) -> bytes:
        """Read a listed file, re-checking its hash (it may have changed since verify)."""
        if name not in self.manifest["files"]:
            raise IntegrityError(f"{name!r:.80} is not listed in the manifest")
        return _read_checked(self.path, name, self.manifest["files"][name])

    def load_head(self) -> dict[str, np.ndarray]:
        """Load the head weights, validated against the manifest's shapes."""
        return weights.load_head(self.read_file(HEAD), expected_shapes=self.head_shapes)


def verify_bundle(bundle_dir: str | os.PathLike,
                  trusted_keys: Sequence[nacl.signing.VerifyKey],
                  min_version: int | None = None) -> Bundle:
    """Verify manifest, signature, file hashes, file set and version, in that order.

    Parameters
    ----------
    bundle_dir : str or os.PathLike
        The bundle directory.
    trusted_keys : sequence of nacl.signing.VerifyKey
        Public keys whose signatures are accepted.
    min_version : int, optional
        When given, the bundle's version must be strictly greater (no rollback).

    Raises
    ------
    ManifestError, SignatureError, IntegrityError, VersionError
        All subclasses of :class:`BundleError`.
    """
    root = Path(bundle_dir)
    manifest, body = _load_checked_manifest(root)
    try:
        sig = _read_regular(root / SIGNATURE, signing.SIGNATURE_BYTES + 1)
        signer = signing.verify(body, sig, trusted_keys)
    except OSError as exc:
        raise SignatureError(f"bundle has no readable {SIGNATURE} file") from exc
    except signing.SignatureError as exc:
        raise SignatureError(f"bundle signature refused: {exc}") from exc
    if signer != manifest["signer"]:
        raise SignatureError(f"signed by key {signer} but manifest names {manifest['signer']}")
    for name, entry in manifest["files"].items():
        _read_checked(root, name, entry)
    unlisted = sorted(set(os.listdir(root)) - set(manifest["files"]) - {MANIFEST, SIGNATURE})
    if unlisted:
        raise IntegrityError(f"bundle holds files not in its manifest: {unlisted}")
    if min_version is not None and manifest["version"] <= min_version:
        raise VersionError(f"bundle version {manifest['version']} is not newer than "
                           f"{min_version}; refusing to roll back")
    log.info("verified bundle version %s signed by %s", manifest["version"], signer)
    return Bundle(root, manifest)


def check_bundle_target(out_dir: str | os.PathLike) -> None:
    """FileExistsError unless ``out_dir`` is absent, empty or a bundle (which a new one
    may replace): so a long training run can check its output before it starts."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not (
            out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / MANIFEST).exists()))):
        raise FileExistsError(f"{out_dir} exists and is not a bundle; refusing to replace it")


def _write_tree(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """Replace ``out_dir`` atomically by a folder of ``files`` (see
    :func:`models.core.files.replace_dir`); devices swap via their own slot."""
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_bundle_target(out_dir)
    replace_dir(out_dir, dict(files))


def _build(out_dir: str | os.PathLike, files: Mapping[str, bytes], fields: Mapping[str, Any],
           key: nacl.signing.SigningKey) -> dict:
    computed = sorted(set(fields) & set(_COMPUTED))
    if computed:
        raise ManifestError(f"manifest fields {computed} are computed by the bundle writer")
    dim, hidden = weights.load_head(files[HEAD])["hidden/kernel"].shape
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    manifest = {"created_at": now, "parent_version": None, "labels": list(DEFAULT_LABELS),
                "metrics": {}, "training": {}, **fields, "format": FORMAT,
                "head": {"embedding_dim": int(dim), "hidden": int(hidden)},
                "signer": signing.key_id(key.verify_key),
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                          for name, data in sorted(files.items())}}
    manifest = _parse(canonical_bytes(manifest))  # normalise tuples etc. to what is signed
    check_manifest(manifest)
    body = canonical_bytes(manifest)
    _write_tree(Path(out_dir), {**files, MANIFEST: body + b"\n",
                                SIGNATURE: signing.sign(body, key)})
    log.info("wrote bundle version %s signed by %s", manifest["version"], manifest["signer"])
    return manifest


def write_bundle(out_dir: str | os.PathLike, model_bytes: bytes,
                 head_arrays: Mapping[str, np.ndarray], manifest_fields: Mapping[str, Any],
                 signing_key: nacl.signing.SigningKey) -> dict:
    """Write and sign a bundle atomically, replacing an existing bundle at ``out_dir``.

    ``manifest_fields`` supplies version, architecture, input, threshold,
    uncertain_logit_band and optionally created_at, parent_version, labels, metrics,
    training; format, files, head and signer are computed. Returns the manifest as
    signed. Raises ManifestError or weights.WeightsError before writing anything, and
    ``FileExistsError`` if ``out_dir`` is a file, a symlink or a non-empty directory that
    is not a bundle.
    """
    return _build(out_dir, {MODEL: bytes(model_bytes), HEAD: weights.head_to_bytes(head_arrays)},
                  manifest_fields, signing_key)


def resign_bundle(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  signing_key: nacl.signing.SigningKey, version: int,
                  parent_version: int | None = None, **overrides: Any) -> dict:
    """Copy a bundle's files under a new manifest signed by ``signing_key``.

    The source's file hashes are checked but not its signature: the coordinator adopts
    the shipped bundle, whose development key it need not trust. A format-1 source's
    uncertain band is converted to logits (:func:`uncertain_logit_band`). The source's
    version, signer and manifest hash are recorded under ``origin``. Returns the new
    manifest.
    """
    src = Path(src_dir)
    manifest, body = _load_checked_manifest(src)
    files = {name: _read_checked(src, name, e) for name, e in manifest["files"].items()}
    fields = {k: v for k, v in manifest.items()
              if k not in (*_COMPUTED, "created_at", "uncertain_band")}
    origin = {"version": manifest["version"], "signer": manifest["signer"],
              "manifest_sha256": hashlib.sha256(body).hexdigest()}
    fields.update(uncertain_logit_band=uncertain_logit_band(manifest), version=version,
                  parent_version=parent_version, origin=origin)
    return _build(out_dir, files, {**fields, **overrides}, signing_key)


def pack(bundle_dir: str | os.PathLike) -> bytes:
    """Deterministic tar.gz of a bundle's files (sorted, mtime 0, owner 0)."""
    root, buf = Path(bundle_dir), io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(root)):
            path = root / name
            if path.is_symlink() or not path.is_file():
                raise IntegrityError(f"cannot pack {name!r}: not a regular file")
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(data: bytes, dest_dir: str | os.PathLike,
           max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES) -> Path:
    """Unpack a :func:`pack` archive into ``dest_dir`` (atomically); verify it afterwards.

    Refuses absolute or nested paths, ``..``, links, devices, directories, duplicate or
    oversize members, raising :class:`IntegrityError`. Nothing is written on refusal.
    Like :func:`write_bundle`, replaces an existing bundle at ``dest_dir`` and raises
    ``FileExistsError`` if ``dest_dir`` is something else (a non-empty non-bundle dir).
    """
    if len(data) > max_bytes:
        raise IntegrityError(f"bundle archive is {len(data)} bytes, limit is {max_bytes}")
    # Decompress with a hard cap first so a gzip bomb cannot exhaust memory.
    dec = zlib.decompressobj(wbits=31)
    try:
        raw = dec.decompress(data, max_bytes + 1024 * 1024)
    except zlib.error as exc:
        raise IntegrityError(f"bundle archive is not gzip data: {exc}") from exc
    if dec.unconsumed_tail or not dec.eof or dec.unused_data:
        raise IntegrityError("bundle archive is truncated, has trailing data or is too big")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if not _SAFE_NAME.fullmatch(member.name):
                    raise IntegrityError(f"archive member {member.name!r:.80} has an unsafe path")
                if not member.isreg():
                    raise IntegrityError(f"archive member {member.name!r} is not a regular file")
                if member.name in files or len(files) >= _MAX_MEMBERS:
                    raise IntegrityError(f"archive member {member.name!r} duplicated or too many")
                if sum(map(len, files.values())) + member.size > max_bytes:
                    raise IntegrityError(f"archive contents exceed {max_bytes} bytes")
                files[member.name] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise IntegrityError(f"bundle archive is not a valid tar: {exc}") from exc
    _write_tree(Path(dest_dir), files)
    return Path(dest_dir)
