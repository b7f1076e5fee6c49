"""Signed model bundles: what the coordinator ships and devices verify before use.

A bundle is a flat directory::

    manifest.json   the signed manifest (:mod:`models.core.manifest`)
    signature       the raw 64-byte Ed25519 signature of the canonical manifest bytes
    model.tflite    the (int8, pruned) model; not parsed here
    head.npz        float head weights, see :mod:`models.core.weights`

:func:`verify_bundle` checks the signature, every listed file's SHA-256 and size, that
no file is unlisted, and the version; :func:`write_bundle` and :func:`resign_bundle`
write one atomically; :func:`pack` and :func:`unpack` carry one as a tar.gz.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
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
from models.core.manifest import (
    ADAPTER, BLOCK, BLOCK_FORMAT, DEFAULT_LABELS, FORMAT, HEAD, MANIFEST, MODEL, SAFE_NAME,
    SIGNATURE, SLICE_HEAD, BundleError, IntegrityError, ManifestError, NotRegularFile,
    SignatureError, VersionError, canonical_bytes, check_manifest, load_checked_manifest, parse,
    read_manifest, read_regular, uncertain_logit_band,
)

__all__ = ["ADAPTER", "BLOCK", "HEAD", "MANIFEST", "MODEL", "SIGNATURE", "SLICE_HEAD", "Bundle",
           "BundleError", "IntegrityError", "ManifestError", "SignatureError", "VersionError",
           "canonical_bytes", "check_bundle_target", "pack", "read_manifest",
           "resign_bundle", "uncertain_logit_band", "unpack", "verify_bundle",
           "write_bundle", "written_fields"]

log = logging.getLogger(__name__)

DEFAULT_MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
_MAX_MEMBERS = 64
_COMPUTED = ("format", "files", "signer", "head")  # set by the writer, never by callers


def _read_checked(root: Path, name: str, entry: Mapping[str, Any]) -> bytes:
    try:
        data = read_regular(root / name, entry["bytes"] + 1)
    except NotRegularFile:
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

    @property
    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the block's adapter arrays; empty without one."""
        spec = self.manifest.get("block") or {}
        if not spec.get("adapter_rank"):
            return {}
        from models.core.block import LORA_A, LORA_B, block_shapes
        shapes = block_shapes(spec["input"], spec["channels"], spec["adapter_rank"])
        return {LORA_A: shapes[LORA_A], LORA_B: shapes[LORA_B]}

    @property
    def update_shapes(self) -> dict[str, tuple[int, ...]]:
        """What clinics train and send: the head, and the block's adapter if it has one."""
        return {**self.head_shapes, **self.adapter_shapes}

    def read_file(self, name: str) -> bytes:
        """Read a listed file, re-checking its hash (it may have changed since verify)."""
        if name not in self.manifest["files"]:
            raise IntegrityError(f"{name!r:.80} is not listed in the manifest")
        return _read_checked(self.path, name, self.manifest["files"][name])

    def load_head(self) -> dict[str, np.ndarray]:
        """Load the head weights, validated against the manifest's shapes."""
        return weights.load_head(self.read_file(HEAD), expected_shapes=self.head_shapes)

    def load_block(self) -> dict[str, np.ndarray] | None:
        """The last block's arrays (format 3), validated against the manifest's shapes;
        None for a bundle without one."""
        spec = self.manifest.get("block")
        if spec is None:
            return None
        from models.core.block import block_shapes
        arrays = weights.load_arrays(self.read_file(BLOCK),
                                     block_shapes(spec["input"], spec["channels"]))
        if self.adapter_shapes:
            arrays.update(weights.load_arrays(self.read_file(ADAPTER), self.adapter_shapes))
        return arrays

    def load_slice_check(self) -> tuple[dict[str, np.ndarray], float] | None:
        """The "not a brain MRI slice" head and its threshold, or None if the bundle has
        none. The head reads the same embedding as the tumour head."""
        check = self.manifest.get("slice_check")
        if check is None:
            return None
        dim = self.manifest["head"]["embedding_dim"]
        head = weights.load_head(self.read_file(SLICE_HEAD))
        if head["hidden/kernel"].shape[0] != dim:
            raise IntegrityError(f"{SLICE_HEAD} reads {head['hidden/kernel'].shape[0]} "
                                 f"features, the model's embedding has {dim}")
        return head, float(check["threshold"])


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
    manifest, body = load_checked_manifest(root)
    try:
        sig = read_regular(root / SIGNATURE, signing.SIGNATURE_BYTES + 1)
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
                "metrics": {}, "training": {}, **fields,
                "format": BLOCK_FORMAT if "block" in fields else FORMAT,
                "head": {"embedding_dim": int(dim), "hidden": int(hidden)},
                "signer": signing.key_id(key.verify_key),
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                          for name, data in sorted(files.items())}}
    manifest = parse(canonical_bytes(manifest))  # normalise tuples etc. to what is signed
    check_manifest(manifest)
    body = canonical_bytes(manifest)
    _write_tree(Path(out_dir), {**files, MANIFEST: body + b"\n",
                                SIGNATURE: signing.sign(body, key)})
    log.info("wrote bundle version %s signed by %s", manifest["version"], manifest["signer"])
    return manifest


def write_bundle(out_dir: str | os.PathLike, model_bytes: bytes,
                 head_arrays: Mapping[str, np.ndarray], manifest_fields: Mapping[str, Any],
                 signing_key: nacl.signing.SigningKey,
                 slice_head: Mapping[str, np.ndarray] | None = None,
                 block: Mapping[str, np.ndarray] | None = None) -> dict:
    """Write and sign a bundle atomically, replacing an existing bundle at ``out_dir``.

    ``manifest_fields`` supplies version, architecture, input, threshold,
    uncertain_logit_band and optionally created_at, parent_version, labels, metrics,
    training; format, files, head and signer are computed. Returns the manifest as
    signed. Raises ManifestError or weights.WeightsError before writing anything, and
    ``FileExistsError`` if ``out_dir`` is a file, a symlink or a non-empty directory that
    is not a bundle. A ``slice_head`` is written as ``slice_head.npz``; the fields then
    need ``slice_check``. A ``block`` is written as ``block.npz`` (format 3), its adapter
    arrays if any as ``adapter.npz``; the fields then need ``block``.
    """
    # The head and the adapter change with every federated version: deflated, a pruned
    # head is half the bytes. What a version carries unchanged keeps its bytes.
    files = {MODEL: bytes(model_bytes), HEAD: weights.head_to_bytes(head_arrays, True)}
    if slice_head is not None:
        files[SLICE_HEAD] = weights.head_to_bytes(slice_head)
    if block is not None:
        from models.core.block import LORA_A, LORA_B
        adapter = {k: v for k, v in block.items() if k in (LORA_A, LORA_B)}
        files[BLOCK] = weights.arrays_to_bytes({k: v for k, v in block.items()
                                                if k not in adapter})
        if adapter:
            files[ADAPTER] = weights.arrays_to_bytes(adapter, True)
    return _build(out_dir, files, manifest_fields, signing_key)


def written_fields(manifest: Mapping[str, Any]) -> dict:
    """The fields of a manifest that a new bundle written from it takes over: all but
    those the writer computes, and its creation time."""
    return {k: v for k, v in manifest.items() if k not in (*_COMPUTED, "created_at")}


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
    manifest, body = load_checked_manifest(src)
    files = {name: _read_checked(src, name, e) for name, e in manifest["files"].items()}
    fields = written_fields(manifest)
    fields.pop("uncertain_band", None)
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
                if not SAFE_NAME.fullmatch(member.name):
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
