"""The coordinator as real ``python -m coordinator serve`` processes: a SIGKILL mid-round
resumes with every acknowledged update, TLS with a CA made by the ``openssl`` CLI, and
the administrator dashboard in Debian's Chromium (Playwright; see conftest.py).

Devices, tokens and administrators are made with the real CLI; updates are int8-encoded
head deltas posted over HTTP exactly as an appliance sends them."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import requests

from coordinator.store.base import AUDIT_FIELDS
from models.core.bundle import read_manifest
from models.core.update_codec import encode
from models.core.weights import head_shapes
from tests.e2e.conftest import (CLI_TIMEOUT_S, REPO, START_TIMEOUT_S, STOP_TIMEOUT_S, _env,
                                _failed, free_port)

ADMIN, ADMIN_PASSWORD = "root", "coordinator admin password"
OUTCOME_TIMEOUT_S = 30.0


# --- helpers -------------------------------------------------------------------------

def coordinator_cli(*args: str, state: Path, stdin: str | None = None) -> str:
    """Run ``python -m coordinator ARGS --state-dir STATE``; its stdout, or fail loudly."""
    done = subprocess.run([sys.executable, "-m", "coordinator", *args, "--state-dir",
                           str(state)], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"python -m coordinator {' '.join(args)} exited {done.returncode}:\n"
                    f"{done.stderr}")
    return done.stdout


def enroll(state: Path, device_id: str) -> str:
    """A device's bearer token: the last line the CLI prints."""
    return coordinator_cli("enroll", device_id, state=state).strip().splitlines()[-1]


def write_config(path: Path, **settings: int) -> Path:
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


