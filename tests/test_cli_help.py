"""The appliance's and the coordinator's command lines: plain help (no reStructuredText
markup) for every command, and the console scripts the docs use."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLIS = [("device", "neuroedge-device"), ("coordinator", "neuroedge-coordinator")]
MARKUP = re.compile(r"``|:(func|class|mod|meth|data|attr):`")


def helps(module: str) -> dict[str, str]:
    """The help text of the command line and of each of its sub-commands."""
    parser = importlib.import_module(f"{module}.__main__").parser()
    texts = {"": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts.update({name: sub.format_help() for name, sub in action.choices.items()})
    return texts


@pytest.mark.parametrize("module, script", CLIS)
def test_help_is_plain_text_for_every_command(module: str, script: str) -> None:
    texts = helps(module)

    assert len(texts) > 5
    for command, text in texts.items():
        assert not MARKUP.search(text), f"{module} {command} --help:\n{text}"
        assert text.split("\n\n")[1].strip(), f"{module} {command} --help has no description"


@pytest.mark.parametrize("module, script", CLIS)
def test_the_console_script_runs_and_names_itself(module: str, script: str) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / script), "--help"],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script} ")
