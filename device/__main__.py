"""The appliance's command line (neuroedge-device, or python -m device): serve the web
appliance, predict files, manage accounts and API tokens, check and roll back bundles.
Every command takes --data-dir and --config."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from device.config import Settings, load_settings
from device.exc import DeviceError, InputError
from models.core.cli import command_parser, run

logger = logging.getLogger("device")


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir, **extra)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port, bundle=args.bundle)
    if args.validate_config:
        print(f"configuration OK: {settings.data_dir}, bundle {settings.bundle}")
        return 0
    from device.accounts import new_setup_code
    from device.services import build_services
    from device.web import create_app
    from device.web.auth import large_body_credential
    from models.core.serving import serve
    svc = build_services(settings)
    app = create_app(settings, svc)
    if svc.accounts.count_users() == 0:
        code = new_setup_code(svc.accounts)
        logger.warning("no account yet: open the URL below and enter the one-time setup "
                       "code %s to create the first administrator", code)
    stop = threading.Event()
    if svc.federation is not None:
        threading.Thread(target=svc.federation.run, args=(stop,), daemon=True,
                         name="federation").start()
    elif settings.transport == "flower":
        threading.Thread(target=svc.follower.run, args=(stop,), daemon=True,
                         name="follow-installed").start()
    url = f"http://{settings.host}:{settings.port}/"
    print(f"NeuroEdge appliance serving on {url} (data in {settings.data_dir})", flush=True)
    # SIGTERM (systemd stop) unwinds through the finally below: pins and store closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(app, large_body_credential(app), **waitress_options(settings))
    finally:
        stop.set()
        svc.close()
    return 0


def waitress_options(settings: Settings) -> dict:
    """Where and how waitress listens; behind a TLS terminator only its forwarded
    client address and scheme are believed. A body is at most a full browser batch (an
    authenticated one: :func:`models.core.serving.serve` refuses anything over 64 KB
    without a valid session or token at its headers)."""
    from device.web import MAX_BATCH_FACTOR
    batch = settings.max_upload_bytes * MAX_BATCH_FACTOR + 2**20  # + the form fields
    options = {"host": settings.host, "port": settings.port, "threads": settings.threads,
               "ident": "neuroedge", "max_request_body_size": batch}
    if settings.trusted_proxy:
        options.update(trusted_proxy=settings.trusted_proxy,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
                       clear_untrusted_proxy_headers=True)
    return options


def _files(names: list[str]) -> list[str]:
    """The files named, a folder's files (not hidden, sorted, not recursive) in its
    place."""
    files = []
    for name in names:
        path = Path(name)
        files += sorted(str(p) for p in path.iterdir() if p.is_file()
                        and not p.name.startswith(".")) if path.is_dir() else [name]
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    """One line per file (a folder: each of its files); a bad file gets an error line and
    the rest go on. Exit 0 only if every file got a prediction."""
    from device.exc import NotASliceError
    from device.imaging import decode_upload
    from device.services import load_predictor, trusted_keys
    from device.sync.bundles import InstalledBundles
    from models.core import preprocess as mp
    settings = _settings(args)
    bundle = args.model
    if bundle is None:  # what the appliance serves: the installed bundle, else the shipped
        bundle = InstalledBundles(settings.data_dir, settings.bundle,
                                  trusted_keys(settings)).current_path()
    predictor = load_predictor(settings, bundle)
    ok, files = 0, _files(args.files)
    for name in files:
        try:
            upload = decode_upload(Path(name).read_bytes(), settings.max_upload_bytes)
            result = predictor.predict(mp.preprocess(upload.pixels, predictor.input_spec))
            if not result.is_slice:
                raise NotASliceError(NotASliceError.message)
            line = {"file": name, "probability": round(result.probability, 6),
                    "label": "tumour" if result.label else "no_tumour",
                    "uncertain": result.uncertain, "model_version": predictor.version}
            ok += 1
        except (OSError, ValueError) as exc:
            line = {"file": name, "error": str(exc)}
        if args.json:
            print(json.dumps(line), flush=True)
        elif "error" in line:
            print(f"{name}: ERROR {line['error']}", flush=True)
        else:
            print(f"{name}: {line['label']}{' (uncertain)' if line['uncertain'] else ''} "
                  f"p={line['probability']:.3f} (model v{line['model_version']})",
                  flush=True)
    if ok < len(files):
        print(f"{len(files) - ok} of {len(files)} file(s) got no prediction",
              file=sys.stderr)
    return 0 if files and ok == len(files) else 1


def _open_accounts(args: argparse.Namespace):
    from device.services import open_stores
    store, accounts = open_stores(_settings(args))
    store.close()
    return accounts


def _read_password(args: argparse.Namespace) -> str:
    """The new password of ``args.name``: a line of stdin, or typed twice."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass(f"Password for {args.name}: ")
    if password != getpass.getpass("Repeat: "):
        raise InputError("passwords differ")
    return password


