"""Fault: a service killed (SIGKILL) at a named step (``NEUROEDGE_CRASH_AT``,
:mod:`models.core.crash_points`), then restarted on the same folder.

- The coordinator while it publishes a round's bundle: built but not recorded, recorded
  but not in place, in place but the round's outcome not written. The round must end
  with exactly one new version, verified, served, with its float weights, and the next
  round must build on it.
- The appliance after the coordinator acknowledged its update, before the outbox let
  go of it. The next sync sends it again and the coordinator counts it once.

Nothing lost, nothing applied twice."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import requests

from models.core.crash_points import ENV
from device.sync.outbox import Outbox
from models.core.bundle import verify_bundle
from models.core.signing import load_public_key
from tests.e2e.conftest import Appliance, add_user, create_token
from tests.e2e.coordinator_process import Coordinator, Update, enroll, write_config
from tests.e2e.test_federation import copy_initial
from tests.e2e.soundness import assert_sound

pytestmark = pytest.mark.fault
PUBLISH_TIMEOUT_S = 180.0   # TensorFlow's start and an int8 conversion on 2 busy cores


@pytest.fixture(scope="module")
def initial(trained_bundle, tmp_path_factory) -> Path:
    return copy_initial(trained_bundle, tmp_path_factory.mktemp("initial"))


@pytest.mark.parametrize("point", ["publish.staged", "publish.recorded", "publish.promoted"])
def test_a_kill_while_publishing_ends_with_one_new_version_that_the_next_round_builds_on(
        point, initial: Path, small_data: Path, tmp_path: Path):
    # Prepare: a coordinator that publishes after one update, set to die at ``point``.
    state = tmp_path / "state"
    config = write_config(tmp_path / "coordinator.toml", min_updates=1, min_quorum=1,
                          publish_margin=1)
    with open(config, "a") as fh:
        fh.write(f"initial_weights = '{initial / 'model.weights.h5'}'\n")
    token = enroll(state, "pi-1")
    server = Coordinator(state, tmp_path, config, ["--data", str(small_data),
                                                   "--initial-bundle", str(initial / "bundle")])
    server.start({ENV: point})
    try:
        # Execute: an update closes the round; publishing kills the process at ``point``.
        ack = server.post_update(token, Update(state, "pi-1", seed=0))
        assert ack.status_code == 202 and ack.json()["round_closed"], ack.text
        assert server.proc.wait(timeout=PUBLISH_TIMEOUT_S) == -signal.SIGKILL
        server.start()

        # Assert: the round ends with v2, once; v2 is served, signed, with its weights.
        rnd = server.wait_for_outcome(token, ack.json()["round"], PUBLISH_TIMEOUT_S)
        assert rnd["published_version"] == 2, (rnd, server.log()[-2000:])
        latest = server.get("/api/v1/bundles/latest", token).json()
        assert latest["version"] == 2
        assert sorted(p.name for p in (state / "bundles").iterdir()) == \
            [".staging", "v1", "v1.weights.h5", "v2", "v2.weights.h5"]
        assert not any((state / "bundles" / ".staging").iterdir())
        verify_bundle(state / "bundles" / "v2", [load_public_key(state / "signing.key.pub")])

        # Execute: the next round, on v2.
        update = Update(state, "pi-1", seed=1)
        update.meta["base_version"] = 2
        nxt = server.post_update(token, update)
        assert nxt.status_code == 202, nxt.text

        # Assert: v3 is built from v2.
        rnd = server.wait_for_outcome(token, nxt.json()["round"], PUBLISH_TIMEOUT_S)
        assert rnd["published_version"] == 3, (rnd, server.log()[-2000:])
        assert verify_bundle(state / "bundles" / "v3", [load_public_key(
            state / "signing.key.pub")]).manifest["parent_version"] == 2
    finally:
        server.stop()


def test_a_kill_after_the_coordinator_acknowledged_an_update_sends_it_again_counted_once(
        tmp_path: Path, start_coordinator):
    # Prepare: a coordinator whose round waits for three updates; an appliance with one
    # update queued, set to die once the coordinator has acknowledged it.
    state = tmp_path / "state"
    coordinator = start_coordinator(state, write_config(tmp_path / "coordinator.toml",
                                                        min_updates=3))
    device_token = enroll(state, "pi-1")
    update = Update(state, "pi-1", seed=0)
    data = tmp_path / "appliance"
    add_user(data, "alice")
    auth = {"Authorization": f"Bearer {create_token(data, 'script', 'alice')}"}
    Outbox(data).put(update.meta["update_id"], update.payload, update.meta)
    config = tmp_path / "device.toml"
    config.write_text("gpio = false\ncamera = false\nsync_interval_s = 86400\n"
                      f"secret_key = 'e2e'\ncoordinator_url = '{coordinator.url}'\n"
                      f"device_id = 'pi-1'\ndevice_token = '{device_token}'\n")
    appliance = Appliance(data, tmp_path, 1)
    cmd = [sys.executable, "-m", "device", "serve", "--data-dir", str(data), "--config",
           str(config), "--host", "127.0.0.1", "--port", str(appliance.port)]
    appliance.spawn(cmd, {ENV: "outbox.acknowledged"})
    try:
        # Execute: "Sync now"; the appliance dies between the answer and the outbox.
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{appliance.url}/api/v1/federation/sync", headers=auth, timeout=60)
        assert appliance.proc.wait(timeout=30) == -signal.SIGKILL

        # Assert: the coordinator holds the update; the appliance still has it queued.
        assert [r["updates"] for r in coordinator.rounds(device_token)] == [1]
        assert [e.update_id for e in Outbox(data).pending()] == [update.meta["update_id"]]

        # Execute: restart, sync again.
        appliance.spawn(cmd)
        answer = requests.post(f"{appliance.url}/api/v1/federation/sync", headers=auth,
                               timeout=60)

        # Assert: sent again, recognised as the same update, counted once, let go.
        assert answer.status_code == 200 and answer.json()["sent"] == 1, answer.text
        assert [r["updates"] for r in coordinator.rounds(device_token)] == [1]
        assert Outbox(data).pending() == []
        assert "duplicate" in appliance.log()
    finally:
        appliance.stop()
    assert_sound(data)
