"""When the appliance's schedule trains: on enough newly confirmed cases, and, with
``train_rounds_per_cases`` above 1, again on the same cases after each newer version,
up to that many runs; over real HTTP to a real coordinator that publishes each round."""
from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import pytest

from tests.device.federated import round_trip, slices


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_newer_version_trains_the_same_cases_again_up_to_the_setting(
        rounds, tmp_path, trained_bundle, small_data, signing_key_file):
    with ExitStack() as stack:
        coord, device = round_trip(stack, tmp_path, trained_bundle, small_data,
                                   signing_key_file, train_rounds_per_cases=rounds)
        fed = device.fed
        due = []

        def one_round() -> int:
            """Train, send, let the coordinator publish, install; the served version."""
            assert device.call("POST", "/api/v1/federation/train")["action"] == "queued"
            due.append(fed.training_due())  # nothing newer yet
            device.call("POST", "/api/v1/federation/sync")
            coord.wait_for_round()
            device.call("POST", "/api/v1/federation/sync")
            return device.call("GET", "/healthz")["model_version"]

        device.feed(slices(small_data), until=device.trainable)
        due.append(fed.training_due())  # new cases
        assert one_round() == 2
        due.append(fed.training_due())  # v2 is newer than the run's v1
        if rounds == 2:
            assert one_round() == 3
            due.append(fed.training_due())  # two runs on these cases: enough
            assert fed._state()["runs_on_cases"] == 2
            # "Train now" still trains; twice on one version counts once
            for _ in range(2):
                assert device.call("POST", "/api/v1/federation/train")["action"] == "queued"
            assert fed._state()["runs_on_cases"] == 3 and not fed.training_due()

    expected = [True, False, False] if rounds == 1 else [True, False, True, False, False]
    assert due == expected


def test_the_schedule_alone_trains_again_after_each_newer_version_then_waits(
        tmp_path, trained_bundle, small_data, signing_key_file):
    """The appliance's own loop, no button: new cases start a run, each newer version
    another, up to ``train_rounds_per_cases``; then nothing until new cases arrive."""
    with ExitStack() as stack:
        coord, device = round_trip(stack, tmp_path, trained_bundle, small_data,
                                   signing_key_file, train_rounds_per_cases=2,
                                   sync_interval_s=0.2)
        device.feed(slices(small_data), until=device.trainable)
        stop = threading.Event()
        loop = threading.Thread(target=device.fed.run, args=(stop,), daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 180
            while device.svc.slot.current.version < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3)  # some fifteen more cycles, with nothing left to train
        finally:
            stop.set()
            loop.join(30)
        served, state = device.svc.slot.current.version, device.fed._state()
        rounds = coord.svc.store.list_rounds()

    assert served == 3 and len(rounds) == 2  # v1 -> v2 -> v3, and no third run
    assert state["runs_on_cases"] == 2 and state["trained_version"] == 2
