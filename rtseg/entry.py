"""What every command-line entry point does around its command: ``rtseg`` (:mod:`rtseg.__main__`) and
``python -m rtseg.train.fcn_trainer`` / ``python -m rtseg.train.msrcnn_trainer``.

Such an entry module imports nothing heavy at its top (no torch; ``rtseg.errors`` and this module only), and its
``main`` hands :func:`run_command` the name the command reports under and the function that does the work, by
name: the option checks, the seconds of imports (torch) and the command then run where a Ctrl-C, a SIGTERM, a
SIGHUP or a missing package is one line naming the command, not a traceback or a death by the signal without a
word, and the process's shutdown after it (over a second with torch loaded) ignores a late Ctrl-C, SIGTERM or
SIGHUP.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, NoReturn, Sequence

from rtseg.errors import (
    Terminated,
    command_line_run,
    exit_status,
    guard_standard_streams,
    ignore_stop_signals,
    sigterm_raises,
)


def run_command(prog: str, target: str, *args: Any, preload: Sequence[str] = (),
                parse: Callable[[], Any] | None = None) -> int:
    """The exit status of calling ``target`` (``"package.module:function"``) with ``args``, through
    :func:`rtseg.errors.exit_status` under the name ``prog``.

    ``parse`` (light: it imports nothing heavy), when given, runs before anything is imported and its result is
    the call's one argument instead of ``args``: ``--help`` and a bad option answer at once, not after the seconds
    of importing torch.

    The target's module, then each module of ``preload`` (what the call would import later), is imported first.
    A Ctrl-C is ``prog: interrupted`` and 130, a missing package ``prog: error: …`` and 2; SIGTERM and SIGHUP raise
    :class:`rtseg.errors.Terminated` (``prog: terminated`` and 143, ``prog: hung up`` and 129; a SIGHUP ignored, as
    under ``nohup``, stays ignored) from the parsing of the options to the call's end, except where the command
    handles them itself (the video pipeline stops gracefully, a trainer saves its checkpoint) and hands these
    handlers back after. A SystemExit from it (``--help``, argparse) flushes stdout first,
    so that text a stdout cannot take is reported (see :func:`rtseg.errors.guard_standard_streams`), not lost at exit.

    In a command-line run (:func:`rtseg.errors.command_line_run`) Ctrl-C, SIGTERM and SIGHUP are ignored once the
    status is known (:func:`rtseg.errors.ignore_stop_signals`): the command's work is done, and one arriving while the
    interpreter shuts down (a second Ctrl-C, the first of which stopped a video run or training) ended the
    process by the signal (exit -2 / -15 / -1 instead of the command's status) or printed a traceback.
    """
    module, _, name = target.partition(":")

    def call() -> Any:
        try:
            with sigterm_raises(Terminated):
                given = args if parse is None else (parse(),)
                fn = getattr(importlib.import_module(module), name)
                for more in preload:
                    importlib.import_module(more)
                return fn(*given)
        except SystemExit:
            sys.stdout.flush()
            raise

    status = exit_status(prog, call)
    if command_line_run():
        ignore_stop_signals()
    return status


def run_as_script(main: Callable[[], int]) -> NoReturn:
    """``if __name__ == "__main__"`` of an entry module: the standard streams prepared for a command-line run
    (:func:`rtseg.errors.guard_standard_streams`: a full or closed stdout is one line and exit 2), then exit with
    ``main()``'s status."""
    guard_standard_streams()
    sys.exit(main())


def lazy_attributes(namespace: dict[str, Any], where: Mapping[str, str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A ``__getattr__`` (PEP 562) for the module whose globals are ``namespace`` that loads each name of ``where``
    from its module (``{name: module}``) at its first use, so that a light module (:mod:`rtseg`, :mod:`rtseg.data`, an
    entry module over its heavy implementation) still offers those names without importing them at its top; and its
    ``__dir__``, which lists those names beside the module's own, so that ``dir()`` and tab completion show them (the
    default ``dir`` of a module lists only what is already in it). ``__getattr__, __dir__ = lazy_attributes(globals(),
    …)``."""
    offered = dict(where)
    owner = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in offered:
            raise AttributeError(f"module {owner!r} has no attribute {name!r}")
        return getattr(importlib.import_module(offered[name]), name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *offered})

    return __getattr__, __dir__
