"""The retry policy of offered bundles: final refusals stick, failures on the way back off."""
from __future__ import annotations

from device.sync.retry import RETRY_MAX_S, after_refusal, retry_delay, why_not_now
from device.sync.updater import UpdateResult


def transport(version: int) -> UpdateResult:
    return UpdateResult("refused", version, "download of model.tflite failed", final=False)


def test_failures_on_the_way_back_off_doubling_up_to_an_hour_and_a_person_skips_the_wait():
    state: dict = {}
    waits = []
    for attempt in range(8):
        state.update(after_refusal(state, transport(2), current=1, now=1000.0))
        waits.append(state["retry"]["next_at"] - 1000.0)

    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600] and RETRY_MAX_S == 3600
    assert "next try in" in why_not_now(state, 2, now=1010.0, force=False)
    assert why_not_now(state, 2, now=1010.0, force=True) is None
    assert why_not_now(state, 2, now=1000.0 + retry_delay(8), force=False) is None
    assert why_not_now(state, 3, now=1010.0, force=False) is None  # a newer version


def test_a_wait_longer_than_the_longest_backoff_means_the_clock_went_back():
    state = after_refusal({}, transport(2), current=1, now=1000.0)

    assert why_not_now(state, 2, now=1000.0 - 2 * 86400, force=False) is None
    assert "next try in" in why_not_now(state, 2, now=1000.0 - RETRY_MAX_S + 100,
                                        force=False)


def test_a_final_refusal_sticks_and_ends_the_backoff():
    state = after_refusal({}, transport(2), current=1, now=0.0)
    state.update(after_refusal(state, UpdateResult("refused", 2, "local gate"), 1, now=5.0))

    assert state["refused_versions"] == [2] and state["retry"] is None
    assert why_not_now(state, 2, now=1e9, force=True) == "refused before"


def test_a_refusal_of_the_version_in_service_is_not_recorded():
    # The coordinator's copy of the shipped version: mended by configuration (a key).
    assert after_refusal({}, UpdateResult("refused", 1, "does not fit"), current=1, now=0) == {}
