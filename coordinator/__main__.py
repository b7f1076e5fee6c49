"""The coordinator's command line (neuroedge-coordinator, or python -m coordinator):
serve the API and dashboard, keys, device enrolment, administrators, Flower
credentials, and a simulated federation on this machine."""
from __future__ import annotations

import argparse
import faulthandler
import logging
import secrets
import signal
import sys
import threading
from pathlib import Path

from coordinator.config import Settings, load_settings
from coordinator.exc import CoordinatorError
from models.core.cli import command_parser, json_out, positive_int, run, sparsity
from models.core.files import create_once

logger = logging.getLogger("coordinator")
TICK_S = 5.0
# A stop still running this long after SIGTERM (in the server, the store or the joining
# of threads at exit) writes every thread's stack to stderr, the journal under systemd,
# so a hang shows where it waits.
STOP_DUMP_S = 5.0


def _exit_on_sigterm(*_: object) -> None:
    """SIGTERM (systemd stop) -> SystemExit in the main thread, with a stack-dump watchdog.

    The exit unwinds through ``cmd_serve``'s ``finally`` (store closed).
    """
    faulthandler.dump_traceback_later(STOP_DUMP_S, exit=False)
    sys.exit(0)


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    return load_settings(args.config, state_dir=args.state_dir, **extra)


def _secret_key(settings: Settings) -> str:
    """The dashboard's session key, created 0600 from the start (never world-readable)."""
    key = create_once(settings.state_dir / "session_key", secrets.token_hex(32).encode())
    return key.decode().strip()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port,
                         initial_bundle=args.initial_bundle, data=args.data)
    if args.validate_config:
        print(f"configuration OK: state in {settings.state_dir}")
        return 0
    from coordinator.api import create_app
    from coordinator.services import build_services
    svc = build_services(settings)
    app = create_app(settings, svc, _secret_key(settings))
    stop = threading.Event()

    def tick() -> None:  # round deadlines
        while not stop.wait(TICK_S):
            try:
                svc.rounds.tick()
            except Exception:  # keep ticking; the error is in the log
                logger.exception("deadline check failed")

    threading.Thread(target=tick, daemon=True, name="deadline").start()
    print(f"NeuroEdge coordinator on http://{settings.host}:{settings.port}/ "
          f"(state in {settings.state_dir}, latest bundle v{svc.bundles.latest().version})",
          flush=True)
    try:
        from coordinator.api.auth import large_body_credential
        from models.core.serving import serve
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        serve(app, large_body_credential(app), **waitress_options(settings))
    finally:
        stop.set()
        svc.close()
    return 0


def waitress_options(settings: Settings) -> dict:
    """Plain HTTP for loopback behind the TLS terminator (waitress buffers a request
    before a thread sees it, so idle or slow clients hold no worker). Bodies over 64 KB
    need a device token (:func:`models.core.serving.serve`)."""
    options = {"host": settings.host, "port": settings.port, "threads": settings.threads,
               "ident": "neuroedge-coordinator",
               # an update's limit plus its form fields; waitress would spool up to 1 GiB
               "max_request_body_size": int((settings.max_update_mb + 1) * 2**20)}
    if settings.trusted_proxy:
        options.update(trusted_proxy=settings.trusted_proxy,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
                       clear_untrusted_proxy_headers=True)
    return options


def cmd_keygen(args: argparse.Namespace) -> int:
    from coordinator.services import signing_key_path
    from models.core.signing import (generate_signing_key, key_id, load_signing_key,
                                     save_signing_key)
    settings = _settings(args)
    path = signing_key_path(settings.state_dir)
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        pub = save_signing_key(generate_signing_key(), path, overwrite=args.force)
    except FileExistsError:
        print(f"error: {path} exists; refusing to replace the signing key (devices trust "
              "it). Use --force only to rotate it deliberately.", file=sys.stderr)
        return 1
    print(f"signing key {path} (mode 0600); public key {pub}; key id "
          f"{key_id(load_signing_key(path).verify_key)}")
    return 0


def cmd_flower_credentials(args: argparse.Namespace) -> int:
    from coordinator.flower_credentials import make_credentials
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; refusing to replace Flower credentials "
              "(SuperNodes registered with them would be locked out)", file=sys.stderr)
        return 1
    creds = make_credentials(args.out, args.host, args.nodes)
    print(f"CA {creds.ca_cert} (give it to every SuperNode); SuperLink certificate "
          f"{creds.server_cert} and key {creds.server_key} (mode 0600); "
          f"{len(creds.node_keys)} SuperNode key(s): register each .pub with "
          "`flwr supernode register`, copy the private key to its Pi only")
    return 0


def _store(args: argparse.Namespace):
    from coordinator.store.sqlite import SQLiteCoordinatorStore
    settings = _settings(args)
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SQLiteCoordinatorStore(settings.state_dir)


