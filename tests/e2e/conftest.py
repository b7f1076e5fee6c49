"""End-to-end fixtures: the appliance as a real ``python -m device serve`` subprocess,
accounts and tokens made with the real CLI, and a headless Debian Chromium driven by
Playwright (screenshot saved when a browser test fails)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest
import requests

from tests.conftest import free_port

if TYPE_CHECKING:  # imported where it is used: that module imports this one
    from tests.e2e.coordinator_process import Coordinator

REPO = Path(__file__).resolve().parents[2]
REAL_SLICE = "yes/Y1.jpg"
PASSWORD = "correct horse battery"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BROWSER_TIMEOUT_MS = 10_000
SETUP_CODE = re.compile(r"setup code (\S+)")


def _env() -> dict[str, str]:
    """The caller's environment minus NEUROEDGE_* settings, plus gpiozero's mock pins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROEDGE_")}
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def device_cli(*args: str, data_dir: Path, stdin: str | None = None) -> str:
    """Run ``python -m device ARGS --data-dir DATA_DIR``; its stdout, or fail loudly."""
    done = subprocess.run([sys.executable, "-m", "device", *args, "--data-dir", str(data_dir)],
                          input=stdin, capture_output=True, text=True, cwd=REPO, env=_env(),
                          timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"python -m device {' '.join(args)} exited {done.returncode}:\n"
                    f"{done.stderr}")
    return done.stdout


def add_user(data_dir: Path, name: str, password: str = PASSWORD, role: str = "admin") -> str:
    device_cli("adduser", name, "--role", role, "--password-stdin", data_dir=data_dir,
               stdin=password + "\n")
    return name


def create_token(data_dir: Path, name: str, user: str) -> str:
    """A new API token; the CLI prints it once, on its last line."""
    return device_cli("token", "create", name, "--user", user,
                      data_dir=data_dir).strip().splitlines()[-1]


class ServerProcess:
    """A server process on loopback with its logs in files (one pair per start): spawn,
    wait for ``/healthz``, SIGKILL or stop. ``verify`` is the CA of a TLS server."""

    verify: str | bool = True

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name, self.log_dir = name, log_dir
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.stderr.log"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def log(self) -> str:
        """The process's stderr so far (for failure messages)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    stderr = log

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``cmd`` (with ``env`` added to the environment) with output in files
        and wait until ``/healthz`` answers 200."""
        self.starts += 1
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=REPO, env={**_env(), **(env or {})})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited {self.proc.returncode} during start-up:\n"
                            f"{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1,
                                verify=self.verify).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"{self.name} gave no 200 on /healthz within {START_TIMEOUT_S:g} s:\n"
                    f"{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL: no clean-up handler runs, as on a power cut; the exit status."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; the exit
        status of a process that stopped on SIGTERM, else None."""
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            return None


class Appliance(ServerProcess):
    """One ``python -m device serve`` process on loopback, logs in files."""

    def __init__(self, data_dir: Path, log_dir: Path, number: int) -> None:
        super().__init__(f"appliance-{number}", log_dir)
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Appliance":
        """Start the process and wait until ``/healthz`` answers 200."""
        self.spawn([sys.executable, "-m", "device", "serve", "--data-dir", str(self.data_dir),
                    "--host", "127.0.0.1", "--port", str(self.port)])
        return self

    def setup_code(self) -> str:
        """The one-time setup code the process logged (only when no account exists)."""
        found = SETUP_CODE.search(self.stderr())
        assert found, f"no setup code in the server log:\n{self.stderr()[-3000:]}"
        return found.group(1)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


class _Started:
    """The server processes one test made: ``started(process)`` keeps one."""

    def __init__(self) -> None:
        self.processes: list[ServerProcess] = []

    @property
    def count(self) -> int:
        return len(self.processes)

    def __call__(self, process: ServerProcess) -> ServerProcess:
        self.processes.append(process)
        return process


@contextmanager
def _processes(request: pytest.FixtureRequest) -> Iterator[_Started]:
    """Every process a test starts is stopped at teardown (killed if it does not stop);
    after a failure, where their logs are is printed."""
    started = _Started()
    try:
        yield started
    finally:
        for process in started.processes:
            process.stop()
        if _failed(request):
            for process in started.processes:
                print(f"{process.name} log: {process.stderr_path}")


@pytest.fixture
def slice_path(data_dir: Path) -> Path:
    return data_dir / REAL_SLICE


@pytest.fixture
def appliance_data(tmp_path: Path) -> Path:
    """An empty data folder for the appliance (the CLI and the server create its files)."""
    return tmp_path / "data"


@pytest.fixture
def start_appliance(appliance_data: Path, tmp_path: Path, request: pytest.FixtureRequest
                    ) -> Iterator[Callable[[], Appliance]]:
    """Start ``python -m device serve`` on ``appliance_data`` (each call a new process on
    a new port); every process is stopped at teardown, killed if it does not stop."""
    with _processes(request) as started:
        yield lambda: started(Appliance(appliance_data, tmp_path, started.count + 1)).start()


@pytest.fixture
def start_coordinator(tmp_path: Path, request: pytest.FixtureRequest
                      ) -> Iterator[Callable[..., Coordinator]]:
    """``start(state, config=None)``: a new coordinator process on a new port; every
    process is stopped at teardown (killed if it does not stop)."""
    from tests.e2e.coordinator_process import Coordinator

    def start(state: Path, config: Path | None = None) -> Coordinator:
        return started(Coordinator(state, tmp_path, config)).start()

    with _processes(request) as started:
        yield start


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where failure screenshots go: ``$NEUROEDGE_E2E_ARTIFACTS`` or the pytest temp dir."""
    env = os.environ.get("NEUROEDGE_E2E_ARTIFACTS")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "e2e-artifacts"


@pytest.fixture
def page(browser, artifacts_dir: Path, request: pytest.FixtureRequest):
    """A fresh browser context (no cookies) and page; screenshot if the test fails."""
    context = browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = context.new_page()
    yield page
    if _failed(request):
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        shot = artifacts_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failed test: {shot} (page {page.url})")
        except Exception as exc:  # a crashed page must not hide the test's own failure
            print(f"could not save a screenshot to {shot}: {exc}")
    context.close()
