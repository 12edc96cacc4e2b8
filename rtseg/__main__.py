"""``rtseg``, ``python -m rtseg`` and ``python run.py``: the command-line interface (see :mod:`rtseg.cli`)."""
from __future__ import annotations

import sys

from rtseg.errors import exit_status, guard_standard_streams


def main() -> int:
    """Run the command line on ``sys.argv``; the process exit code.

    The CLI is imported here, under :func:`exit_status`: that takes seconds (torch), and a Ctrl-C or a missing
    package meanwhile is one line too (``rtseg: interrupted``, 130), not a traceback.
    """
    guard_standard_streams()
    return exit_status("rtseg", _cli)


def _cli() -> int:
    from rtseg.cli import main as cli_main

    try:
        return cli_main()
    except SystemExit:  # --help, usage errors: their text gets out now, or a stdout that cannot take it is reported
        sys.stdout.flush()
        raise


if __name__ == "__main__":
    sys.exit(main())
