"""Status LED and button on gpiozero's MockFactory: a pattern per state, activities,
sticky errors, the button's press and hold."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median

import pytest
from gpiozero.pins.mock import MockFactory

from device.exc import ConfigError
from device.hw import PATTERNS, NullIndicator, State, StatusIndicator
from device.hw.status import MIN_SHOW


LED_PIN, BUTTON_PIN = 17, 27
ROOT = Path(__file__).resolve().parents[2]


class Calls:
    """Counts calls of a callback; optionally raises from it."""

    def __init__(self, raises: bool = False) -> None:
        self.count = 0
        self.raises = raises

    def __call__(self) -> None:
        self.count += 1
        if self.raises:
            raise RuntimeError("callback boom")


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
def make(factory):
    """Build indicators on the mock factory (hold 0.2 s); close them all afterwards."""
    built = []

    def build(**kwargs) -> StatusIndicator:
        kwargs.setdefault("hold_seconds", 0.2)
        indicator = StatusIndicator(LED_PIN, BUTTON_PIN, pin_factory=factory, **kwargs)
        built.append(indicator)
        return indicator

    yield build
    for indicator in built:
        indicator.close()


def watch(factory, timeout: float, until=lambda states: False) -> list[tuple[bool, float]]:
    """Record the LED until ``until(states)`` holds or ``timeout`` seconds have passed.

    Returns each state with how long it lasted (the last one up to now), read from the
    mock pin's own record (``pin.states``), so a late-waking test cannot skew them.
    """
    pin = factory.pin(LED_PIN)
    pin.clear_states()
    start = time.monotonic()
    while True:
        time.sleep(0.01)
        states = list(pin.states)
        lengths = [later.timestamp for later in states[1:]]
        lengths.append(time.monotonic() - start - sum(lengths))
        recorded = [(bool(state.state), length) for state, length in zip(states, lengths)]
        if until(recorded) or time.monotonic() - start >= timeout:
            return recorded


def paused_after(count: int, seconds: float):
    """``until`` for watch(): ``count`` states seen and the last of them lasted ``seconds``."""
    return lambda states: len(states) > count or (
        len(states) == count and states[-1][1] >= seconds)


def sequence(states: list[tuple[bool, float]]) -> list[bool]:
    return [state for state, _ in states]


def wait_until(predicate, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def press(factory, seconds: float = 0.0) -> None:
    pin = factory.pin(BUTTON_PIN)
    pin.drive_low()  # pulled up: low is pressed
    time.sleep(seconds)
    pin.drive_high()


def test_ready_is_solid_on(make, factory):
    status = make()

    states = watch(factory, 0.3)  # solid: nothing to wait for

    assert status.state is State.READY
    assert sequence(states) == [True]


def test_busy_blinks_fast(make, factory):
    status = make()

    status.set(State.BUSY)
    states = watch(factory, 1.2, until=lambda states: len(states) >= 7)

    lengths = [length for _, length in states[:-1]]
    assert len(lengths) >= 6
    assert median(lengths) <= 0.25


def test_training_blinks_slowly(make, factory):
    status = make()

    status.set(State.TRAINING)
    states = watch(factory, 1.45, until=lambda states: len(states) >= 2)

    assert sequence(states) == [True, False]
    assert 0.75 <= states[0][1] <= 1.4


def test_syncing_is_two_flashes_then_a_pause(make, factory):
    status = make()

    status.set(State.SYNCING)
    states = watch(factory, 1.45, until=paused_after(4, 0.55))

    assert sequence(states)[:4] == [True, False, True, False]
    assert all(0.08 <= length <= 0.45 for _, length in states[:3])
    assert states[3][1] >= 0.5  # the pause, to the next flash or the end of the window


def test_error_is_three_rapid_flashes_then_a_pause(make, factory):
    status = make()

    status.error("model failed to load")
    states = watch(factory, 1.45, until=paused_after(6, 0.5))

    assert sequence(states)[:6] == [True, False] * 3
    assert all(0.03 <= length <= 0.3 for _, length in states[:5])
    assert states[5][1] >= 0.5


def test_update_available_is_a_long_on_with_a_short_dark(make, factory):
    status = make()

    status.set(State.UPDATE_AVAILABLE)
    states = watch(factory, 1.45, until=paused_after(2, 0.05))

    assert sequence(states)[:2] == [True, False]
    assert 1.1 <= states[0][1] <= 1.45


def test_patterns_are_distinct_and_cover_every_state():
    assert set(PATTERNS) == set(State)
    assert len(set(PATTERNS.values())) == len(State)
    assert all(len(p) % 2 == 0 for p in PATTERNS.values())


def test_changing_state_cancels_the_previous_pattern(make, factory):
    status = make()
    status.error("x")
    status.acknowledge()
    status.set(State.BUSY)

    status.set(State.READY)
    time.sleep(MIN_SHOW + 0.05)  # a transient pattern shows at least MIN_SHOW
    states = watch(factory, 0.4)

    assert sequence(states) == [True]


def test_a_short_activity_still_blinks_once(make, factory):
    status, pin = make(), factory.pin(LED_PIN)
    pin.clear_states()

    with status.activity(State.BUSY):
        pass
    time.sleep(MIN_SHOW + 0.15)

    states = [bool(s.state) for s in pin.states]
    assert False in states  # the blink's dark half was shown
    assert states[-1] is True and status.state is State.READY


def test_a_stream_of_short_activities_blinks_steadily(make, factory):
    # Uploads of a few ms back to back: the LED blinks at BUSY's pace, not restarted
    # (and so never dark) by each upload.
    status, pin = make(), factory.pin(LED_PIN)
    pin.clear_states()

    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        with status.activity(State.BUSY):
            time.sleep(0.003)
        time.sleep(0.001)
    time.sleep(MIN_SHOW + 0.1)

    states = list(pin.states)
    dark = [later.timestamp for state, later in zip(states, states[1:]) if not state.state]
    assert len(dark) >= 3
    assert all(0.05 <= seconds <= 0.2 for seconds in dark)
    assert bool(states[-1].state) is True


def test_activity_restores_the_previous_state_also_nested(make, factory):
    status = make()
    status.set(State.UPDATE_AVAILABLE)

    with status.activity(State.TRAINING):
        outer = status.state
        with status.activity(State.BUSY):
            inner = status.state
        between = status.state
    after = status.state

    assert (outer, inner, between, after) == (
        State.TRAINING, State.BUSY, State.TRAINING, State.UPDATE_AVAILABLE)


def test_activity_rejects_a_base_state(make):
    status = make()

    with pytest.raises(ValueError):
        with status.activity(State.READY):
            pass


def test_overlapping_activities_from_threads(make, factory):
    status = make()
    workers = 6
    inside, leave = threading.Barrier(workers + 1), threading.Barrier(workers + 1)
    kinds = [State.BUSY, State.TRAINING, State.SYNCING]

    def work(i: int) -> None:
        with status.activity(kinds[i % 3]):
            with status.activity(kinds[(i + 1) % 3]):
                inside.wait(timeout=5)
                leave.wait(timeout=5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    inside.wait(timeout=5)
    during = status.state
    leave.wait(timeout=5)
    for thread in threads:
        thread.join(timeout=5)

    assert during in kinds
    assert status.state is State.READY
    time.sleep(2 * MIN_SHOW + 0.1)  # the pattern shown, then the last one asked for
    assert sequence(watch(factory, 0.25)) == [True]


def test_error_is_sticky_until_acknowledged(make):
    acknowledged = Calls()
    status = make(on_acknowledge=acknowledged)

    status.error("coordinator rejected the update")
    status.set(State.UPDATE_AVAILABLE)
    status.set(State.BUSY)
    with status.activity(State.SYNCING):
        during = status.state
    before_ack = status.state
    message = status.error_message
    status.acknowledge()

    assert (during, before_ack) == (State.ERROR, State.ERROR)
    assert message == "coordinator rejected the update"
    assert acknowledged.count == 1
    assert status.state is State.BUSY  # set(BUSY) shows until the next set()
    status.set(State.UPDATE_AVAILABLE)
    assert status.state is State.UPDATE_AVAILABLE
    assert status.error_message is None


def test_short_press_calls_on_sync(make, factory):
    sync, acknowledged = Calls(), Calls()
    status = make(on_sync=sync, on_acknowledge=acknowledged)

    press(factory)

    assert (sync.count, acknowledged.count) == (1, 0)
    assert status.state is State.READY


def test_hold_in_error_acknowledges(make, factory):
    sync, acknowledged = Calls(), Calls()
    status = make(on_sync=sync, on_acknowledge=acknowledged)
    status.error("disk full")
    pin = factory.pin(BUTTON_PIN)

    pin.drive_low()
    held = wait_until(lambda: acknowledged.count == 1, timeout=1.0)
    pin.drive_high()

    assert held
    assert (sync.count, acknowledged.count) == (0, 1)
    assert status.state is State.READY
    time.sleep(0.05)  # the LED's thread shows it
    assert sequence(watch(factory, 0.25)) == [True]


def test_hold_without_error_does_nothing(make, factory):
    sync, acknowledged = Calls(), Calls()
    status = make(on_sync=sync, on_acknowledge=acknowledged)

    press(factory, seconds=0.45)

    assert (sync.count, acknowledged.count) == (0, 0)
    assert status.state is State.READY


def test_a_raising_callback_is_logged_and_the_indicator_keeps_working(make, factory, caplog):
    sync = Calls(raises=True)
    status = make(on_sync=sync, on_acknowledge=Calls(raises=True))

    with caplog.at_level(logging.ERROR, logger="device.hw.status"):
        press(factory)
        status.error("x")
        acknowledged = status.acknowledge()
    press(factory)
    status.set(State.TRAINING)

    assert sync.count == 2
    assert acknowledged
    assert "on_sync callback failed" in caplog.text
    assert "on_acknowledge callback failed" in caplog.text
    assert status.state is State.TRAINING


def test_close_releases_the_pins(make, factory):
    first = make()

    first.close()
    first.close()
    first.set(State.BUSY)  # harmless after close
    second = make()

    assert second.state is State.READY
    assert factory.pin(LED_PIN).state is True


def test_without_a_button(factory):
    status = StatusIndicator(LED_PIN, None, pin_factory=factory)
    try:
        status.set(State.SYNCING)
        assert status.state is State.SYNCING
    finally:
        status.close()


def test_hold_seconds_must_be_positive(factory):
    with pytest.raises(ConfigError):
        StatusIndicator(LED_PIN, BUTTON_PIN, pin_factory=factory, hold_seconds=0)


def test_null_indicator_tracks_state():
    acknowledged = Calls()
    status = NullIndicator(on_acknowledge=acknowledged)

    with status.activity(State.BUSY):
        busy = status.state
    status.set(State.ERROR)
    unspecified = status.error_message
    status.error("no model")
    status.set(State.READY)
    in_error = status.state
    status.acknowledge()
    status.close()

    assert (busy, in_error, status.state) == (State.BUSY, State.ERROR, State.READY)
    assert unspecified == "unspecified error"
    assert acknowledged.count == 1


def test_import_touches_no_hardware():
    code = ("import sys, device.hw; "
            "assert not {'gpiozero', 'picamera2'} & set(sys.modules), sys.modules.keys()")

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
