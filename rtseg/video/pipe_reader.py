"""A pipe or FIFO given as a video file, read for FFmpeg through PyAV's file-object input (:class:`PipeReader`),
so that a stop request or a signal ends a wait for a writer that stalled or never came."""
from __future__ import annotations

import contextlib
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
    nor a signal ended a run whose writer stalled or never came.

    :meth:`read` waits for data :data:`PIPE_POLL_S` s at a time: once ``stop`` is set it ends the input as the
    writer's end would; after ``warn_s`` s without data it says so (``on_event``, and again when data comes);
    after ``limit_s`` s without data (at least ``warn_s``) it ends the input too, ``failure`` saying why (a
    SourceError for the reader's user to raise once the decoder gave out the frames it held). Until the first data
    the messages cannot tell a FIFO no writer opened from a silent writer, and name both.
    The pipe is opened at the first read, inside ``av.open``, without waiting for a writer (``O_NONBLOCK``: a
    blocking open of a FIFO waited for one without end, deaf to a stop request), so that these rules count from
    there. Linux reports no hang-up to a FIFO's reader opened before any writer came: the wait goes on until a
    writer sends data or closes (an empty input then, as before); a read that finds no data (EAGAIN) waits on; a
    re-opened ``/dev/stdin`` is a new open file description: the original standard input stays blocking. PyAV
    never closes a file object: :meth:`close` does.
    """

    def __init__(self, path: str, *, stop: threading.Event, warn_s: float, limit_s: float,
                 on_event: Callable[[str], None]) -> None:
        self.name = path  # (PyAV names the input by it)
        self._stop, self._warn_s, self._limit_s = stop, warn_s, max(warn_s, limit_s)
        self._on_event = on_event
        self._fd: int | None = None
        self._written = False  # data came: a writer came (before, no writer and a silent one look alike)
        self._poll = select.poll()
        self._ended = False  # at the writer's end, a stop request or a failure: every later read is the end
        self.failure: SourceError | None = None

    @property
    def written(self) -> bool:
        """Whether any data came (a writer that closed without writing leaves it False)."""
        return self._written

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, as soon as there are any; b"" at the end (see the class). A signal's exception
        (raised here only in the main thread, where signal handlers run) comes out as :class:`Signalled`."""
        if self._ended:
            return b""
        try:
            if self._fd is None:
                self._fd = os.open(self.name, os.O_RDONLY | os.O_NONBLOCK)
                self._poll.register(self._fd, select.POLLIN)
            data = self._waited(size)
        except Exception:
            self._ended = True
            raise
        except BaseException as exc:
            self._ended = True
            raise Signalled(exc) from None
        self._ended, self._written = not data, self._written or bool(data)
        return data

    def _waited(self, size: int) -> bytes:
        """Up to ``size`` bytes once the pipe has any; b"" once its writer closed it, ``stop`` is set or
        ``limit_s`` passed without data (``failure`` set)."""
        since, warned = time.monotonic(), False
        while True:
            if self._poll.poll(PIPE_POLL_S * 1000):
                with contextlib.suppress(BlockingIOError):  # (ready, yet empty: another reader took it; wait on)
                    data = os.read(self._fd, size)
                    break
            if self._stop.is_set():
                return b""
            silent = time.monotonic() - since
            if silent >= self._limit_s:
                why = "its writer stalled" if self._written else "no program wrote to it, or its writer stalled"
                self.failure = SourceError(f"pipe {self.name} sent no data for {self._limit_s:g}s: {why}; check the "
                                           "program writing to it, or allow longer waits with --reconnect-timeout")
                return b""
            if not warned and silent >= self._warn_s:
                state = "stalled" if self._written else "has no writer yet, or a silent one"
                self._on_event(f"pipe {self.name} {state} (no data for {self._warn_s:g}s); waiting for its writer "
                               f"for up to {self._limit_s:g}s")
                warned = True
        if warned and data:  # (not at the writer's end)
            back = "back" if self._written else "sent its first data"
            self._on_event(f"pipe {self.name} {back} after {time.monotonic() - since:.1f}s")
        return data

    def close(self) -> None:
        """Close the pipe (idempotent)."""
        self._ended = True
        self._on_event = lambda line: None  # (the source's callback: no reference cycle left behind)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
