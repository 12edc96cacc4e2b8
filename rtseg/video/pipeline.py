"""The concurrent pipeline: decode → inference → annotate → output, one thread per stage.

The output stage hands each frame to all sinks at once (:class:`rtseg.video.fanout.SinkWriter`:
one more thread per sink after the first).

Stages talk through bounded :class:`Channel` s. Between decode and inference a
live source keeps only the newest frame (the oldest is dropped and counted,
so latency never accumulates); a file source blocks instead (back-pressure,
nothing dropped). Every wait has a timeout and re-checks the abort event.

A failing stage (source, engine, annotator or sink raising) records its error,
stops the source and closes its inbox (so producers waiting on it give up at
once), and sends the end marker on: frames it had already passed on still
reach the sinks. The first error is re-raised in the caller with its cause; the
sinks are finalised (what they got is complete), except a sink whose own write
failed, which is aborted (``abort()`` where it has one) rather than finalised.
A stop request (``stop()``, Ctrl-C, SIGTERM, SIGHUP) ends the source, lets the frames
in flight reach the sinks, and closes every sink; a second one (Ctrl-C, SIGTERM, SIGHUP) aborts at once.

Sinks (:class:`rtseg.video.sinks.Sink`) take ``write(frame, prediction, annotated)``
and ``close()``; a sink may also offer ``abort()`` (called instead of ``close()``
after a failed run, so that it leaves its output recognisably unfinished) and set
``stop_requested = True`` (e.g. its window was closed) to end the run gracefully, and ``interrupt()``
(called on a stop request: a sink blocked on a slow reader gives up soon instead of holding the run).
A sink whose first ``write`` makes its connection (``opens_on_first_write``: the push sink) gets the first frame
before the other sinks, so a push that cannot connect ends the run before they wrote anything (the fanout module).
A sink that reconnects after outages (the push sink) counts them in ``reconnects``; the metrics add
them up as push reconnects, beside the source's.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence

import numpy as np

from rtseg.engines.base import Engine
from rtseg.errors import STOP_SIGNALS, ConfigError, RtsegError, Terminated, handled, note_stop_signal
from rtseg.types import Frame, Prediction
from rtseg.video.fanout import SinkWriter
from rtseg.video.metrics import Metrics, Progress
from rtseg.video.sources import Source

if TYPE_CHECKING:
    from rtseg.video.sinks import Sink

_END = object()
_POLL = 0.05  # seconds between checks of the abort event while waiting


class PipelineError(RuntimeError):
    """An internal (non-user) error inside a stage; ``__cause__`` holds the original exception."""


class Channel:
    """A bounded FIFO between two stages.

    drop_oldest: when full, ``put`` removes the oldest item (calling ``on_drop``) instead
        of waiting; used after a live source.
    """

    def __init__(self, maxsize: int, *, drop_oldest: bool = False, on_drop: Callable[[], None] | None = None) -> None:
        self._items: deque[Any] = deque()
        self._maxsize, self._drop_oldest, self._on_drop = maxsize, drop_oldest, on_drop
        self._cond = threading.Condition()
        self._closed = False

    def close(self) -> None:
        """The consumer is gone: every pending and later ``put`` returns False at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def put(self, item: Any, abort: threading.Event, *, wait: bool = False) -> bool:
        """Enqueue ``item``; False (item not queued) when ``abort`` was set while waiting.

        wait: wait for room even in drop_oldest mode (the end marker must not push out the last frame).
        """
        with self._cond:
            while len(self._items) >= self._maxsize and not self._closed:
                if self._drop_oldest and not wait:
                    self._items.popleft()
                    if self._on_drop is not None:
                        self._on_drop()
                elif abort.is_set():
                    return False
                else:
                    self._cond.wait(_POLL)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, abort: threading.Event) -> Any:
        """Dequeue the oldest item; ``_END`` when ``abort`` was set while waiting."""
        with self._cond:
            while not self._items:
                if abort.is_set():
                    return _END
                self._cond.wait(_POLL)
            item = self._items.popleft()
            self._cond.notify_all()
            return item


@dataclass
class _Item:
    frame: Frame
    timings: dict[str, float] = field(default_factory=dict)
    prediction: Prediction | None = None
    annotated: np.ndarray | None = None