class Coordinator:
    """One ``python -m coordinator serve`` on loopback; restartable on the same port."""

    def __init__(self, state: Path, log_dir: Path, config: Path | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.state, self.log_dir, self.config, self.tls = state, log_dir, config, tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: str | bool = str(tls[0]) if tls else True  # tls = (ca, cert, key)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"coordinator-{self.port}-{self.starts}.stderr.log"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() \
            else ""

    def start(self) -> "Coordinator":
        """Start the process and wait until ``/healthz`` answers 200."""
        self.starts += 1
        cmd = [sys.executable, "-m", "coordinator", "serve", "--state-dir", str(self.state),
               "--host", "127.0.0.1", "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[1]), "--tls-key", str(self.tls[2])]
        out_path = self.log_dir / f"coordinator-{self.port}-{self.starts}.stdout.log"
        with open(out_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=REPO, env=_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"coordinator exited {self.proc.returncode} during start-up:\n"
                            f"{self.stderr()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1,
                                verify=self.verify).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"coordinator gave no 200 on /healthz within {START_TIMEOUT_S:g} s:\n"
                    f"{self.stderr()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL: no clean-up runs, as on a power cut."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; the exit code
        of a process that stopped on SIGTERM, else None."""
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

    # --- the device side ---------------------------------------------------------------
    def get(self, path: str, token: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=10, verify=self.verify)

    def rounds(self, token: str) -> list[dict]:
        response = self.get("/api/v1/rounds", token)
        assert response.status_code == 200, response.text
        return response.json()["rounds"]

    def post_update(self, token: str, update: "Update") -> requests.Response:
        return requests.post(f"{self.url}/api/v1/updates",
                             headers={"Authorization": f"Bearer {token}"},
                             files={"weights": ("update.npz", io.BytesIO(update.payload))},
                             data={"meta": json.dumps(update.meta)}, timeout=30,
                             verify=self.verify)

    def wait_for_outcome(self, token: str, round_id: int) -> dict:
        """The round once its aggregation has run (the reason then starts "outcome:")."""
        deadline = time.monotonic() + OUTCOME_TIMEOUT_S
        while True:
            rnd = next(r for r in self.rounds(token) if r["round"] == round_id)
            if (rnd["reason"] or "").startswith("outcome:") or time.monotonic() > deadline:
                return rnd
            time.sleep(0.2)


class Update:
    """A small int8-encoded head delta and its metadata, as an appliance sends them."""

    def __init__(self, state: Path, device_id: str, seed: int, examples: int = 20) -> None:
        head = read_manifest(state / "bundles" / "v1")["head"]
        rng = np.random.default_rng(seed)
        delta = {name: rng.normal(0, 0.01, shape).astype(np.float32)
                 for name, shape in head_shapes(head["embedding_dim"], head["hidden"]).items()}
        self.payload, encoding = encode(delta, "int8")
        self.meta = {"device_id": device_id, "base_version": 1, "examples": examples,
                     "update_id": uuid.uuid4().hex, "metrics": {"accuracy": 0.9}, **encoding}


@pytest.fixture
def start_coordinator(tmp_path: Path, request: pytest.FixtureRequest
                      ) -> Iterator[Callable[..., Coordinator]]:
    """``start(state, config=None, tls=None)``: a new coordinator process on a new port;
    every process is stopped at teardown (killed if it does not stop)."""
    started: list[Coordinator] = []

    def start(state: Path, config: Path | None = None,
              tls: tuple[Path, Path, Path] | None = None) -> Coordinator:
        server = Coordinator(state, tmp_path, config, tls)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
    if _failed(request):
        for server in started:
            print(f"coordinator logs: {tmp_path}/coordinator-{server.port}-*.log")


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for IP 127.0.0.1 signed by it, server key)."""
    folder = tmp_path / "tls"
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=NeuroEdge test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                                       "basicConstraints=critical,CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature\n"
                                       "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", "2", "-days", "1", "-extfile", "server.ext", "-out", "server.pem",
            cwd=folder)
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def path_of(url: str) -> str:
    return urlparse(url).path


def table(page, selector: str) -> list[list[str]]:
    """The text of each data row's cells (the header row left out)."""
    return page.locator(f"{selector} tr").evaluate_all(
        "rows => rows.slice(1).map(r => Array.from(r.cells, c => c.innerText.trim()))")


def sign_in(page, base: str, user: str, password: str):
    """Fill and submit the sign-in form (from wherever the browser is); the POST's
    response."""
    if path_of(page.url) != "/login":
        page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    with page.expect_response(lambda r: path_of(r.url) == "/login"
                              and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return posted.value


# --- tests ---------------------------------------------------------------------------

def test_sigkill_mid_round_resumes_with_the_acknowledged_updates(tmp_path, start_coordinator):
    # Prepare: three devices, a round that needs all three, two updates acknowledged.
    state = tmp_path / "state"
    config = write_config(tmp_path / "coordinator.toml", min_updates=3)
    tokens = {d: enroll(state, d) for d in ("pi-1", "pi-2", "pi-3")}
    server = start_coordinator(state, config)
    updates = {d: Update(state, d, seed=n) for n, d in enumerate(tokens)}
    acks = [server.post_update(tokens[d], updates[d]) for d in ("pi-1", "pi-2")]
    assert [a.status_code for a in acks] == [202, 202], [a.text for a in acks]
    round_id = acks[0].json()["round"]
    assert acks[1].json() == {**acks[1].json(), "round": round_id, "round_closed": False}

    # Execute: power cut, then a restart on the same state folder and port.
    assert server.kill() == -signal.SIGKILL
    server.start()

    # Assert: the open round still holds both acknowledged updates.
    rounds = server.rounds(tokens["pi-3"])
    assert [(r["round"], r["status"], r["updates"]) for r in rounds] == [(round_id, "open", 2)]

    # Execute: pi-1 retries the update whose answer it may have missed.
    retry = server.post_update(tokens["pi-1"], updates["pi-1"])

    # Assert: recognised as the same update, nothing counted twice.
    assert retry.status_code == 200, retry.text
    assert retry.json() == {"update_id": updates["pi-1"].meta["update_id"], "round": round_id,
                            "duplicate": True, "round_closed": False}
    assert server.rounds(tokens["pi-1"])[0]["updates"] == 2

    # Execute: the third device completes the round.
    last = server.post_update(tokens["pi-3"], updates["pi-3"])

    # Assert: the round closes and is aggregated; nothing is published without data.
    assert last.status_code == 202, last.text
    assert last.json()["round"] == round_id and last.json()["round_closed"] is True
    rnd = server.wait_for_outcome(tokens["pi-2"], round_id)
    assert rnd["status"] == "closed" and rnd["updates"] == 3
    assert rnd["published_version"] is None
    assert "publishing disabled" in rnd["reason"], rnd["reason"]
    health = requests.get(f"{server.url}/healthz", timeout=10).json()
    assert health["latest_version"] == 1


def test_tls_serves_https_only_and_devices_work_over_it(tmp_path, start_coordinator,
                                                        tls_files):
    # Prepare
    ca = tls_files[0]
    state = tmp_path / "state"
    token = enroll(state, "pi-1")

    # Execute
    server = start_coordinator(state, tls=tls_files)
    https = requests.get(f"https://127.0.0.1:{server.port}/healthz", verify=str(ca),
                         timeout=10)

    # Assert: verified HTTPS works; the certificate is not trusted without our CA.
    assert https.status_code == 200 and https.json()["status"] == "ok"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{server.port}/healthz", timeout=10)

    # Assert: plain HTTP on the same port gets no answer from the API.
    try:
        plain = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)
    except requests.ConnectionError:
        plain = None
    assert plain is None or plain.status_code >= 400

    # Execute: a device fetches the latest bundle over TLS with its token.
    latest = server.get("/api/v1/bundles/latest", token)

    # Assert: it is v1, and every download link stays on https.
    assert latest.status_code == 200, latest.text
    body = latest.json()
    assert body["version"] == 1
    assert body["files"] and all(u.startswith(f"{server.url}/") for u in body["files"].values())
    manifest = server.get(path_of(body["files"]["manifest.json"]), token)
    assert manifest.status_code == 200 and json.loads(manifest.content)["version"] == 1


def test_tls_server_stops_cleanly_on_sigterm(tmp_path, start_coordinator, tls_files):
    # Prepare
    server = start_coordinator(tmp_path / "state", tls=tls_files)

    # Execute
    started = time.monotonic()
    code = server.stop()

    # Assert: it exits by itself, promptly (not killed after STOP_TIMEOUT_S); a stop that
    # hangs has dumped every thread's stack into the log by then.
    assert code == 0, f"exit code {code}; log:\n{server.stderr()[-8000:]}"
    assert time.monotonic() - started < STOP_TIMEOUT_S


def test_a_stop_that_hangs_dumps_every_threads_stack_and_still_exits(tmp_path):
    # Prepare: a coordinator whose round manager takes longer than STOP_DUMP_S to close
    from coordinator.__main__ import STOP_DUMP_S
    launcher = tmp_path / "slow_stop.py"
    launcher.write_text(textwrap.dedent(f"""
        import sys, time
        from coordinator import rounds
        close = rounds.RoundManager.close
        def slow_close(self):
            time.sleep({STOP_DUMP_S + 2})
            close(self)
        rounds.RoundManager.close = slow_close
        from coordinator.__main__ import main
        sys.exit(main(sys.argv[1:]))
        """))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(launcher), "serve", "--state-dir", str(tmp_path / "state"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        # Execute
        proc.terminate()
        _, err = proc.communicate(timeout=STOP_DUMP_S + 2 + STOP_TIMEOUT_S)
    finally:
        proc.kill()
    # Assert: the log shows where the stop waited, and the process still exits cleanly
    assert "most recent call first" in err and "in slow_close" in err, err[-3000:]
    assert proc.returncode == 0


@pytest.fixture
def dashboard(tmp_path: Path, start_coordinator) -> tuple[Coordinator, dict[str, str]]:
    """A coordinator (min_updates 2) with pi-1, pi-2 and the admin made with the CLI;
    the device tokens."""
    state = tmp_path / "state"
    tokens = {d: enroll(state, d) for d in ("pi-1", "pi-2")}
    coordinator_cli("add-admin", ADMIN, state=state, stdin=ADMIN_PASSWORD + "\n")
    config = write_config(tmp_path / "coordinator.toml", min_updates=2)
    return start_coordinator(state, config), tokens


def test_dashboard_shows_rounds_devices_quality_and_audit(page, dashboard):
    expect = pytest.importorskip("playwright.sync_api").expect
    # Prepare: one round closed by two device updates.
    server, tokens = dashboard
    before = datetime.now(timezone.utc).replace(microsecond=0)
    acks = [server.post_update(tokens[d], Update(server.state, d, seed=n))
            for n, d in enumerate(("pi-1", "pi-2"))]
    assert [a.status_code for a in acks] == [202, 202], [a.text for a in acks]
    round_id = acks[1].json()["round"]
    assert acks[1].json()["round_closed"] is True
    assert server.wait_for_outcome(tokens["pi-1"], round_id)["reason"].startswith("outcome:")

    # Execute: the dashboard needs a session; sign in from the login page it sends us to.
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"
    assert sign_in(page, server.url, ADMIN, ADMIN_PASSWORD).status == 302
    assert path_of(page.url) == "/"

    # Assert: the closed round with its update count.
    expect(page.locator("#rounds")).to_be_visible()
    rounds = {r[0]: r for r in table(page, "#rounds")}
    assert rounds[str(round_id)][1] == "closed"
    assert rounds[str(round_id)][3] == "2"
    assert rounds[str(round_id)][5] == "—"  # nothing published without coordinator data

    # Assert: both devices, pi-1 seen during this test, running v1.
    devices = {r[0]: r for r in table(page, "#devices")}
    assert set(devices) == {"pi-1", "pi-2"}
    seen = datetime.fromisoformat(devices["pi-1"][2]).replace(tzinfo=timezone.utc)
    assert before <= seen <= datetime.now(timezone.utc)
    assert devices["pi-1"][3] == "1" and devices["pi-1"][4] == "active"

    # Assert: the quality plot has v1's evaluated point(s).
    expect(page.locator("svg#quality")).to_be_visible()
    assert page.locator("svg#quality circle").count() >= 1
    assert "v1 auc" in " ".join(page.locator("svg#quality circle title").all_text_contents())

    # Execute: open the audit log from the header.
    page.locator("header").get_by_role("link", name="Audit log").click()
    page.wait_for_url(f"{server.url}/audit")

    # Assert: enrolments and the round's closing are there.
    events = table(page, "#audit")
    enrolled = sorted(e[2] for e in events if e[1] == "device_enrolled")
    closed = [json.loads(e[3]) for e in events if e[1] == "round_closed"]
    assert enrolled == ["pi-1", "pi-2"]
    assert [c["round"] for c in closed] == [round_id]

    # Execute: export the CSV with the browser's session.
    export = page.request.get(f"{server.url}/audit.csv")

    # Assert: a CSV of the same events, with its header line; no session, no CSV.
    assert export.status == 200
    assert export.headers["content-type"].startswith("text/csv")
    text = export.text()
    assert text.splitlines()[0] == ",".join(AUDIT_FIELDS) == "id,at,kind,device_id,detail"
    kinds = [row["kind"] for row in csv.DictReader(io.StringIO(text))]
    assert kinds.count("device_enrolled") == 2 and kinds.count("round_closed") == 1
    anonymous = requests.get(f"{server.url}/audit.csv", timeout=10, allow_redirects=False)
    assert anonymous.status_code == 302 and path_of(anonymous.headers["Location"]) == "/login"


def test_dashboard_needs_a_session_and_refuses_a_wrong_password(page, dashboard):
    expect = pytest.importorskip("playwright.sync_api").expect
    # Prepare
    server, _ = dashboard

    # Execute: no session.
    page.goto(f"{server.url}/")

    # Assert: sent to the sign-in page, with the way back remembered.
    assert path_of(page.url) == "/login"
    assert parse_qs(urlparse(page.url).query) == {"next": ["/"]}

    # Execute: a wrong password.
    response = sign_in(page, server.url, ADMIN, "not the password")

    # Assert: 401, the error shown, still no session.
    assert response.status == 401
    assert path_of(page.url) == "/login"
    expect(page.locator("p.error")).to_have_text("Wrong name or password.")
    expect(page.get_by_role("button", name=re.compile("^Sign out"))).to_have_count(0)
    page.goto(f"{server.url}/")
    assert path_of(page.url) == "/login"
