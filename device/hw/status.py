"""Status LED and button: what a clinic sees on the box, and the one button it has.

One plain (non-PWM) LED shows the appliance state; each state has a pattern that can be
told apart at a glance, built from ``LED.blink`` or, for sequences, the LED's ``source``:

==================  =============================================  ========
State               Pattern                                        Period
==================  =============================================  ========
READY               solid on                                       --
BUSY                fast blink: 0.1 s on / 0.1 s off               0.2 s
TRAINING            slow blink: 1 s on / 1 s off                   2.0 s
SYNCING             two flashes (0.2 s on / 0.2 s off), 1 s dark   1.6 s
UPDATE_AVAILABLE    long on 1.3 s, short dark 0.2 s ("wink")       1.5 s
ERROR               three rapid flashes (0.1 / 0.1), 0.9 s dark    1.5 s
(closed)            off                                            --
==================  =============================================  ========

The shown state is: ERROR if an error is pending (sticky until acknowledged), else the
latest still-running activity (BUSY, TRAINING, SYNCING; see :meth:`Indicator.activity`),
else the base state (READY or UPDATE_AVAILABLE). One thread of the indicator drives the
LED, so a request never waits for gpiozero; a transient pattern shows at least
:data:`MIN_SHOW` seconds, so an upload of a few milliseconds still blinks once, and a
stream of uploads blinks steadily instead of restarting the pattern for each one.

Button (active low, internal pull-up): a press released before ``hold_seconds`` calls
``on_sync``; holding it ``hold_seconds`` while in ERROR acknowledges the error. Holding it
when there is no error does nothing (it is logged, and does not trigger a sync either).
Callbacks run on gpiozero's thread, so keep them short (wake a worker); exceptions in
them are logged and never reach gpiozero. Hardware is touched only in the constructor.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from device.exc import ConfigError

logger = logging.getLogger(__name__)


class State(enum.Enum):
    """What the appliance is doing, as the LED shows it."""

    READY = "ready"
    BUSY = "busy"
    TRAINING = "training"
    SYNCING = "syncing"
    UPDATE_AVAILABLE = "update_available"
    ERROR = "error"


BASE_STATES = frozenset({State.READY, State.UPDATE_AVAILABLE})
TRANSIENT_STATES = frozenset({State.BUSY, State.TRAINING, State.SYNCING})

#: Alternating on/off durations in seconds, starting with on; empty means solid on.
PATTERNS: dict[State, tuple[float, ...]] = {
    State.READY: (),
    State.BUSY: (0.1, 0.1),
    State.TRAINING: (1.0, 1.0),
    State.SYNCING: (0.2, 0.2, 0.2, 1.0),
    State.UPDATE_AVAILABLE: (1.3, 0.2),
    State.ERROR: (0.1, 0.1, 0.1, 0.1, 0.1, 0.9),
}
#: How often the LED's ``source`` samples a sequenced pattern (its ``source_delay``).
SOURCE_DELAY = 0.02
#: The shortest time a transient pattern (BUSY, TRAINING, SYNCING) shows: one fast blink.
MIN_SHOW = 0.2


def _timeline(pattern: tuple[float, ...]) -> Iterator[bool]:
    """Yield LED values (one per ``SOURCE_DELAY``) that play ``pattern`` endlessly.

    Segments end at deadlines on the clock, so lateness of gpiozero's source thread does
    not accumulate; but no segment is skipped or cut below half its length, since the
    number of flashes is what tells states apart.
    """
    deadline = time.monotonic()
    while True:
        for index, seconds in enumerate(pattern):
            value = index % 2 == 0
            deadline = max(deadline + seconds, time.monotonic() + seconds / 2)
            yield value
            while time.monotonic() < deadline:
                yield value


def _safe_call(callback: Callable[[], None] | None, name: str) -> None:
    """Run a user callback; log and swallow its exception (it runs on gpiozero's thread)."""
    if callback is None:
        return
    try:
        callback()
    except Exception:
        logger.exception("status %s callback failed", name)


class Indicator:
    """State logic shared by the LED indicator and :class:`NullIndicator`.

    Parameters
    ----------
    on_acknowledge : callable, optional
        Called (with no arguments) whenever a pending error is acknowledged.
    """

    def __init__(self, *, on_acknowledge: Callable[[], None] | None = None) -> None:
        self._lock = threading.RLock()
        self._on_acknowledge = on_acknowledge
        self._base = State.READY
        self._manual: State | None = None
        self._activities: list[State] = []
        self._error: str | None = None
        self._shown: State | None = None
        self._refresh()

    @property
    def state(self) -> State:
        """The state the LED currently shows."""
        with self._lock:
            if self._error is not None:
                return State.ERROR
            if self._activities:
                return self._activities[-1]
            return self._manual if self._manual is not None else self._base

    @property
    def base_state(self) -> State:
        """READY or UPDATE_AVAILABLE: where the indicator returns when nothing else shows."""
        return self._base

    @property
    def error_message(self) -> str | None:
        """The message of the pending error, or None."""
        return self._error

    def set(self, state: State) -> None:
        """Set the state.

        READY and UPDATE_AVAILABLE set the base state (hidden while an error is pending).
        BUSY, TRAINING and SYNCING are shown until the next ``set`` (prefer
        :meth:`activity`, which restores the previous state by itself). ERROR is
        ``error("unspecified error")``.
        """
        state = State(state)
        if state is State.ERROR:
            self.error("unspecified error")
            return
        with self._lock:
            if state in BASE_STATES:
                self._base, self._manual = state, None
            else:
                self._manual = state
            self._refresh()

    def error(self, message: str) -> None:
        """Enter ERROR, remembering ``message`` (never patient data) until acknowledged."""
        with self._lock:
            self._error = str(message) or "unspecified error"
            logger.warning("status error: %s", self._error)
            self._refresh()

    def acknowledge(self) -> bool:
        """Clear a pending error and call ``on_acknowledge``.

        Returns
        -------
        bool
            True if an error was pending, False if there was nothing to acknowledge.
        """
        with self._lock:
            if self._error is None:
                return False
            logger.info("status error acknowledged: %s", self._error)
            self._error = None
            self._refresh()
        _safe_call(self._on_acknowledge, "on_acknowledge")
        return True

    @contextmanager
    def activity(self, state: State) -> Iterator[Indicator]:
        """Show a transient state for the duration of a ``with`` block.

        Activities nest and may overlap across threads: the latest one still running is
        shown, and on exit the indicator returns to whatever would show without it.

        Raises
        ------
        ValueError
            If ``state`` is not BUSY, TRAINING or SYNCING.
        """
        state = State(state)
        if state not in TRANSIENT_STATES:
            raise ValueError(f"activity() takes BUSY, TRAINING or SYNCING, not {state.name}")
        with self._lock:
            self._activities.append(state)
            self._refresh()
        try:
            yield self
        finally:
            with self._lock:
                # Remove the latest entry of this state: equal entries are interchangeable.
                index = len(self._activities) - 1 - self._activities[::-1].index(state)
                del self._activities[index]
                self._refresh()

    def close(self) -> None:
        """Release resources (nothing to release here)."""

    def _refresh(self) -> None:
        """Show the current state if it changed; called with the lock held."""
        state = self.state
        if state is not self._shown:
            self._shown = state
            self._show(state)

    def _show(self, state: State) -> None:
        """Drive the hardware for ``state``; the base class has none."""


class NullIndicator(Indicator):
    """The indicator for a machine with GPIO disabled: tracks state, drives nothing.

    ``on_sync`` is accepted for symmetry with :class:`StatusIndicator` and never called.
    """

    def __init__(self, *, on_sync: Callable[[], None] | None = None,
                 on_acknowledge: Callable[[], None] | None = None) -> None:
        super().__init__(on_acknowledge=on_acknowledge)


class StatusIndicator(Indicator):
    """A status LED and an optional push button on gpiozero (see the module docstring).

    Parameters
    ----------
    led_pin : int or str
        GPIO of the LED (active high), in any form gpiozero accepts (17, "GPIO17").
    button_pin : int, str or None
        GPIO of the button to ground (internal pull-up), or None for no button.
    pin_factory : gpiozero.Factory, optional
        The pin factory; None uses gpiozero's default (``GPIOZERO_PIN_FACTORY``).
    hold_seconds : float
        How long the button must be held to acknowledge an error.
    on_sync, on_acknowledge : callable, optional
        Called on a short press, and when an error is acknowledged.

    Raises
    ------
    ConfigError
        If ``hold_seconds`` is not positive.
    """

    def __init__(self, led_pin: int | str, button_pin: int | str | None, *,
                 pin_factory: Any = None, hold_seconds: float = 3.0,
                 on_sync: Callable[[], None] | None = None,
                 on_acknowledge: Callable[[], None] | None = None) -> None:
        if not hold_seconds > 0:
            raise ConfigError(f"hold_seconds must be positive, got {hold_seconds!r}")
        from gpiozero import LED, Button  # lazily: no GPIO library work at import

        self._hold_seconds = float(hold_seconds)
        self._on_sync = on_sync
        self._closed = False
        self._pressed_at: float | None = None
        self._press_handled = True
        self._led = LED(led_pin, initial_value=False, pin_factory=pin_factory)
        self._wanted: State | None = None  # what the driver thread is to show next
        self._flash: State | None = None  # a transient state asked for since then
        self._changed, self._closing = threading.Event(), threading.Event()
        self._button = None
        try:
            if button_pin is not None:
                self._button = Button(button_pin, pull_up=True, bounce_time=0.05,
                                      hold_time=self._hold_seconds, pin_factory=pin_factory)
            super().__init__(on_acknowledge=on_acknowledge)
            if self._button is not None:
                self._button.when_pressed = self._pressed
                self._button.when_held = self._held
                self._button.when_released = self._released
        except BaseException:
            self._led.close()
            if self._button is not None:
                self._button.close()
            raise
        self._changed.clear()
        shown = self._wanted
        assert shown is not None  # Indicator.__init__ showed the first state
        self._apply(shown)  # at once: the LED is on from the first moment
        self._driver = threading.Thread(target=self._drive, args=(shown,), daemon=True,
                                        name="status-led")
        self._driver.start()

    def close(self) -> None:
        """Stop the pattern, turn the LED off and release both pins (idempotent)."""
        with self._lock:  # after this no _show asks for a pattern
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        self._changed.set()
        self._driver.join()  # after this nothing touches the LED
        # Outside the lock: closing the button joins its hold thread, which may be
        # waiting for the lock in _held.
        if self._button is not None:
            self._button.close()
        self._led.source = None
        self._led.close()

    def _show(self, state: State) -> None:
        """Ask the driver thread to show ``state`` (called with the lock held)."""
        if not self._closed:
            self._wanted = state
            if state in TRANSIENT_STATES:
                self._flash = state
            self._changed.set()

    def _drive(self, shown: State) -> None:
        """The driver thread: show the latest wanted state until closed."""
        while True:
            self._changed.wait()
            with self._lock:
                self._changed.clear()
                state, flash, self._flash = self._wanted, self._flash, None
            if self._closing.is_set():
                return
            if flash is not None and flash is not shown:  # shown once even if over
                state = flash
                self._changed.set()  # then what is wanted by now
            if state is shown or state is None:
                continue
            try:
                self._apply(state)
            except Exception:  # a GPIO failure must not end the thread
                logger.exception("status LED could not show %s", state.name)
            shown = state
            if state in TRANSIENT_STATES:
                self._closing.wait(MIN_SHOW)

    def _apply(self, state: State) -> None:
        """Drive the LED's pattern for ``state`` (on the driver thread)."""
        led = self._led
        led.source = None  # stops and joins a running sequence
        pattern = PATTERNS[state]
        if not pattern:
            led.on()  # also stops a running blink
        elif len(pattern) == 2:
            led.blink(on_time=pattern[0], off_time=pattern[1])
        else:
            led.source_delay = SOURCE_DELAY
            led.source = _timeline(pattern)
        logger.debug("status LED shows %s", state.name)

    # Button events arrive on gpiozero's thread, and on_held on its hold thread.
    def _pressed(self) -> None:
        with self._lock:
            self._pressed_at, self._press_handled = time.monotonic(), False

    def _held(self) -> None:
        with self._lock:
            if self._press_handled:
                return
            self._press_handled = True
        self._long_press()

    def _released(self) -> None:
        with self._lock:
            if self._press_handled or self._pressed_at is None:
                return
            self._press_handled = True
            held_for = time.monotonic() - self._pressed_at
        if held_for >= self._hold_seconds:  # the hold thread lost the race
            self._long_press()
        else:
            logger.info("status button: sync requested")
            _safe_call(self._on_sync, "on_sync")

    def _long_press(self) -> None:
        if not self.acknowledge():
            logger.info("status button held with no error pending: ignored")
