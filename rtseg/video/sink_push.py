"""Push annotated video to an RTSP or RTMP server (H.264 via PyAV), reconnecting after an outage.

RTSP is published over TCP (``rtsp_transport=tcp``: no UDP ports to open, no
packet loss on the LAN); RTMP carries the stream in FLV. Frames are encoded
here; the connection itself (connect, handshake, writes) lives in a child
process (:mod:`rtseg.video.push_worker`) that is killed when the server hangs.

The sink is a facade (:class:`PushSink`) over the state its thread works on (:class:`_Sender`): the
thread never references the facade, so a sink dropped without ``close()`` can be collected, and its
finalizer (which also runs at interpreter exit) stops the thread and ends the child.
"""
from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

import numpy as np

from rtseg.errors import SinkError, first_line
from rtseg.types import Frame, Prediction
from rtseg.video.h264 import H264Encoder, check_crf
from rtseg.video.push_worker import PushWorker, WorkerFailed, WorkerStalled
from rtseg.video.sources import redact_url, scrub, stream_url, unresolved_host, url_scheme

_FORMATS = {"rtsp": ("rtsp", {"rtsp_transport": "tcp"}), "rtmp": ("flv", {}), "rtmps": ("flv", {})}
_BACKOFF = (0.25, 8.0)  # seconds before the first reconnection attempt, and at most between two (doubling)
_STOP_GRACE = 0.5  # seconds a send may go without progress once a stop request came (instead of stall_timeout)
_ABANDON_WAIT = 2.0  # seconds the finalizer of an unclosed sink waits for its thread to end the child


class _Outage(Exception):
    """The connection failed, hung or could not be made: ``str(exc)`` is the reason in one line, scrubbed;
    ``unknown_host``: it is that the URL's host name does not resolve (the reason says so)."""

    def __init__(self, reason: str, unknown_host: bool = False) -> None:
        super().__init__(reason)
        self.unknown_host = unknown_host


