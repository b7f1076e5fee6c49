"""Power-cut safety of the federation with real processes: a ``python -m coordinator
serve`` and a ``python -m device serve`` on loopback (tokens and accounts made with the
real CLIs, the coordinator's initial bundle and float weights copied from the
``trained_bundle`` fixture). The appliance is SIGKILLed while it trains its head and
while it installs a new bundle, then restarted on the same data folder: it must answer,
serve a bundle that verifies (the old or the new one, never a broken one), have lost no
confirmed case, and complete the next sync."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from device.config import DEV_PUBLIC_KEY
from device.store.sqlite import SQLiteCaseStore
from device.sync.bundles import InstalledBundles
from device.sync.outbox import Outbox
from models.core.bundle import verify_bundle
from models.core.signing import load_public_key
from tests.e2e.conftest import (CLI_TIMEOUT_S, REPO, ServerProcess, _env, add_user,
                                create_token, free_port)

pytestmark = pytest.mark.fault
DEVICE_ID = "pi-1"
N_SLICES = 24
KILL_TRAINING_AFTER_S = 0.3
OUTCOME_TIMEOUT_S = 120.0
INSTALL_MARKER = "bundle pointer PREVIOUS"   # device.sync.bundles: the install's 1st pointer
# ``python -m device`` with a head trainer that runs EPOCHS epochs without early stopping,
# so that a kill lands while it trains (on 24 cases the default run takes ~50 ms).
SLOW_TRAINING = (
    "import sys\n"
    "from device.config import Settings\n"
    "from models.core.head_training import TrainConfig\n"
    "epochs = int(sys.argv[1])\n"
    "Settings.train_config = lambda self: TrainConfig(epochs=epochs, patience=epochs)\n"
    "from device.__main__ import main\n"
    "sys.exit(main(sys.argv[2:]))\n")
SLOW_EPOCHS = 200_000   # about a minute: far longer than the test waits


class Process(ServerProcess):
    """One server process on loopback with its logs in files; ``start`` waits for
    ``/healthz``."""

    def start(self, argv: list[str]) -> "Process":
        """``argv`` gets ``--host 127.0.0.1 --port P`` (a new free port each start)."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.spawn([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port)])
        return self


