"""Write every frame to several sinks at once (the pipeline's output stage).

The first sink is written on the calling thread, every other sink on a daemon thread of its own
(a sink always sees the same thread: window toolkits need that), and :meth:`SinkWriter.write`
returns when all of them have the frame. Each sink still gets the frames in order, one at a
time, and a frame costs the output stage its slowest sink instead of the sum of all (an MP4
encode and a JSON Lines record with mask RLEs overlap: the encoder and the device RLE do not
hold the GIL).

A sink whose first ``write`` opens what it writes to (``opens_on_first_write = True``: the push sink,
whose connection needs the first frame's size) gets the first frame before the others, which get it
only once that write succeeded: when it fails (a wrong or dead push URL), no other sink has had a frame,
so their files are left as they were (an earlier recording is not replaced by a stub). Not for a live
source (``first_alone=False``): it keeps its clock, so the others would lose the frames it drops while the
connection is made (0.3 s on loopback, more over a network); there all sinks get the first frame at once.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Callable, ContextManager, Sequence

import numpy as np

from rtseg.types import Frame, Prediction

if TYPE_CHECKING:
    from rtseg.video.sinks import Sink

_POLL = 0.05  # seconds between checks of the abort event while waiting for a sink


class _SinkThread:
    """A daemon thread running one sink's writes in the order they were submitted."""

    def __init__(self, name: str, context: Callable[[], ContextManager[object]]) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Future] | None] = queue.SimpleQueue()
        self._context = context
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> Future:
        future: Future = Future()
        self.busy = True
        self._jobs.put((job, future))
        return future

    def close(self) -> None:
        """End the thread after the job it is running (if any)."""
        self._jobs.put(None)

    def _run(self) -> None:
        with self._context():
            while (entry := self._jobs.get()) is not None:
                job, future = entry
                error: BaseException | None = None
                try:
                    job()
                except BaseException as exc:  # handed to the waiting writer
                    error = exc
                self.busy = False  # before the writer can learn the outcome and submit the next job
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


class SinkWriter:
    """Hands each frame to ``sinks`` concurrently (see the module doc).

    abort: set by the owner to stop waiting for a sink that does not return.
    thread_context: entered once by each sink thread around all its writes (e.g. a CUDA stream of its own).
    first_alone: the first frame goes to the sinks that open on it before the others (False: a live source).

    A writer dropped without :meth:`close` ends its threads the same way (a finalizer): an idle thread
    would otherwise wait for ever, holding its last job (that sink, frame and image).
    """

    def __init__(self, sinks: Sequence[Sink], *, abort: threading.Event,
                 thread_context: Callable[[], ContextManager[object]] = contextlib.nullcontext,
                 first_alone: bool = True) -> None:
        self.sinks = list(sinks)
        self._abort = abort
        self._threads = [_SinkThread(f"rtseg-sink-{i}", thread_context) for i in range(1, len(self.sinks))]
        self._first = first_alone  # the next frame is the first, for the sinks that open on it alone
        self._finalizer = weakref.finalize(self, _close_all, self._threads)

    @property
    def busy(self) -> bool:
        """Whether a sink thread is still inside a write (then closing that sink would race it)."""
        return any(t.busy for t in self._threads)

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Write one frame to every sink; returns when all have it. The first frame goes to the sinks that
        open on it first, and to the others once those have it (see the module doc).

        Raises the error of the first sink (in ``sinks`` order) that failed, tagged with that sink as
        ``exc._rtseg_sink``; RuntimeError when ``abort`` was set while a sink of a thread of its own was still
        writing (the first sink writes on the calling thread: its own stop grace bounds it).
        """
        everyone = range(len(self.sinks))
        if self._first:
            self._first = False
            opening = [i for i in everyone if getattr(self.sinks[i], "opens_on_first_write", False)]
            self._write_to(opening, frame, prediction, annotated)
            everyone = [i for i in everyone if i not in opening]
        self._write_to(everyone, frame, prediction, annotated)

    def _write_to(self, which: Sequence[int], frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Write one frame to the sinks at the indices ``which`` (ascending) at once: :meth:`write`."""
        futures = {i: self._threads[i - 1].submit(lambda s=self.sinks[i]: s.write(frame, prediction, annotated))
                   for i in which if i > 0}
        errors: list[tuple[Sink, BaseException]] = []
        if which and which[0] == 0:
            try:
                self.sinks[0].write(frame, prediction, annotated)
            except BaseException as exc:
                errors.append((self.sinks[0], exc))
        for i, future in futures.items():
            exc = self._outcome(self.sinks[i], future)
            if exc is not None:
                errors.append((self.sinks[i], exc))
        if errors:
            sink, exc = errors[0]
            exc._rtseg_sink = sink  # type: ignore[attr-defined]  # the one sink to abort
            raise exc

    def _outcome(self, sink: Sink, future: Future) -> BaseException | None:
        while True:
            try:
                return future.exception(timeout=_POLL)
            except FutureTimeout:
                if self._abort.is_set():
                    return RuntimeError(f"aborted while {type(sink).__name__} was still writing")

    def close(self) -> None:
        """End the sink threads (each after its current write); the sinks themselves stay open."""
        self._finalizer()


def _close_all(threads: list[_SinkThread]) -> None:
    """End ``threads``, each after its current job: :meth:`SinkWriter.close`, and the finalizer of a writer dropped
    unclosed."""
    for t in threads:
        t.close()
