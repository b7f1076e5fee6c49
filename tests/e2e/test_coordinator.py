"""The coordinator as real ``python -m coordinator serve`` processes: a SIGKILL mid-round
resumes with every acknowledged update; a stop that hangs dumps its threads and still
exits.

Devices and tokens are made with the real CLI; updates are int8-encoded head deltas
posted over HTTP exactly as an appliance sends them."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from tests.e2e.conftest import REPO, START_TIMEOUT_S, STOP_TIMEOUT_S, _env, free_port
from tests.e2e.coordinator_process import Update, enroll, write_config


@pytest.mark.fault
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
