"""Shared fixtures: the real dataset, a small balanced copy of it, a signing key, a
coordinator (services, app, server, enrolment) for the coordinator and device tests."""
from __future__ import annotations

import shutil
import socket
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor_dataset"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "yes").is_dir():
        pytest.skip(f"shared dataset not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 tumour + 24 normal slices copied from the real dataset (a fast training set)."""
    root = tmp_path_factory.mktemp("small_data")
    for label in ("yes", "no"):
        (root / label).mkdir()
        for src in sorted((data_dir / label).iterdir())[:24]:
            shutil.copy(src, root / label / src.name)
    return root


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.core.signing import generate_signing_key, save_signing_key
    path = tmp_path_factory.mktemp("keys") / "signing.key"
    save_signing_key(generate_signing_key(), path)
    return path


@pytest.fixture(scope="session")
def trained_bundle(small_data: Path, signing_key_file: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real bundle (edge, 10 epochs on 48 slices) and its float weights, via the CLI.

    Pruning distils, so the bundle is as good as its 10 epochs make it: a 3-epoch model
    called every slice healthy at the 0.25 threshold, and the gate tests need one that
    finds tumours."""
    from models.__main__ import main
    out = tmp_path_factory.mktemp("trained")
    bundle, weights = out / "bundle", out / "model.weights.h5"
    code = main(["train", "--data", str(small_data), "--arch", "edge", "--out", str(bundle),
                 "--sign-key", str(signing_key_file), "--epochs", "10", "--sparsity", "0.5",
                 "--float-out", str(weights)])
    assert code == 0
    return bundle, weights


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def coord_settings(tmp_path):
    """Coordinator settings on a temp state folder (a round closes at 2 updates)."""
    from coordinator.config import load_settings
    return load_settings(state_dir=tmp_path / "state", min_updates=2, min_quorum=1,
                         max_norm=10.0)


@pytest.fixture
def coord(coord_settings):
    from coordinator.services import build_services
    svc = build_services(coord_settings)
    yield svc
    svc.close()


@pytest.fixture
def coord_app(coord_settings, coord):
    from coordinator.api import create_app
    app = create_app(coord_settings, coord, "test-secret")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def coord_server(coord_app):
    """A real waitress server on 127.0.0.1 (ephemeral port) in a background thread."""
    with running(coord_app) as url:
        yield url


@pytest.fixture
def enroll(coord):
    """Enrol a device; returns its bearer token."""
    from coordinator.api.auth import hash_token, new_device_token

    def _enroll(device_id: str) -> str:
        token = new_device_token()
        coord.store.enroll(device_id, hash_token(token))
        return token
    return _enroll


@contextmanager
def running(app, port: int = 0) -> Iterator[str]:
    """A real waitress server for ``app`` on 127.0.0.1 (``port`` 0: ephemeral); yields
    its URL."""
    from waitress.server import create_server
    srv = create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.effective_port}"
    finally:
        def stop() -> None:  # runs in the server's loop thread: no race with select()
            for channel in list(srv._map.values()):
                channel.close()
            srv._map.clear()

        # Workers first: a worker still streaming a response the client cut could
        # otherwise touch a channel after stop() closed it and its fd was reused (seen
        # in CI as EBADF on the next server's wake-up pipe).
        srv.task_dispatcher.shutdown()
        try:
            srv.trigger.pull_trigger(stop)
        except OSError:  # the pipe is gone all the same: close from here, loop then ends
            with suppress(OSError):
                stop()
        thread.join(timeout=10)


def write_destroyed_v2(trained_bundle: tuple[Path, Path], small_data: Path, key,
                       out: Path) -> Path:
    """A validly signed v2 of ``trained_bundle`` whose head says "no tumour" to every
    slice (output bias -50): built from the real float weights and converted to int8,
    calibrated on 8 small-set slices, like a real bundle."""
    import numpy as np

    from models.training.architectures import build_model, get_head, set_head
    from models.core.bundle import read_manifest, write_bundle
    from models.training.export import to_tflite
    from models.core.preprocess import InputSpec, preprocess, read_image
    bundle, weights = trained_bundle
    manifest = read_manifest(bundle)
    model = build_model(manifest["architecture"])
    model.load_weights(str(weights))
    head = get_head(model)
    head["output/bias"] = np.array([-50.0], np.float32)
    set_head(model, head)
    spec = InputSpec.from_dict(manifest["input"])
    calibration = np.stack([preprocess(read_image(p), spec)
                            for p in sorted((small_data / "yes").iterdir())[:4]
                            + sorted((small_data / "no").iterdir())[:4]])
    fields = {k: manifest[k] for k in ("architecture", "input", "labels", "threshold",
                                       "uncertain_logit_band")}
    write_bundle(out, to_tflite(model, "int8", calibration=calibration), head,
                 {**fields, "version": 2, "parent_version": 1}, key)
    return out


# --- the fault suite's closing line -------------------------------------------------
_fault_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each fault test's outcome: failed if any phase failed, else that of its call."""
    if "fault" not in report.keywords or _fault_outcomes.get(report.nodeid) == "failed":
        return
    if report.failed:
        _fault_outcomes[report.nodeid] = "failed"
    elif report.when == "call" or report.skipped:
        _fault_outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter) -> None:
    """``faults: N passed, M failed`` (and skipped, if any) when fault tests ran."""
    if not _fault_outcomes:
        return
    outcomes = list(_fault_outcomes.values())
    count = {k: outcomes.count(k) for k in ("passed", "failed", "skipped")}
    line = f"faults: {count['passed']} passed, {count['failed']} failed"
    terminalreporter.write_line(line + (f", {count['skipped']} skipped"
                                        if count["skipped"] else ""))
