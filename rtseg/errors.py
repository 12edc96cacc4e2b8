"""Errors a user can act on.

Every subclass of :class:`RtsegError` carries one line that says what went
wrong, where, and what to do. The CLI prints that line and exits non-zero
without a traceback; any other exception is an internal error and keeps its
traceback.
"""
from __future__ import annotations


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

