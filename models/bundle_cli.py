"""``python -m models keygen | sign | verify``: keys, signatures and checks of bundles."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.core.bundle import BundleError, read_manifest, resign_bundle, verify_bundle
from models.core.cli import positive_int
from models.core.signing import (generate_signing_key, key_id, load_public_key, load_signing_key,
                                 save_signing_key)

DEV_PUBLIC_KEY = Path(__file__).resolve().parent / "dev_keys" / "dev_signing.key.pub"


def cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_signing_key()
    try:
        pub = save_signing_key(key, args.out, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc} (use --force to replace it)", file=sys.stderr)
        return 1
    print(f"private key {args.out} (mode 0600), public key {pub}, key id "
          f"{key_id(key.verify_key)}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = load_signing_key(args.key)
    src = read_manifest(args.bundle)
    out = args.out or args.bundle
    if args.add_adapter:
        from models.training.adapter_bundle import add_adapter
        if args.version is not None or args.parent_version is not None:
            raise ValueError("--add-adapter keeps the bundle's version")
        add_adapter(args.bundle, out, key, rank=args.add_adapter)
        print(f"signed {out} as version {src['version']} with an adapter of rank "
              f"{args.add_adapter} on its last block, key {key_id(key.verify_key)}")
        return 0
    version = src["version"] if args.version is None else args.version
    parent = src.get("parent_version") if args.parent_version is None else args.parent_version
    resign_bundle(args.bundle, out, key, version=version, parent_version=parent)
    print(f"signed {out} as version {version} with key {key_id(key.verify_key)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    keys = [load_public_key(k) for k in (args.public_key or [DEV_PUBLIC_KEY])]
    try:
        bundle = verify_bundle(args.bundle, keys, min_version=args.min_version)
    except BundleError as exc:
        print(f"REFUSED {args.bundle}: {exc}", file=sys.stderr)
        return 1
    print(f"OK {args.bundle}: version {bundle.version}, signer {bundle.signer}, "
          f"{bundle.manifest['architecture']}, threshold {bundle.threshold:.3f}")
    return 0


def add_commands(sub) -> None:
    """keygen, sign and verify, on the sub-parsers ``sub``."""
    sp = sub.add_parser("keygen", help="create an Ed25519 signing key (mode 0600)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--force", action="store_true", help="replace an existing key")
    sp.set_defaults(func=cmd_keygen)

    sp = sub.add_parser("sign", help="(re-)sign a bundle with a key")
    sp.add_argument("bundle")
    sp.add_argument("--key", required=True)
    sp.add_argument("--version", type=positive_int, help="default: the bundle's own")
    sp.add_argument("--parent-version", type=positive_int,
                    help="default: the bundle's own")
    sp.add_argument("--add-adapter", type=positive_int, metavar="RANK",
                    help="add a low-rank adapter to the last block (no effect until "
                         "clinics train it; they then share it with the head)")
    sp.add_argument("--out", help="write the signed bundle here (default: in place)")
    sp.set_defaults(func=cmd_sign)

    sp = sub.add_parser("verify", help="verify a bundle's signature, hashes and version")
    sp.add_argument("bundle")
    sp.add_argument("--public-key", action="append",
                    help="trusted public key file or text (repeatable; default: dev key)")
    sp.add_argument("--min-version", type=positive_int,
                    help="refuse a bundle older than this version")
    sp.set_defaults(func=cmd_verify)
