"""Ansible callback for the e2e: at the end of a run, the slowest tasks (wall-clock
seconds from a task's start to the next one's; hosts run a task in parallel).
Enabled by run_e2e.sh with ANSIBLE_CALLBACKS_ENABLED=task_times."""
from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: the slowest tasks of a run
description: Prints the ten slowest tasks of the run at its end.
requirements: [enable in the callbacks_enabled setting]
"""
SHOWN = 10


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, float] = {}
        self.current: tuple[str, float] | None = None

    def _close(self) -> None:
        if self.current is not None:
            name, started = self.current
            self.times[name] = self.times.get(name, 0.0) + time.monotonic() - started
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._close()
        self.current = (f"{task.get_name()}", time.monotonic())

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_playbook_on_stats(self, stats) -> None:
        self._close()
        slowest = sorted(self.times.items(), key=lambda kv: kv[1], reverse=True)[:SHOWN]
        self._display.display("SLOWEST TASKS " + "*" * 60)
        for name, seconds in slowest:
            self._display.display(f"{seconds:7.1f} s  {name}")
