"""The processes of a simulated federation (``python -m coordinator simulate``).

:class:`Cluster` starts a coordinator and N appliances on loopback, each with its own
data folder and token, and drives rounds through the appliances' federation API;
:class:`FlowerCluster` starts the same sites with a real ``flower-superlink``, one
``flower-supernode`` per site and ``flwr run`` carrying the rounds. Appliances are
processes: nothing here imports the device.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from coordinator.rounds import parse_time

ADMIN_PASSWORD = "simulated-clinic-passphrase"
READY_TIMEOUT_S = 120
FLOWER_APP = Path(__file__).resolve().parent / "flower_app"
FLOWER_RUN_TIMEOUT_S = 3600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The coordinator and appliance processes of one transport, started and stopped
    together; ``run_rounds`` drives R rounds and returns one report row per round."""

    def __init__(self, root: Path, n_sites: int, coordinator_data: Path, method: str,
                 initial: Path, publish_margin: float = 0.05, sparsity: float = 0.0,
                 device_extra: str = "", names: list[str] | None = None) -> None:
        self.root, self.procs, self.n = root, [], n_sites
        self.names = names or [f"site-{k}" for k in range(n_sites)]  # as reports name them
        self.device_extra = device_extra  # more device.toml lines for every site
        self.coordinator_data = coordinator_data
        bin_dir = str(Path(sys.executable).parent)  # flower-* and flwr-* live beside python
        self.env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock",
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.state = root / "coordinator"
        self.coord_cfg = root / "coordinator.toml"
        # A site that cannot train this round (too few cases, one class) sends nothing:
        # the deadline then closes the round with the others (quorum 1).
        self.coord_cfg.write_text(
            f"min_updates = {n_sites}\nmin_quorum = 1\nround_deadline_s = 20\n"
            f"method = '{method}'\npublish_margin = {publish_margin}\nmax_norm = 100.0\n"
            f"sparsity = {sparsity}\n"
            f"initial_weights = '{initial / 'model.weights.h5'}'\n")
        try:  # a failed start stops what it started, or servers outlive the run
            self._start_all(initial)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, initial: Path) -> None:
        n_sites, root = self.n, self.root
        self.device_tokens = [
            self._cli("coordinator", "enroll", f"site-{k}", "--state-dir", str(self.state))
            for k in range(n_sites)]
        self.start_coordinator(initial)  # v1: the initial bundle re-signed, which sites ship
        self.sites = []
        for k in range(n_sites):
            data, port = root / f"site-{k}", free_port()
            data.mkdir()
            (data / "device.toml").write_text(
                f"gpio = false\ncamera = false\nsync_interval_s = 86400\n"
                f"bundle = '{self.state / 'bundles' / 'v1'}'\ndevice_id = 'site-{k}'\n"
                f"trusted_keys = ['{self.state / 'signing.key.pub'}']\n"
                f"secret_key = 'sim-{k}'\n" + self.device_settings(k) + self.device_extra)
            common = ["--data-dir", str(data), "--config", str(data / "device.toml")]
            self._cli("device", "adduser", "admin", "--role", "admin", "--password-stdin",
                      *common, stdin=ADMIN_PASSWORD + "\n")
            token = self._cli("device", "token", "create", "sim", "--user", "admin", *common)
            self._start([sys.executable, "-m", "device", "serve", "--port", str(port),
                         *common], log=data / "device.log")
            self.sites.append({"url": f"http://127.0.0.1:{port}", "token": token})
        for site in self.sites:
            self._wait(site["url"])

    # -- what the transports do differently --------------------------------------------
    def start_coordinator(self, initial: Path) -> None:
        self.coord_url = f"http://127.0.0.1:{free_port()}"
        self._start([sys.executable, "-m", "coordinator", "serve", "--state-dir",
                     str(self.state), "--port", self.coord_url.rsplit(":", 1)[1], "--config",
                     str(self.coord_cfg), "--data", str(self.coordinator_data),
                     "--initial-bundle", str(initial / "bundle")],
                    log=self.root / "coordinator.log")
        self._wait(self.coord_url)

    def device_settings(self, k: int) -> str:
        return (f"coordinator_url = '{self.coord_url}'\n"
                f"device_token = '{self.device_tokens[k]}'\n")

    def run_rounds(self, rounds: int, evaluate, before_round=None) -> list[dict]:
        """Train and sync through the appliances' API, as the button or schedule would;
        ``before_round(r)`` (e.g. new confirmed cases) runs before each round's training.
        A round in which no site could train (too few cases, one class) sends nothing and
        is reported with the sites' reasons."""
        rows, version, last_round = [], 1, 0
        up, down = [0] * self.n, [0] * self.n
        for r in range(1, rounds + 1):
            start = time.time()
            if before_round is not None:
                before_round(r)
            trained = [self.call(k, "POST", "/api/v1/federation/train") for k in range(self.n)]
            if not any(t.get("action") == "queued" for t in trained):
                rows.append(round_row(r, None, version, False, "no site could train",
                                      evaluate(version), [0] * self.n, [0] * self.n, trained,
                                      [None] * self.n, time.time() - start, self.names))
                continue
            for k in range(self.n):
                self.call(k, "POST", "/api/v1/federation/sync")
            outcome = wait_for_outcome(self, last_round)
            last_round = outcome["round"]
            synced = [self.call(k, "POST", "/api/v1/federation/sync") for k in range(self.n)]
            version = outcome["published_version"] or version
            rows.append(round_row(
                r, last_round, version, outcome["published_version"] is not None,
                outcome["reason"], evaluate(version),
                [s["bytes_up"] - u for s, u in zip(synced, up)],
                [s["bytes_down"] - d for s, d in zip(synced, down)], trained,
                [s["bundle"] for s in synced], time.time() - start, self.names))
            up, down = [s["bytes_up"] for s in synced], [s["bytes_down"] for s in synced]
        return rows

    def served_versions(self, expected: list[int], timeout: float = 60) -> list[int]:
        """The bundle version each appliance serves, once they serve ``expected`` (or at
        ``timeout``): under Flower the serving process adopts what its ClientApp installed."""
        deadline = time.time() + timeout
        while True:
            served = [self.call(k, "GET", "/healthz")["model_version"] for k in range(self.n)]
            if served == expected or time.time() > deadline:
                return served
            time.sleep(1)

    # -- processes ---------------------------------------------------------------------
    def _cli(self, module: str, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([sys.executable, "-m", module, *args], input=stdin, text=True,
                             capture_output=True, env=self.env)
        if out.returncode:
            raise RuntimeError(f"{module} {args[0]} failed ({out.returncode}): "
                               f"{out.stderr.strip()[-500:]}")
        return out.stdout.strip().splitlines()[-1]

    def _start(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        fh = log.open("w")
        self.procs.append(subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                           env=env or self.env))

    @staticmethod
    def _wait(url: str) -> None:
        deadline = time.time() + READY_TIMEOUT_S
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} did not become healthy")

    def call(self, k: int, method: str, path: str, **kwargs) -> dict:
        site = self.sites[k]
        r = requests.request(method, f"{site['url']}{path}", timeout=300,
                             headers={"Authorization": f"Bearer {site['token']}"}, **kwargs)
        if not r.ok:
            raise RuntimeError(f"site-{k} {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


class FlowerCluster(Cluster):
    """The same sites and coordinator state, with Flower carrying the rounds: a real
    ``flower-superlink`` (TLS, SuperNode authentication), one registered
    ``flower-supernode`` per site (its ClientApp opens the site's data folder), and
    ``flwr run`` submitting the NeuroEdge app, whose ServerApp is the coordinator
    (:mod:`coordinator.flower_server`)."""

    def start_coordinator(self, initial: Path) -> None:
        from coordinator.config import load_settings
        from coordinator.flower_credentials import make_credentials
        from coordinator.services import build_services
        # What `coordinator serve` does on its first start: its key, v1 re-signed.
        build_services(load_settings(self.coord_cfg, state_dir=self.state,
                                     initial_bundle=initial / "bundle")).close()
        # Production settings on loopback: TLS, and only registered SuperNodes admitted.
        self.creds = make_credentials(self.root / "flower-credentials", ["127.0.0.1"],
                                      self.n)
        self.link_port = free_port()
        home = self.root / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f"[superlink]\ndefault = 'local'\n\n[superlink.local]\n"
            f"address = '127.0.0.1:{self.link_port}'\n"
            f"root-certificates = '{self.creds.ca_cert}'\n")
        self.flwr_env = {**self.env, "FLWR_HOME": str(home)}
        self._start(["flower-superlink", "--port", str(self.link_port),
                     "--ssl-certfile", str(self.creds.server_cert),
                     "--ssl-keyfile", str(self.creds.server_key),
                     "--ssl-ca-certfile", str(self.creds.ca_cert), "--enable-supernode-auth",
                     "--disable-runtime-dependency-installation"],
                    log=self.root / "superlink.log", env=self.flwr_env)
        for key in self.creds.node_keys:
            self._register(key.with_name(key.name + ".pub"))

    def _register(self, public_key: Path) -> None:
        """``flwr supernode register`` (retried while the SuperLink starts)."""
        deadline = time.time() + READY_TIMEOUT_S
        while True:
            done = subprocess.run(["flwr", "supernode", "register", str(public_key), "local"],
                                  capture_output=True, text=True, env=self.flwr_env)
            if done.returncode == 0 and "registered" in done.stdout:
                return
            if time.time() > deadline:
                raise RuntimeError(f"could not register {public_key}: {done.stdout[-500:]}")
            time.sleep(1)

    def device_settings(self, k: int) -> str:
        """Start site k's SuperNode (its ClientApp opens the site's data folder); the
        appliance then only serves what that installs."""
        data = self.root / f"site-{k}"
        home = self.root / f"flwr-node-{k}"
        self._start(["flower-supernode", "--superlink", f"127.0.0.1:{self.link_port}",
                     "--root-certificates", str(self.creds.ca_cert),
                     "--auth-supernode-private-key", str(self.creds.node_keys[k]),
                     "--port", str(free_port()),
                     "--node-config", f'data-dir="{data}" config="{data / "device.toml"}"'],
                    log=self.root / f"supernode-{k}.log",
                    env={**self.env, "FLWR_HOME": str(home)})
        return "transport = 'flower'\n"

    def run_rounds(self, rounds: int, evaluate, before_round=None) -> list[dict]:
        """``rounds`` Flower rounds in one ``flwr run``; with ``before_round(r)`` (new
        confirmed cases), one ``flwr run`` of one round each, the callback first: the
        coordinator's state carries on from run to run."""
        start = time.time()
        if before_round is None:
            events = self._flwr_run(rounds, 0)
        else:
            events = []
            for r in range(1, rounds + 1):
                before_round(r)
                events += self._flwr_run(1, len(events))
        rows, version, previous = [], 1, start
        for r, event in enumerate(events, 1):
            d = event.detail
            at = parse_time(event.at)
            version = d["published_version"] or version
            by_device = {s.get("device_id"): s for s in d["sites"]}
            sites = [by_device.get(f"site-{k}", {}) for k in range(self.n)]
            trained = [{**(s.get("train", {}).get("sync", {}).get("train") or {}),
                        "payload_bytes": s.get("update", {}).get("bytes")} for s in sites]
            rows.append(round_row(
                r, d["coordinator_round"], version, d["published_version"] is not None,
                d["outcome"], evaluate(version), [s.get("bytes_up", 0) for s in sites],
                [s.get("bytes_down", 0) for s in sites], trained,
                [s.get("evaluate", {}).get("sync", {}).get("bundle") for s in sites],
                at - previous, self.names))
            previous = at
        return rows

    def _flwr_run(self, rounds: int, before: int) -> list:
        """Run the app for ``rounds`` rounds; the rounds' audit events after the first
        ``before`` ones (RuntimeError naming the log if they are not all there)."""
        from coordinator.store.sqlite import SQLiteCoordinatorStore
        config = (f'state-dir="{self.state}" config="{self.coord_cfg}" '
                  f'data="{self.coordinator_data}" num-rounds={rounds} min-nodes={self.n}')
        log = self.root / "flwr-run.log"
        with log.open("a") as fh:
            done = subprocess.run(["flwr", "run", str(FLOWER_APP), "local", "--stream",
                                   "--run-config", config], stdout=fh,
                                  stderr=subprocess.STDOUT, env=self.flwr_env,
                                  timeout=FLOWER_RUN_TIMEOUT_S)
        store = SQLiteCoordinatorStore(self.state)
        try:
            events = sorted(store.audit_events(kind="flower_round"), key=lambda e: e.id)
        finally:
            store.close()
        if done.returncode != 0 or len(events) != before + rounds:
            raise RuntimeError(f"flwr run exited {done.returncode} after "
                               f"{len(events) - before} of {rounds} rounds; see {log}:\n"
                               f"{log.read_text()[-2000:]}")
        return events[before:]


