"""The federation in-process, over real HTTP on loopback: a real coordinator (its Flask
app on waitress, publishing real int8 bundles from the ``trained_bundle`` fixture's
float weights) and a real appliance (LiteRT, SQLite, its JSON API on waitress).

Slices go through the appliance's API and are confirmed with their true labels; rounds
are driven through ``/api/v1/federation/train`` and ``/sync`` as the button or the
schedule would. Checked: a round trip to v2, that no image leaves the appliance (every
request body the coordinator receives is recorded), predictions during training, a
coordinator that is down, and bundles the appliance must refuse."""
from __future__ import annotations

import io
import re
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from device.config import DEV_PUBLIC_KEY
from device.gate import MIN_GATE_CASES, is_gate_case
from tests.conftest import running, write_destroyed_v2

ADMIN, PASSWORD, API_TOKEN = "alice", "correct horse battery", "ne_federation_admin_token"
DEVICE_ID = "pi-1"
N_SLICES = 24
HEAD_FLOAT_BYTES = 6_209 * 4          # the edge head (192->32->1) as float32
ROUND_TIMEOUT_S = 120
JPEG = re.compile(rb"\xff\xd8\xff[\xc0-\xfe]")   # SOI + the first marker of every JPEG
PNG, DICOM = b"\x89PNG", b"DICM"


# --- servers -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


serve = running  # a chosen port lets a test bring a stopped coordinator back


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


# --- the two parties ---------------------------------------------------------------

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
        return self.call("POST", "/api/v1/predictions", 201,
                         files={"image": ("slice", path.read_bytes())})

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
        train = [label for case_id, label, _ in self.cases if not is_gate_case(case_id)]
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


def slices(small_data: Path) -> list[tuple[Path, int]]:
    """A dataset folder's slices, tumour and normal interleaved."""
    yes = sorted((small_data / "yes").iterdir())
    no = sorted((small_data / "no").iterdir())
    return [pair for both in zip([(p, 1) for p in yes], [(p, 0) for p in no])
            for pair in both]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture
def pair(stack, tmp_path, trained_bundle, small_data, signing_key_file):
    """``pair(data=False, **coordinator_settings)``: a served coordinator and an enrolled,
    served appliance on it."""
    def _pair(data: bool = False, **overrides) -> tuple[Coordinator, Appliance]:
        coord = make_coordinator(stack, tmp_path / "coordinator", trained_bundle,
                                 small_data if data else None, **overrides)
        coord.url = stack.enter_context(serve(coord.app))
        token = coord.enroll(DEVICE_ID)
        device = make_appliance(stack, tmp_path / "device", trained_bundle, signing_key_file,
                                coord.url, token, coord.state_dir / "signing.key.pub")
        return coord, device
    return _pair


# --- (1)+(2): a whole round, recorded at the coordinator ----------------------------

@dataclass
class Flow:
    coord: Coordinator
    device: Appliance
    image_bytes: int
    trained: dict
    first_sync: dict
    round: object
    second_sync: dict
    health: dict
    after: dict
    stored_pngs: list[Path]


@pytest.fixture(scope="module")
def flow(tmp_path_factory, trained_bundle, small_data, signing_key_file) -> Iterator[Flow]:
    """Feed 24 slices, train, send, let the coordinator publish v2, sync again: once."""
    root = tmp_path_factory.mktemp("federation-flow")
    with ExitStack() as stack:
        coord = make_coordinator(stack, root / "coordinator", trained_bundle, small_data,
                                 min_updates=1, publish_margin=1.0)
        coord.url = stack.enter_context(serve(coord.app))
        token = coord.enroll(DEVICE_ID)
        # The local gate judges on the ~6 held-out cases of 24, where one case moves AUC
        # by 0.1-0.25: with the default margin (0.05) it often refuses a fine v2 (seen:
        # "AUC 0.250 vs 0.500 on 5 held-out cases"). This test is about the round trip,
        # so the gate lets any v2 through.
        device = make_appliance(stack, root / "device", trained_bundle, signing_key_file,
                                coord.url, token, coord.state_dir / "signing.key.pub",
                                gate_margin=1.0)
        image_bytes = device.feed(slices(small_data), until=device.trainable)
        trained = device.call("POST", "/api/v1/federation/train")
        first = device.call("POST", "/api/v1/federation/sync")
        rnd = coord.wait_for_round()
        second = device.call("POST", "/api/v1/federation/sync")
        health = device.call("GET", "/healthz")
        after = device.upload(slices(small_data)[-1][0])
        stored = [device.svc.store.image_path(device.svc.store.get(case_id))
                  for case_id, *_ in device.cases]
        yield Flow(coord, device, image_bytes, trained, first, rnd, second, health, after,
                   stored)