def _tagged(work: Callable[[_Item], None], item: _Item) -> None:
    """Run ``work(item)``; an exception leaving it carries the frame's seq (for the error message)."""
    try:
        work(item)
    except BaseException as exc:
        exc._rtseg_seq = item.frame.seq  # type: ignore[attr-defined]
        raise


def _default_annotator(image: np.ndarray, prediction: Prediction, *, hud: dict | None = None) -> np.ndarray:
    """:func:`rtseg.annotate` of a frame the pipeline inferred on: the pipeline never writes its frames, so an
    engine's device overlay blends into the device copy of the frame it kept (no second upload)."""
    from rtseg.ops.overlay import _annotate_inferred

    return _annotate_inferred(image, prediction, hud=hud)


class Pipeline:
    """Run ``source`` through ``engine`` and ``annotator`` into ``sinks`` on four threads (and one per extra sink).

    An engine with the architecture's split (``preprocess``, ``forward``, ``postprocess``)
    is run stage by stage so that the metrics show each; any other engine is called whole.

    max_frames: stop after this many frames were written (None = until the source ends).
    queue_size: items each channel holds; default 1 for live sources (newest frame only)
        and 4 for files.
    progress: draw a progress bar on stderr (meant for file sources).
    show_hud: pass live FPS / latency / drops to the annotator.
    join_timeout: seconds to wait for the threads after an error or abort before giving up on them.
    """

    def __init__(self, *, source: Source, engine: Engine, sinks: Sequence[Sink],
                 annotator: Callable[..., np.ndarray] = _default_annotator, metrics: Metrics | None = None,
                 max_frames: int | None = None, queue_size: int | None = None, progress: bool = False,
                 show_hud: bool = True, join_timeout: float = 30.0) -> None:
        if getattr(source, "closed", False):  # (an earlier run closed it: this one would end at once, 0 frames)
            raise ConfigError("Pipeline: the source is closed (a run closes its source and sinks); open the source "
                              "again for a new Pipeline")
        self.source, self.engine, self.sinks, self.annotator = source, engine, list(sinks), annotator
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_frames, self.show_hud, self.join_timeout = max_frames, show_hud, join_timeout
        size = queue_size or (1 if source.is_live else 4)
        self._decoded = Channel(size, drop_oldest=source.is_live, on_drop=self.metrics.add_dropped)
        self._inferred = Channel(size)
        self._annotated = Channel(size)
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self._error: tuple[str, int | None, BaseException] | None = None
        self._error_lock = threading.Lock()
        self._progress = Progress(source.num_frames) if progress else None
        self._writer: SinkWriter | None = None
        self._split = all(callable(getattr(engine, m, None)) for m in ("preprocess", "forward", "postprocess"))
        self._cuda = str(getattr(engine, "device", "")).startswith("cuda")
        self._run_once = threading.Lock()  # taken by the first run() and never given back
        self.interrupted = False

    # -- control -----------------------------------------------------------------
    def stop(self) -> None:
        """Finish gracefully: end the source, let frames in flight reach the sinks (thread-safe); sinks that
        offer ``interrupt()`` are told, so one blocked on a reader that takes no data gives up soon."""
        self._stopping.set()
        self.source.request_stop()
        for sink in self.sinks:
            interrupt = getattr(sink, "interrupt", None)
            if interrupt is not None:
                interrupt()

    def _record(self, stage: str, seq: int | None, exc: BaseException) -> None:
        """Keep the first error for ``run()`` to raise, and stop taking new frames."""
        with self._error_lock:
            if self._error is None:
                self._error = (stage, seq, exc)
        self.stop()

    def _on_signal(self, signum: int, _frame: object) -> None:
        """A stop signal (:data:`rtseg.errors.STOP_SIGNALS`): the first stops the run gracefully, a second aborts it,
        raised from ``run()`` as Ctrl-C's KeyboardInterrupt or :class:`Terminated` (exit 130, 143 or 129)."""
        note_stop_signal(signum)
        if self.interrupted:
            how = f"second {signal.Signals(signum).name}"
            self._record("signal", None, KeyboardInterrupt(how) if signum == signal.SIGINT else Terminated(signum, how))
            self._abort.set()
        self.interrupted = True
        self.stop()

    # -- stages ------------------------------------------------------------------
    def _stage(self, name: str, body: Callable[[], None], inbox: Channel | None,
               outbox: Channel | None) -> threading.Thread:
        """A thread running ``body``; on any exit it closes its inbox and sends the end marker on.

        An error is recorded for the caller; frames already passed on still reach the
        sinks, and producers waiting on the closed inbox give up at once.
        """
        def run() -> None:
            try:
                with self._device_stream(name):
                    body()
            except BaseException as exc:  # re-raised in the caller by run()
                self._record(name, getattr(exc, "_rtseg_seq", None), exc)
            finally:
                if inbox is not None:
                    inbox.close()
                if outbox is not None:
                    outbox.put(_END, self._abort, wait=True)

        return threading.Thread(target=run, name=f"rtseg-{name}", daemon=True)

    def _decode(self) -> None:
        try:
            for frame in self.source:
                item = _Item(frame, {"decode": self.source.decode_seconds})
                self.metrics.set_reconnects(source=self.source.reconnects)
                if self._stopping.is_set() or not self._decoded.put(item, self._abort):
                    break
        finally:
            self.source.close()

    def _transform(self, name: str, inbox: Channel, outbox: Channel,
                   work: Callable[[_Item], None]) -> Callable[[], None]:
        def body() -> None:
            while (item := inbox.get(self._abort)) is not _END:
                t0 = time.perf_counter()
                _tagged(work, item)
                item.timings[name] = time.perf_counter() - t0
                if not outbox.put(item, self._abort):
                    return

        return body

    def _inference_body(self) -> Callable[[], None]:
        """The inference stage; on CUDA it first warms the engine up once more in its own thread: torch keeps
        cuDNN's autotuner choices per thread (cuDNN v8 API), so the warm-up ``run`` did in the caller's thread
        would leave an eager engine tuning its convolutions on the first frames."""
        body = self._transform("inference", self._decoded, self._inferred, self._infer)
        if not self._cuda:
            return body

        def warmed() -> None:
            self.engine.warmup()
            body()

        return warmed

    def _infer(self, item: _Item) -> None:
        """Run the engine; time preprocess / network / postprocess when the engine has that split."""
        image, engine = item.frame.image, self.engine
        if not self._split:
            item.prediction = engine(image)
            return
        t0 = time.perf_counter()
        x = engine.preprocess([image])
        t1 = self._synced()
        raw = engine.forward(x)
        t2 = self._synced()
        item.prediction = engine.postprocess(raw, [image.shape[:2]])[0]
        t3 = self._synced()
        item.timings.update(preprocess=t1 - t0, network=t2 - t1, postprocess=t3 - t2)

    def _synced(self) -> float:
        """``perf_counter()`` after this thread's CUDA stream has finished its queued work (CUDA is asynchronous)."""
        if self._cuda:
            import torch

            torch.cuda.current_stream(self.engine.device).synchronize()
        return time.perf_counter()

    def _device_stream(self, stage: str) -> ContextManager[object]:
        """The CUDA stream ``stage`` queues its device work on (a context; nothing off CUDA).

        Inference keeps the default stream (where warm-up compiled and recorded its graphs); annotate
        (mask blend, frame download) and output (each sink thread: device RLE for JSON) get streams of their own, so a
        frame's blend or RLE and the next frame's network neither queue behind nor wait for each other.
        What they read is finished before it reaches them: ``postprocess`` waited for the inference
        stream, and each of them waits for its own stream before returning (downloads), so memory
        that one stream frees is never still in use by another.
        """
        if not self._cuda or stage not in ("annotate", "output"):
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(torch.cuda.Stream(device=self.engine.device))

    def _annotate(self, item: _Item) -> None:
        hud = self.metrics.hud() if self.show_hud else None
        item.annotated = self.annotator(item.frame.image, item.prediction, hud=hud)

    def _output(self) -> None:
        self._writer = SinkWriter(self.sinks, abort=self._abort, thread_context=lambda: self._device_stream("output"),
                                  first_alone=not self.source.is_live)
        try:
            self._write_all(self._writer)
        finally:
            self._writer.close()

    def _write_all(self, writer: SinkWriter) -> None:
        written = 0
        while (item := self._annotated.get(self._abort)) is not _END:
            if self.max_frames is not None and written >= self.max_frames:
                continue  # frames in flight after the limit are not written
            t0 = time.perf_counter()
            _tagged(lambda it: writer.write(it.frame, it.prediction, it.annotated), item)
            item.timings["output"] = time.perf_counter() - t0
            written += 1
            self._count_sink_reconnects()
            self.metrics.record(timings=item.timings, capture_time=item.frame.capture_time,
                                output_time=time.monotonic())
            if self._progress is not None:
                self._progress.update(written)
            if (self.max_frames is not None and written >= self.max_frames) or any(
                    getattr(sink, "stop_requested", False) for sink in self.sinks):
                self.stop()

    # -- run ---------------------------------------------------------------------
    def run(self) -> Metrics:
        """Run to the end of the source (or ``max_frames``, or a stop request); return the metrics.

        Raises the first stage error: an RtsegError as itself, anything else as
        PipelineError with the original as ``__cause__``. Sinks are closed in every case.
        A Pipeline runs once (its run closed its source, sinks and channels): a second call is a ConfigError at once.
        """
        if not self._run_once.acquire(blocking=False):
            raise ConfigError("Pipeline.run: this Pipeline has run already (its source and sinks are closed); "
                              "make a new Pipeline, with a new source and sinks, for each run")
        threads = [
            self._stage("decode", self._decode, None, self._decoded),
            self._stage("inference", self._inference_body(), self._decoded, self._inferred),
            self._stage("annotate", self._transform("annotate", self._inferred, self._annotated, self._annotate),
                        self._inferred, self._annotated),
            self._stage("output", self._output, self._annotated, None),
        ]
        handlers = self._install_signals()
        try:
            self.engine.warmup()
            for t in threads:
                t.start()
            self._join(threads)
        finally:
            self._restore_signals(handlers)
            if not threads[0].is_alive():  # also when warm-up failed and decoding never started
                self.source.close()
            writing = self._writer is not None and self._writer.busy
            close_error = self._close_sinks(stuck=any(t.is_alive() for t in threads) or writing)
            self._count_sink_reconnects()  # a sink may have reconnected after its last frame was handed over
            if self._progress is not None:
                self._progress.close()
        if self._error is not None:
            stage, seq, exc = self._error
            if isinstance(exc, (RtsegError, KeyboardInterrupt, Terminated)):
                raise exc
            where = f" on frame {seq}" if seq is not None else ""
            raise PipelineError(f"{stage} stage failed{where} of {self.source.source_id}: "
                                f"{type(exc).__name__}: {exc}") from exc
        if close_error is not None:
            raise close_error
        return self.metrics

    def _count_sink_reconnects(self) -> None:
        self.metrics.set_reconnects(push=sum(getattr(sink, "reconnects", 0) for sink in self.sinks))

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the stages; after an error or abort, give them ``join_timeout`` seconds at most."""
        deadline = None
        while any(t.is_alive() for t in threads):
            if deadline is None and (self._abort.is_set() or self._error is not None):
                deadline = time.monotonic() + self.join_timeout
            if deadline is not None and time.monotonic() > deadline:
                stuck = ", ".join(t.name for t in threads if t.is_alive())
                stuck_error = PipelineError(f"threads did not stop within {self.join_timeout:g}s: {stuck}")
                self._record("join", None, stuck_error)
                self._abort.set()
                return
            for t in threads:
                t.join(_POLL)

    def _close_sinks(self, *, stuck: bool) -> BaseException | None:
        """Close (finalise) every sink, except that a sink whose own write failed is aborted (``abort()``
        where it has one: its output stays recognisably unfinished). What the other sinks got before a
        source, engine or sink failure is complete and consistent, so it is kept as a finished output.
        Everything is aborted when stage threads may still be writing (``stuck``) or after a second
        Ctrl-C. Returns the first error a sink raised while closing."""
        stage, _, error = self._error if self._error is not None else (None, None, None)
        failed_sink = getattr(error, "_rtseg_sink", None)
        abort_all = stuck or stage == "signal"
        first: BaseException | None = None
        for sink in self.sinks:
            try:
                getattr(sink, "abort", sink.close)() if abort_all or sink is failed_sink else sink.close()
            except BaseException as exc:
                first = first or exc
        return first

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in handled(STOP_SIGNALS)}

    @staticmethod
    def _restore_signals(handlers: dict[int, Any]) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