def cmd_adduser(args: argparse.Namespace) -> int:
    from device.accounts import hash_password
    password_hash = hash_password(_read_password(args), args.name)
    accounts = _open_accounts(args)
    accounts.add_user(args.name, args.role, password_hash)
    accounts.close()
    print(f"user {args.name} ({args.role}) added")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Reset a password, or disable/enable an account; either way the user's open
    sessions end and a sign-in lockout is lifted; a reset also revokes their API tokens."""
    from device.accounts import end_sessions, hash_password, reset_password
    password_hash = hash_password(_read_password(args), args.name) \
        if args.action == "passwd" else ""
    accounts = _open_accounts(args)
    try:
        if args.action == "passwd":
            revoked = reset_password(accounts, args.name, password_hash)
            done = (f"password changed, {revoked} API token{'' if revoked == 1 else 's'} "
                    "revoked")
        else:
            accounts.set_disabled(args.name, args.action == "disable")
            end_sessions(accounts, args.name)
            done = f"{args.action}d"
    finally:
        accounts.close()
    print(f"user {args.name}: {done}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from device.accounts import new_api_token
    if args.action in ("create", "revoke") and not args.name:
        print("error: token create/revoke needs a NAME", file=sys.stderr)
        return 2
    accounts = _open_accounts(args)
    try:
        if args.action == "create":
            user = args.user or args.name
            token = new_api_token(accounts, args.name, user)
            print(f"API token {args.name} for user {user}; it is shown only once:")
            print(token)
        elif args.action == "revoke":
            accounts.revoke_token(args.name)
            print(f"token {args.name} revoked")
        else:
            for t in accounts.list_tokens():
                print(f"{t.name}\t{t.user}\tcreated {t.created_at}\tlast used {t.last_used_at}")
    finally:
        accounts.close()
    return 0


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    from device.services import trusted_keys
    from models.core.bundle import BundleError, verify_bundle
    settings = _settings(args)
    try:
        bundle = verify_bundle(args.bundle, trusted_keys(settings),
                               min_version=args.min_version)
    except BundleError as exc:
        print(f"REFUSED {args.bundle}: {exc}", file=sys.stderr)
        return 1
    print(f"OK {args.bundle}: version {bundle.version}, signer {bundle.signer}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """CURRENT := PREVIOUS (verified first); a running service serves it after a restart."""
    from device.services import trusted_keys
    from device.sync.bundles import InstalledBundles
    from models.core.bundle import read_manifest
    settings = _settings(args)
    bundles = InstalledBundles(settings.data_dir, settings.bundle, trusted_keys(settings))
    path = bundles.rollback()
    print(f"rolled back to {bundles.current_name()} (version {read_manifest(path)['version']});"
          " restart the service to serve it; the version rolled back from is not reinstalled")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path,
                        help="data folder (default $NEUROEDGE_DATA_DIR or a per-user folder)")
    common.add_argument("--config", type=Path, help="TOML settings file")
    p, command = command_parser("device", "neuroedge-device", __doc__, common)

    sp = command("serve", cmd_serve, "serve the web appliance")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--bundle", type=Path, help="bundle directory (default: shipped)")
    sp.add_argument("--validate-config", action="store_true",
                    help="check the configuration and exit")

    sp = command("predict", cmd_predict, "predict files, one line each")
    sp.add_argument("--model", type=Path,
                    help="bundle directory (default: the bundle the appliance serves)")
    sp.add_argument("--json", action="store_true", help="JSON lines")
    sp.add_argument("files", nargs="+", help="image or DICOM files, or folders of them")

    sp = command("adduser", cmd_adduser, "add a clinician or admin")
    sp.add_argument("name")
    sp.add_argument("--role", choices=("clinician", "admin"), default="clinician")
    sp.add_argument("--password-stdin", action="store_true")

    sp = command("user", cmd_user, "reset a password (passwd), or disable/enable an account")
    sp.add_argument("action", choices=("passwd", "disable", "enable"))
    sp.add_argument("name")
    sp.add_argument("--password-stdin", action="store_true", help="passwd: read it from stdin")

    sp = command("token", cmd_token, "API tokens: create, list, revoke")
    sp.add_argument("action", choices=("create", "list", "revoke"))
    sp.add_argument("name", nargs="?", default="")
    sp.add_argument("--user", help="user the token acts for (default: NAME)")

    sp = command("verify-bundle", cmd_verify_bundle,
                 "check a bundle's signature, hashes and version")
    sp.add_argument("bundle", type=Path)
    sp.add_argument("--min-version", type=int)

    command("rollback", cmd_rollback, "serve the previous (last good) bundle again")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser(), argv, (DeviceError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