def cmd_enroll(args: argparse.Namespace) -> int:
    from coordinator.api.auth import hash_token, new_device_token
    store = _store(args)
    try:
        token = new_device_token()
        store.enroll(args.device_id, hash_token(token))
        store.audit("device_enrolled", args.device_id, {})
        print(f"device {args.device_id} enrolled; its token is shown only once:")
        print(token)
    finally:
        store.close()
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.revoke(args.device_id)
        store.audit("device_revoked", args.device_id, {})
        print(f"device {args.device_id} revoked")
    finally:
        store.close()
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from models.core.passwords import WeakPasswordError, hash_password
    try:  # the rules of models.core.passwords (NIST SP 800-63B)
        password_hash = hash_password(sys.stdin.readline().rstrip("\n"), args.name)
    except WeakPasswordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = _store(args)
    try:
        store.add_admin(args.name, password_hash)
        store.audit("admin_added", None, {"name": args.name})
    finally:
        store.close()
    print(f"administrator {args.name} added")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from coordinator.simulate import print_table, simulate, write_report
    if args.partition == "sites":
        from coordinator.site_federation import print_sites_table, simulate_sites
        names = lambda text: [s for s in text.split(",") if s]  # noqa: E731
        report = simulate_sites(
            args.data, args.rounds, args.cases_per_round, names(args.clinics),
            names(args.initial_sites), args.holdout_site or None, args.method, args.arch,
            args.seed, args.epochs, args.initial, args.publish_margin, args.sparsity,
            args.device_setting, adapter_rank=args.adapter_rank, transport=args.transport,
            rounds_per_arrival=args.rounds_per_arrival)
        print_sites_table(report)
    else:
        report = simulate(args.data, args.sites, args.rounds, args.partition, args.method,
                          args.arch, args.seed, args.epochs, transport=args.transport,
                          initial=args.initial, publish_margin=args.publish_margin)
        print_table(report)
    if args.json:
        write_report(report, Path(args.json))
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, help="state folder (default "
                        "$NEUROEDGE_COORD_STATE_DIR or a per-user folder)")
    common.add_argument("--config", type=Path, help="TOML settings file")
    p, command = command_parser("coordinator", "neuroedge-coordinator", __doc__, common)
    sp = command("serve", cmd_serve, "serve the coordinator API")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--initial-bundle", type=Path)
    sp.add_argument("--data", type=Path, help="the coordinator's own labelled images")
    sp.add_argument("--validate-config", action="store_true")
    sp = command("keygen", cmd_keygen, "create the Ed25519 signing key")
    sp.add_argument("--force", action="store_true", help="replace an existing key")
    command("enroll", cmd_enroll, "enrol a device; prints its token").add_argument("device_id")
    command("revoke", cmd_revoke, "revoke a device").add_argument("device_id")
    command("add-admin", cmd_admin,
            "add a dashboard administrator (password on stdin)").add_argument("name")
    sp = command("flower-credentials", cmd_flower_credentials,
                 "TLS CA, SuperLink certificate and SuperNode keys for Flower", shared=False)
    sp.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    sp.add_argument("--host", action="append", required=True,
                    help="SuperLink host name or IP (repeat for several)")
    sp.add_argument("--nodes", type=int, default=1, help="SuperNode keys to make")
    _simulate_args(command("simulate", cmd_simulate,
                           "a federation of real processes on this machine", shared=False))
    return p


def _simulate_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--sites", type=int, default=3)
    sp.add_argument("--rounds", type=int, default=3, help="rounds in all (--partition "
                    "sites: arrivals of cases times --rounds-per-arrival)")
    sp.add_argument("--partition", default="iid",
                    help="paper, iid, dirichlet:ALPHA, or sites (each manifest site a clinic)")
    sp.add_argument("--clinics", default="site_tcga_lgg_du,site_tcga_lgg_ht,"
                    "site_tcga_lgg_cs,site_tcga_lgg_fg",
                    help="--partition sites: the sites that take part, comma-separated")
    sp.add_argument("--initial-sites", default="kaggle_navoneel",
                    help="--partition sites: what the vendor's initial model learns from")
    sp.add_argument("--holdout-site", default="site_ljubljana_ms",
                    help="--partition sites: a site that never joins, only measures "
                    "('' for none)")
    sp.add_argument("--cases-per-round", type=int, default=10,
                    help="--partition sites: confirmed cases per clinic at each arrival")
    sp.add_argument("--rounds-per-arrival", type=positive_int, default=5,
                    help="--partition sites: rounds between two arrivals of cases (the "
                    "devices train the same cases again in between; default 5, the "
                    "devices' train_rounds_per_cases)")
    sp.add_argument("--initial", type=Path, help="a folder with bundle/ and "
                    "model.weights.h5 to start from instead of training one")
    sp.add_argument("--publish-margin", type=float, default=0.05,
                    help="the coordinator's publishing gate (1.0 publishes what runs)")
    sp.add_argument("--sparsity", type=sparsity, default=0.0,
                    help="--partition sites: the share of the head's hidden layer pruned "
                    "at each publication (default 0: none)")
    sp.add_argument("--device-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="--partition sites: a device.toml setting of every clinic "
                    "(TOML value; repeat)")
    sp.add_argument("--adapter-rank", type=int, default=0, metavar="R", help="--partition "
                    "sites: clinics also train a rank-R adapter on the last block (0: no)")
    sp.add_argument("--method", default="fedavg")
    sp.add_argument("--arch", default="edge")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=int, help="cap on the initial model's epochs")
    sp.add_argument("--transport", choices=("http", "flower"), default="http",
                    help="our HTTP coordinator, or Flower SuperLink/SuperNodes")
    sp.add_argument("--json", type=json_out, help="write the full report to this file")


def main(argv: list[str] | None = None) -> int:
    return run(parser(), argv, (CoordinatorError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
