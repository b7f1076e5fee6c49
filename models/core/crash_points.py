"""Named points where the fault suite (``make faults``) kills a service, to prove that a
power cut there loses nothing and applies nothing twice: each step of the coordinator's
publishing, and an appliance's update acknowledged but not yet cleared from its outbox.

``NEUROEDGE_CRASH_AT=<point>`` in the environment makes the process SIGKILL itself when
it reaches that point: a real kill -9, at a moment a test could not hit from outside.
Unset (always, in service), a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "NEUROEDGE_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
