"""Ed25519 keys and detached signatures for model bundles (PyNaCl, no TensorFlow).

Key files
---------
The private key file holds two lines: the header ``KEY_HEADER`` and the base64 of the
32-byte seed. It is created with mode 0600 and never silently overwritten. The public
key is written beside it as ``<path>.pub``: one line, 64 hex characters.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Sequence

import nacl.exceptions
import nacl.signing

from models.core.files import write_atomic

log = logging.getLogger(__name__)

KEY_HEADER = "NEUROEDGE-ED25519-SIGNING-KEY-V1"
SIGNATURE_BYTES = 64
_SEED_BYTES = 32


class SignatureError(ValueError):
    """A signature is malformed or no trusted key verifies it."""


class KeyFormatError(ValueError):
    """A key file or key text cannot be parsed."""


def generate_signing_key() -> nacl.signing.SigningKey:
    """Generate a fresh Ed25519 signing key from the OS random source.

    Returns
    -------
    nacl.signing.SigningKey
        The new private key.
    """
    return nacl.signing.SigningKey.generate()


def save_signing_key(key: nacl.signing.SigningKey, path: str | os.PathLike,
                     overwrite: bool = False) -> Path:
    """Write a private key (mode 0600) and its public key (``<path>.pub``).

    Parameters
    ----------
    key : nacl.signing.SigningKey
        The key to store.
    path : str or os.PathLike
        Destination of the private key file.
    overwrite : bool
        Replace existing files; by default an existing key is never touched.

    Returns
    -------
    pathlib.Path
        The path of the public key file.

    Raises
    ------
    FileExistsError
        If either file exists and ``overwrite`` is false.
    """
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite:
        # Check both up front so we never leave a private key without its public half.
        for existing in (path, pub_path):
            if existing.exists():
                raise FileExistsError(f"refusing to overwrite existing key file {existing}")
    seed = base64.b64encode(bytes(key)).decode("ascii")
    # A fresh file either way (the mode is never inherited from an old, possibly
    # world-readable one), and without ``overwrite`` an existing key is refused race-free.
    write_atomic(path, f"{KEY_HEADER}\n{seed}\n".encode("ascii"), mode=0o600,
                 overwrite=overwrite)
    write_atomic(pub_path, (bytes(key.verify_key).hex() + "\n").encode("ascii"), mode=0o644,
                 overwrite=overwrite)
    log.info("wrote signing key %s (key id %s)", path, key_id(key.verify_key))
    return pub_path


def load_signing_key(path: str | os.PathLike) -> nacl.signing.SigningKey:
    """Read a private key written by :func:`save_signing_key`.

    Raises
    ------
    KeyFormatError
        If the file is not a NeuroEdge signing key.
    """
    path = Path(path)
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        # Still usable, but an operator should know the secret is exposed.
        log.warning("signing key %s is readable by group/others; chmod 600 it", path)
    lines = path.read_text(encoding="ascii", errors="replace").split()
    if len(lines) != 2 or lines[0] != KEY_HEADER:
        raise KeyFormatError(f"{path} is not a signing key (expected header {KEY_HEADER})")
    try:
        seed = base64.b64decode(lines[1], validate=True)
    except binascii.Error as exc:
        raise KeyFormatError(f"{path}: key is not valid base64") from exc
    if len(seed) != _SEED_BYTES:
        raise KeyFormatError(f"{path}: seed is {len(seed)} bytes, expected {_SEED_BYTES}")
    return nacl.signing.SigningKey(seed)


def load_public_key(path_or_text: str | os.PathLike) -> nacl.signing.VerifyKey:
    """Load a public key from a ``.pub`` file or from its text (hex or base64).

    Parameters
    ----------
    path_or_text : str or os.PathLike
        A path to a file holding the key, or the key text itself.

    Raises
    ------
    KeyFormatError
        If the text is neither 64 hex characters nor base64 of 32 bytes.
    """
    raw = None if isinstance(path_or_text, os.PathLike) else _decode_key_text(
        str(path_or_text).strip())
    if raw is None:
        path = Path(path_or_text)
        if not path.is_file():
            raise KeyFormatError(
                "public key must be a .pub file, 64 hex characters or base64 of 32 bytes")
        raw = _decode_key_text(path.read_text(encoding="ascii", errors="replace").strip())
        if raw is None:
            raise KeyFormatError(f"{path}: not a public key (expected 64 hex characters)")
    return nacl.signing.VerifyKey(raw)


def _decode_key_text(text: str) -> bytes | None:
    try:
        if len(text) == 2 * _SEED_BYTES:
            raw = bytes.fromhex(text)
        else:
            raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == _SEED_BYTES else None


def key_id(verify_key: nacl.signing.VerifyKey) -> str:
    """Short fingerprint of a public key: the first 16 hex characters of its SHA-256."""
    return hashlib.sha256(bytes(verify_key)).hexdigest()[:16]


def sign(data: bytes, key: nacl.signing.SigningKey) -> bytes:
    """Return the detached 64-byte Ed25519 signature of ``data``."""
    return key.sign(data).signature


def verify(data: bytes, signature: bytes,
           trusted_keys: Sequence[nacl.signing.VerifyKey]) -> str:
    """Check a detached signature against a set of trusted public keys.

    Returns
    -------
    str
        The key id of the trusted key that verified the signature.

    Raises
    ------
    SignatureError
        If no keys are trusted, the signature is malformed, or no key verifies it.
    """
    if not trusted_keys:
        raise SignatureError("no trusted public keys configured; cannot verify signature")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    for trusted in trusted_keys:
        try:
            trusted.verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            continue
        return key_id(trusted)
    raise SignatureError(
        f"signature not made by any of {len(trusted_keys)} trusted key(s)")
