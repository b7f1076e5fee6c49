"""What the command lines share: their name in usage lines, running a sub-command with
one error line instead of a traceback, an output file checked up front."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence


def prog(module: str, script: str) -> str:
    """How the user called us, for usage lines: the console script (``neuroedge-device``)
    or ``python -m device``."""
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


def command_parser(module: str, script: str, description: str,
                   common: argparse.ArgumentParser | None = None
                   ) -> tuple[argparse.ArgumentParser, Callable[..., argparse.ArgumentParser]]:
    """A parser with ``-v`` and sub-commands, and ``command(name, func, text)`` to add
    one (``text`` is its help line and description; ``common`` its shared options)."""
    parser = argparse.ArgumentParser(prog=prog(module, script), description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str,
                shared: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=text, description=text,
                            parents=[common] if common is not None and shared else [])
        sp.set_defaults(func=func)
        return sp

    return parser, command


def at_least(low: int):
    """An argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


positive_int = at_least(1)


def sparsity(text: str) -> float:
    """An argparse type: a share of weights to prune, in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {value}")
    return value


def json_out(text: str) -> str:
    """A file to write at the end of a long run: its folder must exist now."""
    if not Path(text).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder for {text}")
    return text


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
        errors: tuple[type[Exception], ...]) -> int:
    """Parse ``argv``, set up logging (``-v`` for debug) and run the chosen command's
    ``func``; an expected error is one line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
