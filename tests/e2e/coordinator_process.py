"""A coordinator as a real ``python -m coordinator serve`` process for the end-to-end
tests: the CLI, its config, updates posted exactly as an appliance sends them."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from models.core.bundle import read_manifest
from models.core.update_codec import encode
from models.core.weights import head_shapes
from tests.e2e.conftest import CLI_TIMEOUT_S, REPO, ServerProcess, _env, free_port

ADMIN, ADMIN_PASSWORD = "root", "coordinator admin password"
OUTCOME_TIMEOUT_S = 30.0


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


class Coordinator(ServerProcess):
    """One ``python -m coordinator serve`` on loopback; restartable on the same port."""

    def __init__(self, state: Path, log_dir: Path, config: Path | None = None,
                 args: list[str] | None = None) -> None:
        self.port = free_port()
        super().__init__(f"coordinator-{self.port}", log_dir)
        self.state, self.config, self.args = state, config, args or []
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> "Coordinator":
        """Start the process (``args`` and ``env`` added) and wait until ``/healthz``
        answers 200."""
        cmd = [sys.executable, "-m", "coordinator", "serve", "--state-dir", str(self.state),
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        if self.config:
            cmd += ["--config", str(self.config)]
        self.spawn(cmd, env)
        return self

    # --- the device side ---------------------------------------------------------------
    def get(self, path: str, token: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=10)

    def rounds(self, token: str) -> list[dict]:
        response = self.get("/api/v1/rounds", token)
        assert response.status_code == 200, response.text
        return response.json()["rounds"]

    def post_update(self, token: str, update: "Update") -> requests.Response:
        return requests.post(f"{self.url}/api/v1/updates",
                             headers={"Authorization": f"Bearer {token}"},
                             files={"weights": ("update.npz", io.BytesIO(update.payload))},
                             data={"meta": json.dumps(update.meta)}, timeout=30)

    def wait_for_outcome(self, token: str, round_id: int,
                         timeout: float = OUTCOME_TIMEOUT_S) -> dict:
        """The round once its aggregation has run (the reason then starts "outcome:")."""
        deadline = time.monotonic() + timeout
        while True:
            rnd = next(r for r in self.rounds(token) if r["round"] == round_id)
            if (rnd["reason"] or "").startswith("outcome:") or time.monotonic() > deadline:
                return rnd
            time.sleep(0.2)


class Update:
    """A small int8-encoded head delta and its metadata, as an appliance sends them."""

    def __init__(self, state: Path, device_id: str, seed: int, examples: int = 20,
                 local_accuracy: float = 0.75) -> None:
        head = read_manifest(state / "bundles" / "v1")["head"]
        rng = np.random.default_rng(seed)
        delta = {name: rng.normal(0, 0.01, shape).astype(np.float32)
                 for name, shape in head_shapes(head["embedding_dim"], head["hidden"]).items()}
        self.payload, encoding = encode(delta, "int8")
        self.meta = {"device_id": device_id, "base_version": 1, "examples": examples,
                     "update_id": uuid.uuid4().hex, **encoding,
                     "metrics": {"train_epochs": 12, "local_accuracy_before": local_accuracy,
                                 "local_accuracy_after": 0.8, "local_n": 8}}


def path_of(url: str) -> str:
    return urlparse(url).path
