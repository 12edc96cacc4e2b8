"""``rtseg``, ``python -m rtseg`` and ``python run.py``: the command-line interface (see :mod:`rtseg.cli`)."""
from __future__ import annotations

import sys
from typing import Sequence

from rtseg.cliargs import SUBCOMMANDS
from rtseg.entry import run_command
from rtseg.errors import guard_standard_streams


def main() -> int:
    """Run the command line on ``sys.argv``; the process exit code.

    The command's module is imported by :func:`rtseg.entry.run_command`, a Ctrl-C, a SIGTERM or a missing package
    meanwhile one line named as the command (``rtseg train: interrupted``, 130; ``rtseg train: terminated``, 143),
    not a traceback or a death by the signal without a word. Every command imports torch (seconds) only once its
    options are checked, a signal meanwhile said in the same line (:func:`rtseg.cli.run`,
    :func:`rtseg.demo.run_demo`, :func:`rtseg.eval.cli.run`, :func:`rtseg.train.cli.main`).
    """
    guard_standard_streams()
    prog, module = command(sys.argv[1:])
    return run_command(prog, "rtseg.cli:main", preload=(module,))


def command(argv: Sequence[str]) -> tuple[str, str]:
    """The name the command line ``argv`` reports its errors under, and the module that runs it."""
    if argv and argv[0] in SUBCOMMANDS:
        return f"rtseg {argv[0]}", SUBCOMMANDS[argv[0]]
    return "rtseg", "rtseg.cli" if argv else "rtseg.demo"


if __name__ == "__main__":
    sys.exit(main())