def test_confirmed_cases_train_a_small_update_that_comes_back_as_v2(flow):
    coord, device, trained = flow.coord, flow.device, flow.trained

    # Training queued a small int8 delta and measured itself on the held-out gate cases.
    assert trained["action"] == "queued", trained
    assert trained["base_version"] == 1
    gate = sum(is_gate_case(case_id) for case_id, *_ in device.cases)
    assert trained["examples"] == len(device.cases) - gate
    # int8: a quarter of the float head, plus the npz container (a zip entry and a .npy
    # header for each of the 4 arrays, ~1 KB), which compression does not always repay.
    assert 0 < trained["payload_bytes"] <= HEAD_FLOAT_BYTES / 4 + 1_024
    assert trained["local_n"] == gate > 0
    for key in ("local_accuracy_before", "local_accuracy_after"):
        assert 0.0 <= trained[key] <= 1.0
    # The first sync delivered it: the coordinator holds exactly these bytes in a round.
    assert flow.first_sync["sent"] == 1 and flow.first_sync["deferred"] == 0
    assert flow.first_sync["refused_updates"] == 0
    # ...and replaced the shipped bundle (signed with the development key) by the
    # coordinator's v1: the same model, signed with the coordinator's key.
    assert (flow.first_sync["bundle"], flow.first_sync["version"]) == ("installed", 1)
    update = coord.svc.store.get_update(trained["update_id"])
    assert update.device_id == DEVICE_ID and update.base_version == 1
    assert update.bytes == trained["payload_bytes"] == flow.round.bytes_received
    assert update.round_id == flow.round.id and flow.round.n_updates == 1
    # min_updates = 1 closed the round; publish_margin = 1.0 let it publish v2.
    assert flow.round.published_version == 2, flow.round.reason
    assert coord.svc.bundles.latest().version == 2
    # The second sync installed v2: slot, /healthz, pointers, and new predictions.
    assert flow.second_sync["bundle"] == "installed", flow.second_sync
    assert flow.second_sync["version"] == 2 and flow.second_sync["sent"] == 0
    assert device.svc.slot.current.version == 2
    assert flow.health["model_version"] == 2 and flow.health["status"] == "ok"
    assert device.pointer("CURRENT") == "v2" and device.pointer("PREVIOUS") == "v1"
    assert flow.after["model_version"] == 2
    assert not device.fed.outbox.pending()
    # The coordinator heard about the install and shows the device on v2.
    installed = coord.svc.store.audit_events(kind="bundle_installed")
    assert sorted((e.device_id, e.detail["version"]) for e in installed) == [(DEVICE_ID, 1),
                                                                             (DEVICE_ID, 2)]
    assert coord.svc.store.get_device(DEVICE_ID).model_version == 2
    status = device.call("GET", "/api/v1/federation")
    assert status["outbox"] == 0 and status["model_version"] == 2
    assert status["bytes_up"] == flow.second_sync["bytes_up"] > trained["payload_bytes"]


def test_no_image_byte_reaches_the_coordinator(flow):
    received = flow.coord.app.requests
    kinds = {(method, path) for method, path, _ in received}
    # The recorder saw the whole conversation: the update, bundle checks, the report.
    assert ("POST", "/api/v1/updates") in kinds and ("POST", "/api/v1/reports") in kinds
    assert ("GET", "/api/v1/bundles/latest") in kinds
    for method, path, body in received:
        assert not JPEG.search(body), f"JPEG signature in {method} {path}"
        assert PNG not in body, f"PNG signature in {method} {path}"
        assert DICOM not in body, f"DICOM signature in {method} {path}"
    everything = b"".join(body for _, _, body in received)
    print(f"coordinator received {flow.coord.app.body_bytes} body bytes in "
          f"{len(received)} requests; the appliance took {flow.image_bytes} image bytes")
    # Nor any piece of an uploaded file or of the re-encoded PNG the appliance stores,
    # nor a case id.
    for png in flow.stored_pngs:
        data = png.read_bytes()
        for start in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
            assert data[start:start + 32] not in everything
    for case_id, *_ in flow.device.cases:
        assert case_id.encode() not in everything
    # Far less crossed the wire than the images themselves (an update is a few kB).
    assert flow.coord.app.body_bytes < 0.05 * flow.image_bytes, \
        (flow.coord.app.body_bytes, flow.image_bytes)


