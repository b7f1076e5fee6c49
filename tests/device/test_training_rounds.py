"""When the appliance's schedule trains: on enough newly confirmed cases, and, with
``train_rounds_per_cases`` above 1, again on the same cases after each newer version,
up to that many runs; over real HTTP to a real coordinator that publishes each round."""
from __future__ import annotations

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

    expected = [True, False, False] if rounds == 1 else [True, False, True, False, False]
    assert due == expected