class PushSink:
    """Publish frames to ``url`` (``rtsp://host:port/path`` or ``rtmp://host/app/key``).

    The constructor checks the URL and starts the network process; the connection is made with the
    first frame (announcing the stream needs its size and codec headers), and the first :meth:`write`
    returns only once the server has taken that frame: a server that refuses it raises :class:`SinkError`
    there at once, one that never answers after ``stall_timeout``. (A probing connection beforehand would
    use up single-client listeners such as ``ffmpeg -listen 1``.) :attr:`opens_on_first_write` tells the
    pipeline's output stage to hand the other outputs the first frame only after that, so a wrong or dead
    URL ends the run before any of them wrote a frame: an earlier recording stays as it was.

    Frames are encoded on the sink's own thread and sent through a child process that holds the
    connection (:class:`~rtseg.video.push_worker.PushWorker`): FFmpeg's network calls can neither be
    timed out nor interrupted (PyAV even connects holding the GIL), so a server that accepts but never
    answers, or stops reading without closing (a pulled cable), would otherwise freeze the pipeline,
    Ctrl-C and SIGTERM. After the first, ``write`` queues the frame (waiting while ``queue_size`` frames are
    queued: nothing is dropped while connected). A packet the server has not taken after ``stall_timeout``
    seconds kills the child: the connection is lost like a closed one.

    A connection that fails or hangs after it has carried frames (server restarted, network blip,
    frozen server) is re-opened with back-off (0.25 s doubling to 8 s): a new process and a new encoder,
    key frame first, timestamps continuing from the first frame of the run; an attempt that hangs is
    cut after ``stall_timeout``. Meanwhile ``write`` never waits and frames are not pushed (counted in
    :attr:`dropped`; the newest is kept to open the next connection with); ``on_event`` (a callable
    taking one line, default: nothing) is told once when the connection is lost and once when it is
    back. After ``reconnect_timeout`` seconds without a connection (0: no reconnecting) ``write``/``close``
    raise SinkError. A first connection that fails or hangs is an error at once, as a wrong URL must
    not be retried silently. :meth:`interrupt` (a stop request) ends reconnecting and cuts a send that
    has made no progress for 0.5 s, so Ctrl-C is not held up by an outage or a hung server.

    A sink dropped without :meth:`close`, or still open at interpreter exit, is ended by a finalizer: what
    is queued is dropped, the stream cut and the child process ended (waiting at most 2 s for the thread).
    """

    opens_on_first_write = True
    """The first :meth:`write` makes the connection (:class:`rtseg.video.fanout.SinkWriter` writes it first)."""

    def __init__(self, url: str, *, fps_hint: float | None = None, preset: str = "veryfast", crf: int = 23,
                 stall_timeout: float = 10.0, queue_size: int = 8, reconnect_timeout: float = 60.0) -> None:
        check_crf("PushSink", crf)  # here: the encoder is only made at the first frame of a connection
        self._sender = _Sender(url, fps_hint=fps_hint, preset=preset, crf=crf, stall_timeout=stall_timeout,
                               queue_size=queue_size, reconnect_timeout=reconnect_timeout)
        self.url = self._sender.url
        self._finalizer = weakref.finalize(self, self._sender.abandon)

    @property
    def on_event(self) -> Callable[[str], None]:
        """Told one line per outage and per recovery, on the sender thread (a callback that references the
        sink keeps an unclosed sink alive)."""
        return self._sender.on_event

    @on_event.setter
    def on_event(self, callback: Callable[[str], None]) -> None:
        self._sender.on_event = callback

    @property
    def sent(self) -> int:
        """Frames sent so far."""
        return self._sender.sent

    @property
    def dropped(self) -> int:
        """Frames not pushed during outages so far."""
        return self._sender.dropped

    @property
    def reconnects(self) -> int:
        """Connections re-opened after an outage so far."""
        return self._sender.reconnects

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Queue ``annotated`` ((H, W, 3) uint8 BGR, not modified afterwards) for sending at the frame's timestamp;
        until the first connection has carried a frame, wait for that (SinkError when it failed)."""
        self._sender.write(frame, annotated)

    def interrupt(self) -> None:
        """Stop request (Ctrl-C, SIGTERM): stop reconnecting and cut a hung send or connection attempt
        (after 0.5 s without progress); a working connection still sends what is queued."""
        self._sender.interrupt()

    def close(self) -> None:
        """Send what is queued, end the stream (idempotent); SinkError when the server failed or stayed away.

        Bounded: every packet and the end of the stream get at most ``stall_timeout`` seconds without
        progress (then the process holding the connection is killed). While disconnected, reconnecting
        stops and the newest frame is dropped.
        """
        self._finalizer.detach()
        self._sender.close()


class _Sender:
    """A :class:`PushSink`'s state and its sender thread, which references this and never the facade."""

    def __init__(self, url: str, *, fps_hint: float | None = None, preset: str = "veryfast", crf: int = 23,
                 stall_timeout: float = 10.0, queue_size: int = 8, reconnect_timeout: float = 60.0) -> None:
        self._shown = redact_url(url)
        scheme = url_scheme(url)
        if scheme not in _FORMATS:
            raise SinkError(f"push output {self._shown}: unsupported scheme {scheme!r}; use rtsp:// or rtmp://")
        try:
            self.url = stream_url(url)
        except ValueError as exc:
            raise SinkError(f"push output {self._shown}: {exc}") from None
        if os.name != "posix":  # the sender process gets its socket by descriptor passing (pass_fds)
            raise SinkError(f"push output {self._shown}: --push needs Linux or macOS; push from there, or record "
                            "with --output and push the file with ffmpeg")
        self._format, self._format_options = _FORMATS[scheme]
        self._encoder_options = {"fps_hint": fps_hint, "preset": preset, "crf": crf}
        self._encoder: H264Encoder | None = None  # of the current connection; None: the next one starts anew
        self._worker: PushWorker | None = None  # the process for the current (or next) connection
        self._t0: float | None = None  # media time of the run's first frame: output time 0 of every connection
        self.on_event: Callable[[str], None] = lambda line: None
        self.sent = self.dropped = self.reconnects = 0  # frames sent, frames not pushed during outages
        self._stall_timeout, self._reconnect_timeout = stall_timeout, reconnect_timeout
        self._pending: deque[tuple[np.ndarray, float]] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._lost: tuple[float, str] | None = None  # (time.monotonic(), reason) while disconnected
        self._attempt_error: _Outage | None = None  # why the last reconnection attempt failed
        self._error: SinkError | None = None
        self._stop = threading.Event()  # no more reconnecting: closing or a stop request
        self._interrupted = False  # a stop request: a send without progress is cut after _STOP_GRACE
        self._closing = self._closed = False
        self._abandoned = False  # the sink was dropped unclosed: stop now, drop what is queued, cut the stream
        # a daemon: at exit the interpreter joins other threads before the finalizer that stops this one runs
        self._thread = threading.Thread(target=self._run, name="rtseg-push", daemon=True)
        self._thread.start()

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        """:meth:`PushSink.write`."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        with self._cond:
            while self._lost is None and len(self._pending) >= self._queue_size:
                self._raise_if_failed()
                self._cond.wait(0.1)
            self._raise_if_failed()
            if self._lost is not None:  # disconnected: keep only the newest frame, to reconnect with
                self.dropped += len(self._pending)
                self._pending.clear()
            self._pending.append((annotated, t))
            self._cond.notify_all()
            while self.sent == 0 and self._thread.is_alive():  # the first connection is not made yet: a failure
                self._raise_if_failed()  # to make it is this write's
                self._cond.wait(0.1)
            self._raise_if_failed()

    def interrupt(self) -> None:
        """:meth:`PushSink.interrupt`."""
        self._interrupted = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """:meth:`PushSink.close`."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self._stall_timeout + 5.0)  # the thread bounds itself; this bounds a bug
        with self._cond:
            if self._thread.is_alive() and self._error is None:
                self._error = SinkError(f"push output {self._shown}: the sender did not finish; "
                                        "the stream may be cut short")
            self._raise_if_failed()

    def abandon(self) -> None:
        """The finalizer of a sink dropped without close() (or open at interpreter exit): stop now, dropping what
        is queued and cutting the stream, and wait (at most _ABANDON_WAIT) for the thread to end the child."""
        self._abandoned = True
        self._stop.set()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:  # the garbage collector may run it on the thread
            self._thread.join(_ABANDON_WAIT)

    # -- the sender thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        """The sender thread: start the network process, then send queued frames until closed and drained
        (reconnecting after a loss), end the stream. Every process it starts ends with it."""
        try:
            self._worker = PushWorker()  # spawning and importing PyAV are paid now, not on the first frame
            self._send_loop()
        except Exception as exc:  # a bug, or the encoder failing: the run must not wait on a dead thread
            with self._cond:
                if self._error is None:
                    self._error = SinkError(f"push output {self._shown}: failed ({first_line(exc)})")
                    self._error.__cause__ = exc
            raise
        finally:
            if self._worker is not None:
                self._worker.kill()
            with self._cond:
                self._cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if self._abandoned:
                    return
                if not self._pending:
                    break
                image, t = self._pending.popleft()
                self._cond.notify_all()
            try:
                self._send(image, t)
            except _Outage as exc:
                if self._abandoned:  # the send was cut on purpose
                    return
                if self.sent == 0 or self._reconnect_timeout <= 0:
                    self._fail(exc)  # a first connection that fails: a wrong URL, a server not running
                    return
                if not self._reconnect(str(exc), (image, t)):
                    return
                continue
            with self._cond:
                self.sent += 1
                self._cond.notify_all()  # (a first write waits for it)
        if self._encoder is not None:
            try:
                for packet in self._encoder.flush():
                    self._worker.send(packet, self._limit)
                self._worker.end(self._limit)
            except (WorkerFailed, WorkerStalled) as exc:
                outage = self._outage(exc)
                if self.sent == 0 or self._reconnect_timeout <= 0:
                    self._fail(outage)
                else:
                    self.on_event(f"push output {self._shown} lost ({outage}) while ending; the rest is not pushed")

    def _send(self, image: np.ndarray, t: float) -> None:
        """Encode one frame and hand its packets to the server (opening the connection on a new encoder's
        first frame); _Outage if the connection failed or made no progress for the allowed time."""
        if self._encoder is None:
            self._encoder = H264Encoder(None, t0=self._t0, **self._encoder_options)  # the run's clock continues
        packets = self._encoder.encode(image, t)
        self._t0 = self._encoder.t0
        try:
            if self._worker.taken == 0 and packets:
                width, height = self._encoder.size
                self._worker.open(url=self.url, format=self._format, options=dict(self._format_options),
                                  width=width, height=height, rate=self._encoder.rate)
            for packet in packets:
                self._worker.send(packet, self._limit)
        except (WorkerFailed, WorkerStalled) as exc:
            if not self._abandoned:  # (an abandoned sink makes no next connection)
                self._worker = PushWorker()  # the next connection's process starts during the back-off
            self._encoder = None  # the next connection starts with a key frame
            raise self._outage(exc) from None

    def _limit(self) -> float:
        """Seconds a send may go without progress now (none once abandoned: the send is cut at once)."""
        if self._abandoned:
            return 0.0
        return min(self._stall_timeout, _STOP_GRACE) if self._interrupted else self._stall_timeout

    def _outage(self, exc: WorkerFailed | WorkerStalled) -> _Outage:
        """The outage the network process reported (FFmpeg's "Input/output error" of a host name that does not
        resolve named as that)."""
        if isinstance(exc, WorkerStalled):
            what = "the server stopped reading" if exc.taken else "no answer from the server"
            waited = f"{exc.waited:.1f}s" if self._interrupted else f"{self._stall_timeout:g}s"
            return _Outage(f"{what} for {waited}")
        unknown = unresolved_host(self.url) if str(exc) == os.strerror(errno.EIO) else None
        return _Outage(unknown, unknown_host=True) if unknown else _Outage(scrub(str(exc), self.url))

    def _fail(self, outage: _Outage) -> None:
        what = (f"{outage}; check the name in the URL" if outage.unknown_host else
                f"send failed ({outage}); is the server running and accepting this path?")
        with self._cond:
            self._error = self._error or SinkError(f"push output {self._shown}: {what}")

    def _reconnect(self, reason: str, failed: tuple[np.ndarray, float]) -> bool:
        """After a send of ``failed`` failed: open new connections with back-off until one has sent the newest
        frame (True), or until stopped or ``reconnect_timeout`` has passed (False; the error is set)."""
        lost = time.monotonic()
        deadline = lost + self._reconnect_timeout
        with self._cond:
            self._lost = (lost, reason)
            self._attempt_error = None
            self._pending.appendleft(failed)
            self.dropped += len(self._pending) - 1  # all but the newest, which opens the next connection
            while len(self._pending) > 1:
                self._pending.popleft()
            self._cond.notify_all()
        if self._stop.is_set():
            self.on_event(f"push output {self._shown} lost ({reason}) while ending; the rest is not pushed")
            return False
        self.on_event(f"push output {self._shown} lost ({reason}); reconnecting for up to "
                      f"{self._reconnect_timeout:g}s, frames are not pushed meanwhile")
        delay = _BACKOFF[0]
        while not self._stop.wait(max(0.0, min(delay, deadline - time.monotonic()))):
            with self._cond:
                if self._error is not None:  # write() gave up at the deadline
                    return False
                item = self._pending[-1]
            try:
                self._send(*item)  # a new encoder starts with a key frame
            except _Outage as exc:
                with self._cond:
                    self._attempt_error = exc
                    if time.monotonic() >= deadline:
                        self._error = self._error or self._give_up_error()
                        self._cond.notify_all()
                        return False
                delay = min(2 * delay, _BACKOFF[1])
                continue
            with self._cond:
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
                else:
                    self.dropped -= 1  # write() replaced it meanwhile and counted it, but it was sent
                self.sent += 1
                self.reconnects += 1
                self._lost = None
                dropped = self.dropped
                self._cond.notify_all()
            self.on_event(f"push output {self._shown} back after {time.monotonic() - lost:.1f}s "
                          f"(reconnection {self.reconnects}; {dropped} frames not pushed so far)")
            return True
        return False

    # -- shared state ------------------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        """(Holding ``_cond``.) Raise the sender's error, or the give-up error once the connection has been
        down for ``reconnect_timeout`` seconds."""
        lost = self._lost
        if self._error is None and lost is not None and time.monotonic() - lost[0] >= self._reconnect_timeout:
            self._error = self._give_up_error()
        if self._error is not None:
            raise self._error

    def _give_up_error(self) -> SinkError:
        """(Holding ``_cond``, while disconnected.) The one line that ends the run after a long outage."""
        last = self._attempt_error
        why = "" if last is None else f": {last}"
        advice = "check the name in the URL" if last is not None and last.unknown_host else "is the server running?"
        return SinkError(f"push output {self._shown} lost ({self._lost[1]}) and not back after "
                         f"{self._reconnect_timeout:g}s{why}; {advice} (--reconnect-timeout S waits longer)")