# --- (3) predictions go on while the head trains -------------------------------------

def test_uploads_succeed_while_a_training_run_is_in_progress(stack, tmp_path, trained_bundle,
                                                             small_data, signing_key_file,
                                                             monkeypatch):
    import device.federation as federation
    from models.core.head import TrainConfig
    # Training needs no coordinator: point the appliance at a port nobody listens on.
    device = make_appliance(stack, tmp_path / "device", trained_bundle, signing_key_file,
                            f"http://127.0.0.1:{free_port()}", "nd_unused", None)
    samples = slices(small_data)
    device.feed(samples, until=device.trainable)
    # Thousands of epochs (no early stop) so that the run lasts a few seconds.
    device.fed.train_config = TrainConfig(epochs=5000, patience=5000)
    started, span = threading.Event(), {}
    real_train = federation.train_head

    def timed_train(*args, **kwargs):
        span["start"] = time.monotonic()
        started.set()
        try:
            return real_train(*args, **kwargs)
        finally:
            span["end"] = time.monotonic()

    monkeypatch.setattr(federation, "train_head", timed_train)
    result: dict = {}
    trainer = threading.Thread(target=lambda: result.update(
        device.call("POST", "/api/v1/federation/train")), daemon=True)
    trainer.start()
    assert started.wait(30), "training did not start"

    state = device.call("GET", "/healthz")["state"]
    second = device.call("POST", "/api/v1/federation/train")
    uploads = []
    fed = len(device.cases)
    for path, _ in samples[fed:fed + 5]:
        begin = time.monotonic()
        response = device.http.post(f"{device.url}/api/v1/predictions", timeout=30,
                                    files={"image": ("slice", path.read_bytes())})
        uploads.append((begin, time.monotonic(), response.status_code))
    trainer.join(timeout=120)

    assert not trainer.is_alive() and result["action"] == "queued", result
    assert [status for _, _, status in uploads] == [201] * 5
    # Every upload started and was answered while the training run was going on.
    assert all(span["start"] < begin and end < span["end"] for begin, end, _ in uploads), \
        (span, uploads)
    assert state == "training"
    assert second["action"] == "busy"     # one training run at a time
    assert device.svc.store.count() == fed + 5
    assert len(device.fed.outbox.pending()) == 1


# --- (4) the coordinator is down -------------------------------------------------------

def test_an_update_made_while_the_coordinator_is_down_is_sent_when_it_is_back(
        stack, tmp_path, trained_bundle, small_data, signing_key_file):
    from device.sync.outbox import Outbox
    coord = make_coordinator(stack, tmp_path / "coordinator", trained_bundle, None)
    token = coord.enroll(DEVICE_ID)
    port = free_port()   # nobody listens here yet
    device = make_appliance(stack, tmp_path / "device", trained_bundle, signing_key_file,
                            f"http://127.0.0.1:{port}", token,
                            coord.state_dir / "signing.key.pub")
    # The default backoff waits 5-10 s after a failure, also for a sync asked for by hand;
    # a 50 ms one keeps the test short (same folder, so the same entries).
    device.fed.outbox = Outbox(device.data_dir, backoff_base=0.05, seed=0)
    device.feed(slices(small_data), until=device.trainable)

    trained = device.call("POST", "/api/v1/federation/train")
    down = device.call("POST", "/api/v1/federation/sync", 503)
    pending = device.fed.outbox.pending()
    status = device.call("GET", "/api/v1/federation")
    health = device.call("GET", "/healthz")
    metrics = device.http.get(f"{device.url}/metrics", timeout=10).text

    # Training needs no coordinator; the failed sync is an error answer, not a result,
    # and the update waits in the outbox with its id and one failed attempt.
    assert trained["action"] == "queued"
    assert set(down) == {"error"} and "unreachable" in down["error"], down
    assert [(e.update_id, e.attempts) for e in pending] == [(trained["update_id"], 1)]
    assert status["outbox"] == 1
    assert health["status"] == "ok" and health["model_version"] == 1
    assert health["last_sync"] is None
    assert 'kind="CoordinatorUnavailable"' in metrics

    with serve(coord.app, port):
        time.sleep(max(0.0, pending[0].next_attempt_at - time.time()) + 0.05)
        back = device.call("POST", "/api/v1/federation/sync")
        update = coord.svc.store.get_update(trained["update_id"])
        health = device.call("GET", "/healthz")

    # (and the coordinator's v1, its key's copy of the shipped model, replaced the shipped)
    assert back["sent"] == 1 and back["deferred"] == 0, back
    assert (back["bundle"], back["version"]) == ("installed", 1), back
    assert update.device_id == DEVICE_ID and update.bytes == trained["payload_bytes"]
    assert device.fed.outbox.pending() == [] and device.fed.outbox.refused() == []
    assert health["last_sync"] is not None


