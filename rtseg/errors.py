"""Errors a user can act on.

Every subclass of :class:`RtsegError` carries one line that says what went
wrong, where, and what to do. The CLI prints that line and exits non-zero
without a traceback; any other exception is an internal error and keeps its
traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class RtsegError(Exception):
    """Base class of user-facing errors (one clear line, no traceback)."""


class WeightsError(RtsegError):
    """A checkpoint is missing, unreadable, unsafe or of another architecture."""


class SourceError(RtsegError):
    """A video source cannot be opened or read."""


class SinkError(RtsegError):
    """An output (file, window, server, push URL) cannot be opened or written."""


class ConfigError(RtsegError):
    """An option value is invalid or options contradict each other."""


class DatasetError(RtsegError):
    """An annotation file or image of a data set is malformed or unreadable."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def exit_status(prog: str, fn: Callable[[], object]) -> int:
    """Run ``fn``: 0 when it returns, 2 after printing ``prog: error: <line>`` for an RtsegError,
    130 after ``prog: interrupted`` on Ctrl-C (no traceback)."""
    try:
        fn()
    except RtsegError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