def wait_for_outcome(cluster: Cluster, after: int, timeout: float = 600) -> dict:
    """The first round newer than ``after`` once the coordinator recorded its outcome."""
    headers = {"Authorization": f"Bearer {cluster.device_tokens[0]}"}
    deadline = time.time() + timeout
    while time.time() < deadline:
        rounds = requests.get(f"{cluster.coord_url}/api/v1/rounds", headers=headers,
                              timeout=10).json()["rounds"]
        for rnd in rounds:
            if rnd["round"] > after and (rnd["reason"] or "").startswith("outcome:"):
                return rnd
        time.sleep(1)
    raise RuntimeError(f"no round after {after} had an outcome within {timeout} s")


def round_row(r: int, coordinator_round: int | None, version: int, published: bool,
              reason: str, result: dict, up: list[int], down: list[int], trained: list[dict],
              installed: list, seconds: float, names: list[str]) -> dict:
    """One report row; the same keys for both transports."""
    return {"round": r, "coordinator_round": coordinator_round, "model_version": version,
            "published": published, "reason": reason, "global_accuracy": result.get("accuracy"),
            "global_auc": result.get("auc"), "global": result,
            "bytes_up_per_device": float(np.mean(up)),
            "bytes_down_per_device": float(np.mean(down)),
            "update_bytes": [t.get("payload_bytes") for t in trained],
            "examples": [t.get("examples") for t in trained],
            "skipped": [f"{name}: {t.get('reason')}" for name, t in zip(names, trained)
                        if t.get("action") == "skipped"],
            "local": [{k: t.get(k) for k in ("local_accuracy_before", "local_accuracy_after",
                                             "local_n")} for t in trained],
            "installed": installed, "seconds": seconds}
