"""``python -m device`` commands in real subprocesses."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import DEFAULT_BUNDLE
from models.core.bundle import resign_bundle
from models.core.passwords import verify
from models.core.signing import load_signing_key

ROOT = Path(__file__).resolve().parents[2]


def run(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    return subprocess.run([sys.executable, "-m", "device", *args, "--data-dir", str(data_dir)],
                          cwd=ROOT, input=stdin, capture_output=True, text=True, env=env,
                          timeout=120)


def test_predict_prints_one_json_line_per_file_and_goes_on_after_a_bad_one(tmp_path,
                                                                           data_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    good = data_dir / "no" / "N1.JPG"

    other = data_dir / "yes/Y1.jpg"

    out = run(tmp_path / "d", "predict", "--json", str(good), str(bad), str(other))

    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1 and "1 of 3 file(s) got no prediction" in out.stderr
    assert [line["file"] for line in lines] == [str(good), str(bad), str(other)]
    assert set(lines[0]) == {"file", "probability", "label", "uncertain", "model_version"}
    assert set(lines[1]) == {"file", "error"}


def test_predict_scores_with_the_installed_bundle_unless_told_otherwise(tmp_path, data_dir):
    bundles = tmp_path / "d" / "bundles"
    resign_bundle(DEFAULT_BUNDLE, bundles / "v2", version=2, parent_version=1,
                  signing_key=load_signing_key(ROOT / "models/dev_keys/dev_signing.key"))
    (bundles / "CURRENT").write_text("v2\n")
    slice_ = str(data_dir / "no" / "N1.JPG")

    served = json.loads(run(tmp_path / "d", "predict", "--json", slice_).stdout)
    shipped = json.loads(run(tmp_path / "d", "predict", "--json", "--model",
                             str(DEFAULT_BUNDLE), slice_).stdout)

    assert (served["model_version"], shipped["model_version"]) == (2, 1)


def test_predict_takes_a_folder_and_says_uncertain_in_its_text(tmp_path, data_dir):
    # Prepare: a folder of two slices and a hidden file; a bundle whose uncertain band
    # covers every probability.
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("N1.JPG", "N2.JPG"):
        shutil.copy(data_dir / "no" / name, folder / name)
    (folder / ".DS_Store").write_bytes(b"\x00")
    wide = tmp_path / "wide"
    resign_bundle(DEFAULT_BUNDLE, wide, version=1, uncertain_logit_band=10.0,
                  signing_key=load_signing_key(ROOT / "models/dev_keys/dev_signing.key"))

    # Execute
    out = run(tmp_path / "d", "predict", "--model", str(wide), str(folder))

    # Assert: both files, in order, each said to be uncertain; every file succeeded.
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == \
        [str(folder / "N1.JPG"), str(folder / "N2.JPG")]
    assert all("(uncertain)" in line for line in lines), lines


def test_predict_exits_non_zero_when_no_file_succeeds(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")

    out = run(tmp_path / "d", "predict", "--json", str(bad), str(tmp_path / "missing.jpg"))

    assert out.returncode == 1
    assert len(out.stdout.splitlines()) == 2


def test_adduser_from_stdin_and_token_create_prints_the_token_last(tmp_path):
    data = tmp_path / "d"

    added = run(data, "adduser", "bob", "--role", "clinician", "--password-stdin",
                stdin="a long enough password\n")
    token = run(data, "token", "create", "pacs", "--user", "bob")
    listed = run(data, "token", "list")

    assert added.returncode == 0 and token.returncode == 0
    assert token.stdout.strip().splitlines()[-1].startswith("ne_")
    assert "pacs\tbob" in listed.stdout
    assert token.stdout.strip().splitlines()[-1] not in listed.stdout


def test_user_resets_a_password_and_disables_and_enables_an_account(tmp_path):
    from device.config import load_settings
    from device.services import open_stores
    data = tmp_path / "d"
    run(data, "adduser", "bob", "--password-stdin", stdin="a long enough password\n")

    reset = run(data, "user", "passwd", "bob", "--password-stdin", stdin="another password!\n")
    disabled = run(data, "user", "disable", "bob")
    unknown = run(data, "user", "disable", "nobody")

    assert reset.returncode == 0 and disabled.returncode == 0
    assert unknown.returncode == 2 and "nobody" in unknown.stderr
    store, accounts = open_stores(load_settings(data_dir=data, gpio=False))
    try:
        bob = accounts.get_user("bob")
        assert bob.disabled and verify(bob.password_hash, "another password!")[0]
    finally:
        store.close(), accounts.close()
    assert run(data, "user", "enable", "bob").returncode == 0
    store, accounts = open_stores(load_settings(data_dir=data, gpio=False))
    try:
        assert not accounts.get_user("bob").disabled
        assert accounts.get_setting("sessions_after:bob")  # its sessions were ended
    finally:
        store.close(), accounts.close()


def test_adduser_refuses_a_short_password(tmp_path):
    out = run(tmp_path / "d", "adduser", "bob", "--password-stdin", stdin="short\n")

    assert out.returncode == 2 and "at least" in out.stderr


def test_verify_bundle_accepts_the_shipped_one_and_refuses_a_tampered_copy(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    head = copy / "head.npz"
    data = bytearray(head.read_bytes())
    data[-10] ^= 0xFF
    head.write_bytes(bytes(data))

    ok = run(tmp_path / "d", "verify-bundle", str(DEFAULT_BUNDLE))
    refused = run(tmp_path / "d", "verify-bundle", str(copy))

    assert ok.returncode == 0 and "OK" in ok.stdout
    assert refused.returncode == 1 and "head.npz" in refused.stderr


@pytest.mark.parametrize("setting, message", [
    ("port = 70000", "port"),
    ("colour = 'blue'", "unknown setting"),
    # Each of these used to pass the check and then stop the appliance at start.
    ("trusted_keys = ['/no/such/coordinator.pub']", "trusted_keys: '/no/such/coordinator.pub'"),
    ("trusted_keys = ['not a key']", "trusted_keys: 'not a key'"),
    ("coordinator_ca = '/no/such/ca.crt'", "coordinator_ca: no file /no/such/ca.crt"),
    ("coordinator_timeout_s = 0", "coordinator_timeout_s: 0"),
    ("train_prox_mu = -1", "train_epochs/train_prox_mu"),
    ("train_rounds_per_cases = 0", "train_rounds_per_cases must be an integer from 1"),
    ("personalise = true\ntransport = 'flower'\ndevice_id = 'pi-1'",
     "personalise: not with transport 'flower'"),
])
def test_serve_validate_config_names_the_bad_setting(tmp_path, setting, message):
    config = tmp_path / "neuroedge.toml"
    config.write_text(setting + "\n")

    out = run(tmp_path / "d", "serve", "--config", str(config), "--validate-config")

    assert out.returncode == 2 and message in out.stderr


def test_serve_validate_config_accepts_a_good_file(tmp_path):
    config = tmp_path / "neuroedge.toml"
    config.write_text("port = 8123\nmax_upload_mb = 10\n")

    out = run(tmp_path / "d", "serve", "--config", str(config), "--validate-config")

    assert out.returncode == 0 and "configuration OK" in out.stdout


def test_a_password_reset_revokes_the_users_api_tokens(tmp_path):
    # Prepare: alice with an API token, bob with another
    from device import accounts as rules
    from device.store import SQLiteAccountStore
    data = tmp_path / "d"
    for name in ("alice", "bob"):
        assert run(data, "adduser", name, "--password-stdin",
                   stdin="an old passphrase\n").returncode == 0
    tokens = {name: run(data, "token", "create", f"{name}-pacs",
                        "--user", name).stdout.split()[-1] for name in ("alice", "bob")}

    # Execute: issue 26, finding 10: an administrator resets alice's password
    reset = run(data, "user", "passwd", "alice", "--password-stdin",
                stdin="a brand new passphrase\n")

    # Assert: whoever copied alice's token is locked out with her old password; bob is not
    accounts = SQLiteAccountStore(data)
    try:
        assert reset.returncode == 0 and "1 API token revoked" in reset.stdout
        assert rules.token_user(accounts, tokens["alice"]) is None
        assert rules.token_user(accounts, tokens["bob"]).name == "bob"
    finally:
        accounts.close()


@pytest.mark.parametrize("password", ["bobbybobbybobby", "qwertyuiop"])
def test_adduser_refuses_a_guessable_password(tmp_path, password):
    done = run(tmp_path / "d", "adduser", "bobby", "--password-stdin", stdin=password + "\n")

    assert done.returncode != 0 and "password" in done.stderr


def test_a_bundle_no_trusted_key_signed_names_the_key_to_trust_and_where(tmp_path, data_dir):
    # Prepare: trust only another key (as an admin who trusts only the coordinator's).
    from models.core.signing import generate_signing_key, save_signing_key
    other = tmp_path / "coordinator.key"
    save_signing_key(generate_signing_key(), other)
    config = tmp_path / "device.toml"
    config.write_text(f"trusted_keys = ['{other}.pub']\n")

    # Execute: anything that loads the shipped model.
    out = run(tmp_path / "d", "predict", "--config", str(config),
              str(data_dir / "no" / "N1.JPG"))

    # Assert: refused, with the key that signed it, where that key is, and where to add it.
    assert out.returncode != 0
    assert "signature not made by any of 1 trusted key(s)" in out.stderr
    assert "models/dev_keys/dev_signing.key.pub" in out.stderr
    assert "trusted_keys" in out.stderr
