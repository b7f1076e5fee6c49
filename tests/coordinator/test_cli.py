"""``python -m coordinator`` as real subprocesses on a temp ``--state-dir``: the signing
key, device enrolment and revocation (against a running server), administrators, and
``serve --validate-config`` on a TOML settings file."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from coordinator.api.auth import hash_token
from models.core.passwords import verify
from coordinator.store.sqlite import DB_NAME, SQLiteCoordinatorStore
from models.core.signing import load_public_key, load_signing_key

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0
ADMIN_PASSWORD = "a long enough password"


def coordinator(*args: str, state: Path, stdin: str | None = None,
                config: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m coordinator ARGS --state-dir STATE`` (no NEUROEDGE_* env leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROEDGE_")}
    extra = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "coordinator", *args, "--state-dir",
                           str(state), *extra], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=CLI_TIMEOUT_S)


def enroll(state: Path, device_id: str) -> str:
    done = coordinator("enroll", device_id, state=state)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def state_bytes(state: Path) -> bytes:
    """The database with its WAL/SHM side files, wherever SQLite left the rows."""
    return b"".join(p.read_bytes() for p in sorted(state.glob(f"{DB_NAME}*")))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_keygen_writes_a_0600_key_and_its_public_half(state):
    # Execute
    done = coordinator("keygen", state=state)

    # Assert: the private key is owner-only, the .pub matches it.
    assert done.returncode == 0, done.stderr
    key, pub = state / "signing.key", state / "signing.key.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_public_key(pub) == load_signing_key(key).verify_key
    assert str(key) in done.stdout


def test_a_second_keygen_refuses_unless_forced(state):
    # Prepare
    assert coordinator("keygen", state=state).returncode == 0
    key = state / "signing.key"
    original = key.read_bytes()

    # Execute
    refused = coordinator("keygen", state=state)

    # Assert: exit 1, a reason, the key devices trust is untouched.
    assert refused.returncode == 1
    assert "refusing" in refused.stderr and "--force" in refused.stderr
    assert key.read_bytes() == original

    # Execute: a deliberate rotation.
    forced = coordinator("keygen", "--force", state=state)

    # Assert: a new key, still owner-only, with a matching public key.
    assert forced.returncode == 0, forced.stderr
    assert key.read_bytes() != original
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_public_key(state / "signing.key.pub") == load_signing_key(key).verify_key


def test_enroll_prints_the_token_last_and_stores_only_its_hash(state):
    # Execute
    done = coordinator("enroll", "pi-1", state=state)

    # Assert
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert token.startswith("nd_") and len(token) > 30
    stored = state_bytes(state)
    assert token.encode() not in stored
    assert hash_token(token).encode() in stored


def test_enrolling_an_active_device_again_fails(state):
    # Prepare
    enroll(state, "pi-1")

    # Execute
    again = coordinator("enroll", "pi-1", state=state)

    # Assert: a clear error and no new token printed.
    assert again.returncode != 0
    assert "already enrolled" in again.stderr
    assert "nd_" not in again.stdout


def test_a_revoked_token_gets_401_from_the_running_server(coord_settings, coord_server):
    # Prepare: the server runs on the state folder the CLI writes to.
    state = coord_settings.state_dir
    token = enroll(state, "pi-1")
    auth = {"Authorization": f"Bearer {token}"}
    before = requests.get(f"{coord_server}/api/v1/bundles/latest", headers=auth, timeout=10)

    # Execute
    done = coordinator("revoke", "pi-1", state=state)

    # Assert: the token worked before and is refused now.
    assert before.status_code == 200
    assert done.returncode == 0 and "revoked" in done.stdout
    after = requests.get(f"{coord_server}/api/v1/bundles/latest", headers=auth, timeout=10)
    assert after.status_code == 401


def test_revoking_an_unknown_device_fails_clearly(state):
    # Prepare
    enroll(state, "pi-1")

    # Execute
    done = coordinator("revoke", "pi-9", state=state)

    # Assert
    assert done.returncode != 0
    assert "no such device" in done.stderr


def test_add_admin_reads_the_password_from_stdin(state):
    # Execute
    done = coordinator("add-admin", "alice", state=state, stdin=ADMIN_PASSWORD + "\n")

    # Assert: the admin exists with a hash of exactly that password.
    assert done.returncode == 0, done.stderr
    store = SQLiteCoordinatorStore(state)
    try:
        admin = store.get_admin("alice")
    finally:
        store.close()
    assert admin is not None
    assert verify(admin.password_hash, ADMIN_PASSWORD) == (True, False)  # argon2id
    assert ADMIN_PASSWORD.encode() not in state_bytes(state)


def test_add_admin_refuses_a_short_password(state):
    # Execute
    done = coordinator("add-admin", "alice", state=state, stdin="short\n")

    # Assert: exit 2, the rule is stated, nobody was added.
    assert done.returncode == 2
    assert "at least 10 characters" in done.stderr
    store = SQLiteCoordinatorStore(state)
    try:
        assert store.get_admin("alice") is None
    finally:
        store.close()


@pytest.mark.parametrize("toml, setting", [
    ("port = 70000", "port"),
    ('method = "average"', "method"),
    ('min_updates = "many"', "min_updates"),
    ("min_update = 3", "min_update"),
    ('tls_cert = "/nonexistent/c.pem"\ntls_key = "/nonexistent/k.pem"', "tls_cert"),
])
def test_validate_config_names_the_bad_setting(state, tmp_path, toml, setting):
    # Prepare
    config = tmp_path / "coordinator.toml"
    config.write_text(toml + "\n")

    # Execute
    done = coordinator("serve", "--validate-config", state=state, config=config)

    # Assert
    assert done.returncode == 2
    assert setting in done.stderr


def test_validate_config_accepts_a_good_file(state, tmp_path):
    # Prepare
    config = tmp_path / "coordinator.toml"
    config.write_text('min_updates = 3\nmin_quorum = 2\nmethod = "median"\nport = 9443\n')

    # Execute
    done = coordinator("serve", "--validate-config", state=state, config=config)

    # Assert
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout


def test_flower_credentials_are_made_once_and_never_replaced(tmp_path):
    pytest.importorskip("flwr")
    out = tmp_path / "flower"
    argv = [sys.executable, "-m", "coordinator", "flower-credentials", "--out", str(out),
            "--host", "link.example.org", "--nodes", "2"]

    first = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                           timeout=CLI_TIMEOUT_S)
    made = {p.name: p.read_bytes() for p in out.iterdir()}
    again = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                           timeout=CLI_TIMEOUT_S)

    assert first.returncode == 0, first.stderr
    assert set(made) == {"ca.crt", "superlink.crt", "superlink.key", "supernode-0",
                         "supernode-0.pub", "supernode-1", "supernode-1.pub"}
    assert again.returncode == 1 and "refusing" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == made


def test_simulate_checks_its_json_folder_before_the_run(tmp_path):
    # A simulation takes minutes; its report used to be lost at the end to a missing folder.
    done = subprocess.run([sys.executable, "-m", "coordinator", "simulate", "--data",
                           str(tmp_path), "--json", str(tmp_path / "out" / "r.json")],
                          capture_output=True, text=True, cwd=REPO, timeout=CLI_TIMEOUT_S)

    assert done.returncode == 2 and "--json: no folder" in done.stderr
