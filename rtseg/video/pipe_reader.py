"""A pipe or FIFO given as a video file, read for FFmpeg through PyAV's file-object input (:class:`PipeReader`),
so that a stop request or a signal ends a wait for a writer that stalled."""
from __future__ import annotations

import os
import select
import threading
import time
from typing import Callable

from rtseg.errors import SourceError

#: Seconds between checks of a stop request while a pipe sends nothing.
PIPE_POLL_S = 0.05


class Signalled(Exception):
    """A signal's exception (Ctrl-C's KeyboardInterrupt) raised while :meth:`PipeReader.read` waited, carried through
    PyAV, which passes on only an Exception from a file object's ``read`` (it printed any other, dropped it and read
    on); ``args[0]`` is raised again as itself where PyAV returns."""


class PipeReader:
    """A pipe or FIFO given as a video file (``producer | rtseg --source /dev/stdin``, ``mkfifo``), read for FFmpeg
    through PyAV's file-object input: FFmpeg's own read waited for data without end, so that neither a stop request
    nor a signal ended a run whose writer stalled.

    :meth:`read` waits for data :data:`PIPE_POLL_S` s at a time: once ``stop`` is set it ends the input as the
    writer's end would; after ``warn_s`` s without data it says so (``on_event``, and again when data comes back);
    after ``limit_s`` s without data (at least ``warn_s``) it ends the input too, ``failure`` saying why (a
    SourceError for the reader's user to raise once the decoder gave out the frames it held). The FIFO is opened at
    the first read, inside ``av.open`` (waiting there for a writer, as FFmpeg's open did); PyAV never closes a file
    object: :meth:`close` does.
    """

    def __init__(self, path: str, *, stop: threading.Event, warn_s: float, limit_s: float,
                 on_event: Callable[[str], None]) -> None:
        self.name = path  # (PyAV names the input by it)
        self._stop, self._warn_s, self._limit_s = stop, warn_s, max(warn_s, limit_s)
        self._on_event = on_event
        self._fd: int | None = None
        self._poll = select.poll()
        self._ended = False  # at the writer's end, a stop request or a failure: every later read is the end
        self.failure: SourceError | None = None

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, as soon as there are any; b"" at the end (see the class). A signal's exception
        (raised here only in the main thread, where signal handlers run) comes out as :class:`Signalled`."""
        if self._ended:
            return b""
        try:
            if self._fd is None:
                self._fd = os.open(self.name, os.O_RDONLY)
                self._poll.register(self._fd, select.POLLIN)
            data = os.read(self._fd, size) if self._waited() else b""
        except Exception:
            self._ended = True
            raise
        except BaseException as exc:
            self._ended = True
            raise Signalled(exc) from None
        self._ended = not data
        return data

    def _waited(self) -> bool:
        """Wait until the pipe has data (or its writer closed it): True; False once ``stop`` is set or ``limit_s``
        passed without data (``failure`` set)."""
        since, warned = time.monotonic(), False
        while not self._poll.poll(PIPE_POLL_S * 1000):
            if self._stop.is_set():
                return False
            silent = time.monotonic() - since
            if silent >= self._limit_s:
                self.failure = SourceError(f"pipe {self.name} sent no data for {self._limit_s:g}s: its writer "
                                           "stalled; check the program writing to it, or allow longer pauses with "
                                           "--reconnect-timeout")
                return False
            if not warned and silent >= self._warn_s:
                self._on_event(f"pipe {self.name} stalled (no data for {self._warn_s:g}s); waiting for its writer "
                               f"for up to {self._limit_s:g}s")
                warned = True
        if warned:
            self._on_event(f"pipe {self.name} back after {time.monotonic() - since:.1f}s")
        return True

    def close(self) -> None:
        """Close the pipe (idempotent)."""
        self._ended = True
        self._on_event = lambda line: None  # (the source's callback: no reference cycle left behind)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
