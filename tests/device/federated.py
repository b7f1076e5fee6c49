"""The two parties of the in-process federation tests: a real coordinator (its Flask
app on waitress, every request body recorded) and a real appliance (LiteRT, SQLite, its
JSON API on waitress), and the slices fed to it through that API."""
from __future__ import annotations

import io
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from device.config import DEV_PUBLIC_KEY
from device.gate import held_out
from tests.conftest import running


ADMIN, PASSWORD, API_TOKEN = "alice", "correct horse battery", "ne_federation_admin_token"
DEVICE_ID = "pi-1"
N_SLICES = 24
ROUND_TIMEOUT_S = 120
serve = running  # a chosen port lets a test bring a stopped coordinator back


# What a clinic types or names its files with: kept on the appliance only.
CLINIC_TEXT = ("ACC-SECRET", "left frontal, seen by Dr Who", "DOE_JANE")


class Recorder:
    """WSGI middleware: keeps every request body the wrapped app receives, verbatim."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        with self._lock:
            self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    @property
    def body_bytes(self) -> int:
        return sum(len(body) for _, _, body in self.requests)


@dataclass
class Coordinator:
    svc: object
    app: Recorder
    state_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    url: str = ""

    def enroll(self, device_id: str) -> str:
        from coordinator.api.auth import hash_token, new_device_token
        token = new_device_token()
        self.svc.store.enroll(device_id, hash_token(token))
        self.tokens[device_id] = token
        return token

    def wait_for_round(self) -> object:
        """The round that just closed, once its outcome is recorded."""
        self.svc.rounds.pending.result(timeout=ROUND_TIMEOUT_S)
        return self.svc.store.list_rounds()[0]


def make_coordinator(stack: ExitStack, state_dir: Path, trained_bundle, data: Path | None,
                     **overrides) -> Coordinator:
    """Coordinator services on ``trained_bundle`` (re-signed as v1 with its own key)."""
    from coordinator.api import create_app
    from coordinator.config import load_settings
    from coordinator.services import build_services
    bundle, weights = trained_bundle
    settings = load_settings(state_dir=state_dir, initial_bundle=bundle,
                             initial_weights=weights, data=data, **overrides)
    svc = build_services(settings)
    stack.callback(svc.close)
    return Coordinator(svc, Recorder(create_app(settings, svc, "coordinator-secret")),
                       state_dir)


@dataclass
class Appliance:
    svc: object
    url: str
    http: requests.Session
    data_dir: Path
    # (case id, true label, label predicted by the bundle in service)
    cases: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def fed(self):
        return self.svc.federation

    def call(self, method: str, path: str, status: int = 200, **kwargs) -> dict:
        response = self.http.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        assert response.status_code == status, f"{path}: {response.status_code} " \
                                               f"{response.text[:500]}"
        return response.json()

    def upload(self, path: Path) -> dict:
        """Upload as a clinic would: with its own reference, a note and a file name that
        may hold a patient's name (:data:`CLINIC_TEXT`: none of it may leave)."""
        n = len(self.cases)
        return self.call("POST", "/api/v1/predictions", 201,
                         files={"image": (f"{CLINIC_TEXT[2]}-{n}.jpg", path.read_bytes())},
                         data={"reference": f"{CLINIC_TEXT[0]}-{n}", "note": CLINIC_TEXT[1]})

    def feed(self, samples: list[tuple[Path, int]], at_least: int = N_SLICES,
             until: Callable[[], bool] = lambda: True) -> int:
        """Upload and confirm slices with their true labels: ``at_least`` of them, then
        more until ``until()`` holds (case ids, hence the gate set, are random).
        Returns the image bytes uploaded."""
        sent = 0
        for path, label in samples:
            if len(self.cases) >= at_least and until():
                break
            case = self.upload(path)
            answer = self.call("POST", f"/api/v1/cases/{case['case_id']}/label",
                               json={"label": label})
            predicted = int(case["label"] == "tumour")
            assert answer["status"] == ("confirmed" if predicted == label else "disagreed")
            self.cases.append((case["case_id"], label, predicted))
            sent += path.stat().st_size
        assert len(self.cases) >= at_least and until(), "ran out of slices"
        return sent

    def trainable(self) -> bool:
        """Held-out cases to measure on, and both classes among the cases to train on."""
        gate = held_out(self.svc.store, [case_id for case_id, *_ in self.cases])
        train = [label for (_, label, _), g in zip(self.cases, gate) if not g]
        return len(train) < len(self.cases) and len(train) >= 8 and 0 < sum(train) < len(train)

    def pointer(self, name: str) -> str | None:
        path = self.data_dir / "bundles" / name
        return path.read_text().strip() if path.exists() else None


def make_appliance(stack: ExitStack, data_dir: Path, trained_bundle, signing_key_file: Path,
                   coordinator_url: str, token: str, coordinator_key: Path | None, **overrides
                   ) -> Appliance:
    """The appliance as ``python -m device serve`` builds it, plus an admin API token."""
    from device.config import load_settings
    from device.services import build_services
    from device.web import create_app
    from device.accounts import hash_password, hash_token
    settings = load_settings(data_dir=data_dir, bundle=trained_bundle[0], gpio=False,
                             camera=False, secret_key="t", coordinator_url=coordinator_url,
                             device_id=DEVICE_ID, device_token=token,
                             trusted_keys=[str(k) for k in (coordinator_key, DEV_PUBLIC_KEY,
                                                            f"{signing_key_file}.pub") if k],
                             **overrides)
    svc = build_services(settings)
    stack.callback(svc.close)
    svc.accounts.add_user(ADMIN, "admin", hash_password(PASSWORD))
    svc.accounts.add_token("script", hash_token(API_TOKEN), ADMIN)
    url = stack.enter_context(serve(create_app(settings, svc)))
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {API_TOKEN}"
    stack.callback(http.close)
    return Appliance(svc, url, http, data_dir)


def round_trip(stack: ExitStack, root: Path, initial, data: Path, signing_key_file: Path,
               **device_settings) -> tuple[Coordinator, Appliance]:
    """A served coordinator on ``initial`` that closes a round on one update and publishes
    what runs, and an enrolled appliance on it whose local gate takes any version: for
    tests of the round trip, not of the gates. (The local gate judges on the ~6 held-out
    cases of 24, where one case moves AUC by 0.1-0.25: with the default margin it often
    refuses a fine v2, e.g. "AUC 0.250 vs 0.500 on 5 held-out cases".)"""
    coord = make_coordinator(stack, root / "coordinator", initial, data, min_updates=1,
                             publish_margin=1.0)
    coord.url = stack.enter_context(serve(coord.app))
    token = coord.enroll(DEVICE_ID)
    device = make_appliance(stack, root / "device", initial, signing_key_file, coord.url,
                            token, coord.state_dir / "signing.key.pub",
                            **{"gate_margin": 1.0, **device_settings})
    return coord, device


def slices(small_data: Path) -> list[tuple[Path, int]]:
    """A dataset folder's slices, tumour and normal interleaved."""
    yes = sorted((small_data / "yes").iterdir())
    no = sorted((small_data / "no").iterdir())
    return [pair for both in zip([(p, 1) for p in yes], [(p, 0) for p in no])
            for pair in both]