# --- (5) bundles the appliance must refuse ------------------------------------------

def assert_refused_and_reported(coord: Coordinator, device: Appliance, answer: dict,
                                reason: str) -> None:
    assert answer["bundle"] == "refused" and answer["version"] == 2, answer
    assert reason in answer["reason"], answer["reason"]
    refusals = coord.svc.store.audit_events(kind="bundle_refused")
    assert [(e.device_id, e.detail["version"]) for e in refusals] == [(DEVICE_ID, 2)]
    assert reason in refusals[0].detail["reason"]
    assert not coord.svc.store.audit_events(kind="bundle_installed")
    # The appliance keeps serving v1 and kept nothing of the refused bundle.
    assert device.svc.slot.current.version == 1
    assert device.call("GET", "/healthz")["model_version"] == 1
    assert device.pointer("CURRENT") is None
    assert sorted(p.name for p in (device.data_dir / "bundles").iterdir()) == [".lock"]


def destroyed_v2(coord: Coordinator, trained_bundle, small_data: Path) -> None:
    """Publish a validly signed v2 that says "no tumour" to every slice."""
    registry = coord.svc.bundles
    write_destroyed_v2(trained_bundle, small_data, coord.svc.key, registry.path(2))
    assert registry.latest().version == 2


def test_a_bundle_worse_on_local_cases_is_refused_and_reported(pair, trained_bundle,
                                                               small_data, data_dir):
    coord, device = pair()

    def gate_can_fail() -> bool:
        # Held-out cases of both classes, and more tumours found by v1 than the gate
        # forgives (max(1, margin * tumours)): a v2 that finds none misses all of them.
        gate = [(label, predicted) for case_id, label, predicted in device.cases
                if is_gate_case(case_id)]
        tumours = sum(y for y, _ in gate)
        found = gate.count((1, 1))
        return (len(gate) >= MIN_GATE_CASES and 0 < tumours < len(gate)
                and found > max(1.0, device.svc.settings.gate_margin * tumours))

    # Case ids (hence the gate set) are random: the whole dataset leaves room to wait.
    device.feed(slices(data_dir), until=gate_can_fail)
    destroyed_v2(coord, trained_bundle, small_data)

    answer = device.call("POST", "/api/v1/federation/sync")
    after = device.upload(slices(small_data)[-1][0])

    assert_refused_and_reported(coord, device, answer, "local gate")
    assert "sensitivity" in answer["reason"] or "accuracy" in answer["reason"]
    assert after["model_version"] == 1


def test_a_bundle_with_a_bad_signature_is_refused_and_reported(pair):
    from models.core.bundle import SIGNATURE, resign_bundle
    coord, device = pair()
    registry = coord.svc.bundles
    resign_bundle(registry.path(1), registry.path(2), coord.svc.key, version=2,
                  parent_version=1)
    assert registry.get(2).version == 2   # verified (and cached) by the coordinator ...
    signature = registry.path(2) / SIGNATURE
    tampered = bytearray(signature.read_bytes())
    tampered[0] ^= 0xFF
    signature.write_bytes(bytes(tampered))   # ... then altered on its disk

    answer = device.call("POST", "/api/v1/federation/sync")

    assert_refused_and_reported(coord, device, answer, "signature")


def test_training_without_enough_confirmed_cases_is_skipped_with_a_reason(services):
    from device.services import build_federation
    from device.sync.message_link import MessageLink
    fed = build_federation(services, MessageLink(None))

    result = fed.train_now()

    assert result["action"] == "skipped" and "example" in result["reason"]