@dataclass
class Site:
    """The coordinator process and one appliance (process, data folder, tokens)."""

    coordinator: Process
    device: Process
    data_dir: Path
    config: Path
    shipped: Path
    api_token: str
    device_token: str
    trusted: list = field(default_factory=list)
    confirmed: int = 0

    def start_device(self, slow_training: bool = False) -> Process:
        common = ["serve", "--data-dir", str(self.data_dir), "--config", str(self.config)]
        argv = ["-c", SLOW_TRAINING, str(SLOW_EPOCHS), *common] if slow_training \
            else ["-m", "device", *common]
        return self.device.start(argv)

    def call(self, method: str, path: str, timeout: float = 120, **kwargs) -> dict:
        response = requests.request(method, f"{self.device.url}{path}", timeout=timeout,
                                    headers={"Authorization": f"Bearer {self.api_token}"},
                                    **kwargs)
        assert response.status_code in (200, 201), \
            f"{path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def rounds(self) -> list[dict]:
        return requests.get(f"{self.coordinator.url}/api/v1/rounds", timeout=10, headers={
            "Authorization": f"Bearer {self.device_token}"}).json()["rounds"]

    def latest_version(self) -> int:
        return requests.get(f"{self.coordinator.url}/healthz",
                            timeout=10).json()["latest_version"]

    def wait_for_outcome(self, after: int) -> dict:
        """The first round newer than ``after`` once the coordinator recorded its outcome."""
        deadline = time.monotonic() + OUTCOME_TIMEOUT_S
        while time.monotonic() < deadline:
            for rnd in self.rounds():
                if rnd["round"] > after and (rnd["reason"] or "").startswith("outcome:"):
                    return rnd
            time.sleep(0.25)
        pytest.fail(f"no round after {after} had an outcome within {OUTCOME_TIMEOUT_S:g} s:"
                    f"\n{self.coordinator.log()[-3000:]}")

    def train_and_send(self) -> dict:
        """Train, send the update, wait for its round; returns the round."""
        last = max((r["round"] for r in self.rounds()), default=0)
        trained = self.call("POST", "/api/v1/federation/train")
        assert trained["action"] == "queued", trained
        synced = self.call("POST", "/api/v1/federation/sync")
        assert synced["sent"] == 1 and synced["deferred"] == 0, synced
        return self.wait_for_outcome(last)

    # -- what must hold after a crash -----------------------------------------------

    def confirmed_cases(self) -> int:
        """Confirmed cases in the SQLite store, read directly (the device is stopped)."""
        assert not self.device.alive()
        store = SQLiteCaseStore(self.data_dir)
        try:
            return store.count("confirmed") + store.count("disagreed")
        finally:
            store.close()

    def check_serving(self, versions: set[int]) -> int:
        """The restarted appliance answers and serves a verified bundle; its version."""
        health = requests.get(f"{self.device.url}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "ok" and body["store_ok"] is True
        assert body["model_version"] in versions, body
        installed = InstalledBundles(self.data_dir, self.shipped, self.trusted)
        served = verify_bundle(installed.current_path(), self.trusted)
        assert served.version == body["model_version"]
        assert not (self.data_dir / "bundles" / "staging").exists()   # start-up cleared it
        return served.version


def copy_initial(trained_bundle, root: Path) -> Path:
    """The coordinator's initial model folder: ``bundle/`` and ``model.weights.h5``."""
    bundle, weights = trained_bundle
    shutil.copytree(bundle, root / "bundle")
    shutil.copyfile(weights, root / "model.weights.h5")
    return root


def coordinator_cli(*args: str, state: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "coordinator", *args, "--state-dir",
                           str(state)], capture_output=True, text=True, cwd=REPO, env=_env(),
                          timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, trained_bundle, small_data, signing_key_file) -> Iterator[Site]:
    """A coordinator (min_updates 1, publish_margin 1.0) and an appliance that has
    analysed and confirmed 24 real slices through its API (started with slow training)."""
    root = tmp_path_factory.mktemp("federation-e2e")
    initial = copy_initial(trained_bundle, root / "initial")
    state = root / "coordinator"
    (root / "coordinator.toml").write_text(
        "min_updates = 1\nmin_quorum = 1\npublish_margin = 1.0\n"
        f"initial_weights = '{initial / 'model.weights.h5'}'\n")
    device_token = coordinator_cli("enroll", DEVICE_ID, state=state)
    coordinator = Process("coordinator", root)
    coordinator.start(["-m", "coordinator", "serve", "--state-dir", str(state), "--config",
                       str(root / "coordinator.toml"), "--data", str(small_data),
                       "--initial-bundle", str(initial / "bundle")])
    data_dir = root / "device"
    data_dir.mkdir()
    pub, shipped_key = state / "signing.key.pub", f"{signing_key_file}.pub"
    config = root / "device.toml"
    # gate_margin: on ~6 held-out cases one case moves AUC by 0.1-0.25, so the default
    # (0.05) would refuse a fine v2 by chance, and there would be no swap to interrupt.
    config.write_text(
        "gpio = false\ncamera = false\nsync_interval_s = 86400\ngate_margin = 1.0\n"
        f"bundle = '{initial / 'bundle'}'\ncoordinator_url = '{coordinator.url}'\n"
        f"device_id = '{DEVICE_ID}'\ndevice_token = '{device_token}'\n"
        f"trusted_keys = ['{pub}', '{DEV_PUBLIC_KEY}', '{shipped_key}']\n"
        "secret_key = 'e2e'\n")
    add_user(data_dir, "alice")
    site = Site(coordinator, Process("device", root), data_dir, config, initial / "bundle",
                create_token(data_dir, "script", "alice"), device_token,
                [load_public_key(k) for k in (pub, DEV_PUBLIC_KEY, shipped_key)])
    try:
        site.start_device(slow_training=True)
        yes = sorted((small_data / "yes").iterdir())[:N_SLICES // 2]
        no = sorted((small_data / "no").iterdir())[:N_SLICES // 2]
        for path, label in [p for pair in zip([(y, 1) for y in yes], [(n, 0) for n in no])
                            for p in pair]:
            case = site.call("POST", "/api/v1/predictions",
                             files={"image": ("slice", path.read_bytes())})
            site.call("POST", f"/api/v1/cases/{case['case_id']}/label", json={"label": label})
        site.confirmed = N_SLICES
        yield site
    finally:
        site.device.stop()
        coordinator.stop()
        print(f"logs in {root}")


def background(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error``."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except requests.RequestException as exc:   # the server died under the request
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_kill_9_mid_training_loses_nothing_and_the_next_round_completes(site: Site):
    if not site.device.alive():
        site.start_device(slow_training=True)
    killed_log = site.device.stderr_path

    # Execute: ask for a training run, SIGKILL the appliance while it trains.
    thread, out = background(lambda: site.call("POST", "/api/v1/federation/train"))
    time.sleep(KILL_TRAINING_AFTER_S)
    site.device.kill()
    thread.join(timeout=15)
    outbox_files = sorted(p.name for p in (site.data_dir / "outbox").iterdir()
                          if p.is_file())
    confirmed = site.confirmed_cases()
    site.start_device()   # the default trainer from here on
    version = site.check_serving({1})

    # Assert: the kill landed mid-training (no answer, no "queued" in the log), nothing
    # half-written was queued, and every confirmed case is still there.
    assert not thread.is_alive() and "error" in out, out
    assert "head trained on" not in killed_log.read_text(errors="replace")
    assert outbox_files == []
    assert confirmed == site.confirmed
    assert version == 1
    # ... and the federation goes on: train, send, a round that publishes v2.
    rnd = site.train_and_send()
    assert rnd["updates"] == 1 and rnd["published_version"] == 2, rnd
    assert Outbox(site.data_dir).pending() == []


def test_kill_9_mid_swap_serves_a_verified_bundle_and_the_next_sync_installs(site: Site):
    if not site.device.alive():
        site.start_device()
    before = site.check_serving({1, 2, 3, 4})
    if site.latest_version() <= before:   # the first test did not leave a newer bundle
        rnd = site.train_and_send()
        assert rnd["published_version"] == before + 1, rnd
    new = site.latest_version()
    assert new > before

    # Execute: sync; SIGKILL as soon as the appliance starts installing the new bundle.
    proc = site.device
    thread, out = background(lambda: site.call("POST", "/api/v1/federation/sync"))
    deadline = time.monotonic() + 60
    while INSTALL_MARKER not in proc.log() and thread.is_alive() \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    site.device.kill()
    thread.join(timeout=15)
    killed_log = proc.log()
    confirmed = site.confirmed_cases()
    pointers = {name: (site.data_dir / "bundles" / name).read_text().strip()
                for name in ("CURRENT", "PREVIOUS")
                if (site.data_dir / "bundles" / name).exists()}
    site.start_device()
    served = site.check_serving({before, new})
    print(f"killed mid-swap with pointers {pointers}; restarted on v{served}")

    # Assert: the kill interrupted the install (marker logged, no answer to the sync).
    assert INSTALL_MARKER in killed_log, killed_log[-3000:]
    assert "error" in out, out
    assert confirmed == site.confirmed
    # The next sync completes and leaves the new version in service.
    synced = site.call("POST", "/api/v1/federation/sync")
    assert synced["bundle"] == ("none" if served == new else "installed"), synced
    assert site.check_serving({new}) == new
    assert (site.data_dir / "bundles" / "CURRENT").read_text().strip() == f"v{new}"
    site.device.stop()
    assert site.confirmed_cases() == site.confirmed
