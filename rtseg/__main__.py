"""``rtseg``, ``python -m rtseg`` and ``python run.py``: the command-line interface (see :mod:`rtseg.cli`)."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from rtseg.cliargs import SUBCOMMANDS
from rtseg.errors import Terminated, exit_status, guard_standard_streams, sigterm_raises


def main() -> int:
    """Run the command line on ``sys.argv``; the process exit code.

    The CLI is imported here, under :func:`exit_status`: that takes seconds (torch), and a Ctrl-C, a SIGTERM or a
    missing package meanwhile is one line too, named as the command (``rtseg train: interrupted``, 130;
    ``rtseg train: terminated``, 143), not a traceback or a death by the signal without a word.
    """
    guard_standard_streams()
    prog, module = command(sys.argv[1:])
    return exit_status(prog, lambda: _cli(module))


def command(argv: Sequence[str]) -> tuple[str, str]:
    """The name the command line ``argv`` reports its errors under, and the module that runs it."""
    if argv and argv[0] in SUBCOMMANDS:
        return f"rtseg {argv[0]}", SUBCOMMANDS[argv[0]]
    return "rtseg", "rtseg.cli" if argv else "rtseg.demo"


def _cli(module: str) -> int:
    """Import the CLI and ``module`` (a SIGTERM meanwhile raises :class:`Terminated`), then run the command with
    SIGTERM's handler as it was before (the video pipeline and the trainers install their own while they run)."""
    with sigterm_raises(Terminated):
        from rtseg.cli import main as cli_main

        importlib.import_module(module)
    try:
        return cli_main()
    except SystemExit:  # --help, usage errors: their text gets out now, or a stdout that cannot take it is reported
        sys.stdout.flush()
        raise


if __name__ == "__main__":
    sys.exit(main())
