"""Push annotated video to an RTSP or RTMP server (H.264 via PyAV), reconnecting after an outage.

RTSP is published over TCP (``rtsp_transport=tcp``: no UDP ports to open, no
packet loss on the LAN); RTMP carries the stream in FLV.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable
from urllib.parse import urlsplit

import av
import numpy as np

from rtseg.errors import SinkError, first_line
from rtseg.types import Frame, Prediction
from rtseg.video.h264 import H264Encoder
from rtseg.video.sources import redact_url, scrub

_FORMATS = {"rtsp": ("rtsp", {"rtsp_transport": "tcp"}), "rtmp": ("flv", {}), "rtmps": ("flv", {})}
_AV_ERRORS = (av.error.FFmpegError, OSError)
_BACKOFF = (0.25, 8.0)  # seconds before the first reconnection attempt, and at most between two (doubling)


class PushSink:
    """Publish frames to ``url`` (``rtsp://host:port/path`` or ``rtmp://host/app/key``).

    The constructor checks the URL; the connection is made with the first
    frame (announcing the stream needs its size and codec headers), so an
    unreachable server raises :class:`SinkError` from a following :meth:`write`
    or from :meth:`close`. (A probing connection beforehand would use up
    single-client listeners such as ``ffmpeg -listen 1``.)

    Encoding and sending run on the sink's own thread, the only one that touches
    the container: FFmpeg's muxers have no write timeout (PyAV's ``timeout`` covers
    opening and reading only), so a server that stops reading without closing the
    connection would otherwise block the pipeline, Ctrl-C and SIGTERM for ever.
    ``write`` queues the frame (waiting while ``queue_size`` frames are queued: nothing
    is dropped while connected) and raises SinkError once a send has been stuck for
    ``stall_timeout`` seconds or has failed for good.

    A connection that fails after it has carried frames (server restarted, network
    blip) is re-opened with back-off (0.25 s doubling to 8 s): a new container and a
    new encoder, key frame first, timestamps continuing from the first frame of the
    run. Meanwhile ``write`` never waits and frames are not pushed (counted in
    :attr:`dropped`; the newest is kept to open the next connection with);
    ``on_event`` (a callable taking one line, default: nothing) is told once when
    the connection is lost and once when it is back. After ``reconnect_timeout``
    seconds without a connection (0: no reconnecting) ``write``/``close`` raise
    SinkError. A first connection that fails is an error at once, as a wrong
    URL must not be retried silently. :meth:`interrupt` (a stop request) ends
    reconnecting, so Ctrl-C is not held up by an outage.
    """

    def __init__(self, url: str, *, fps_hint: float | None = None, preset: str = "veryfast", crf: int = 23,
                 stall_timeout: float = 10.0, queue_size: int = 8, reconnect_timeout: float = 60.0) -> None:
        self.url = url
        self._shown = redact_url(url)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _FORMATS:
            raise SinkError(f"push output {self._shown}: unsupported scheme {scheme!r}; use rtsp:// or rtmp://")
        self._format, self._format_options = _FORMATS[scheme]
        self._encoder_options = {"fps_hint": fps_hint, "preset": preset, "crf": crf}
        self._t0: float | None = None  # media time of the run's first frame: output time 0 of every connection
        try:
            self._container, self._encoder = self._open()
        except _AV_ERRORS as exc:
            raise SinkError(f"push output {self._shown}: cannot open ({self._reason(exc)}); check the URL") from None
        self.on_event: Callable[[str], None] = lambda line: None
        self.sent = self.dropped = self.reconnects = 0  # frames sent, frames not pushed during outages
        self._stall_timeout, self._reconnect_timeout = stall_timeout, reconnect_timeout
        self._pending: deque[tuple[np.ndarray, float]] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._busy_since: float | None = None  # time.monotonic() when the send in progress began
        self._lost: tuple[float, str] | None = None  # (time.monotonic(), reason) while disconnected
        self._attempt_error = ""  # why the last reconnection attempt failed
        self._error: SinkError | None = None
        self._stop = threading.Event()  # no more reconnecting: closing or a stop request
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="rtseg-push", daemon=True)
        self._thread.start()

    def _open(self) -> tuple[av.container.OutputContainer, H264Encoder]:
        """A new output container (it connects with the first packet) and encoder; FFmpegError/OSError."""
        container = av.open(self.url, "w", format=self._format, options=dict(self._format_options), timeout=10.0)
        encoder = H264Encoder(container, t0=self._t0, **self._encoder_options)  # the run's clock continues
        return container, encoder

    def _reason(self, exc: BaseException) -> str:
        """An FFmpeg/OS error in one line, without the URL (and so its credentials)."""
        return scrub(getattr(exc, "strerror", None) or first_line(exc), self.url)

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Queue ``annotated`` ((H, W, 3) uint8 BGR, not modified afterwards) for sending at the frame's timestamp."""
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

    def interrupt(self) -> None:
        """Stop request (Ctrl-C, SIGTERM): stop reconnecting; a live connection still sends what is queued."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        """(Holding ``_cond``.) Raise the sender's error, a stall error once a send hangs too long, or the
        give-up error once the connection has been down for ``reconnect_timeout`` seconds."""
        now = time.monotonic()
        if self._error is None and self._busy_since is not None and now - self._busy_since > self._stall_timeout:
            self._error = SinkError(f"push output {self._shown}: the server took no data for "
                                    f"{self._stall_timeout:g}s; is it still running and reachable?")
        if self._error is None and self._lost is not None and now - self._lost[0] >= self._reconnect_timeout:
            self._error = self._give_up_error()
        if self._error is not None:
            raise self._error

    def _give_up_error(self) -> SinkError:
        """(Holding ``_cond``, while disconnected.) The one line that ends the run after a long outage."""
        last = f": {self._attempt_error}" if self._attempt_error else ""
        return SinkError(f"push output {self._shown} lost ({self._lost[1]}) and not back after "
                         f"{self._reconnect_timeout:g}s{last}; is the server running? "
                         "(--reconnect-timeout S waits longer)")

    def _send_loop(self) -> None:
        """Encode and send queued frames until closed and drained (reconnecting after a loss), then end the stream."""
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._closing)
                    if not self._pending:
                        break
                    image, t = self._pending.popleft()
                    self._busy_since = time.monotonic()
                    self._cond.notify_all()
                try:
                    self._encoder.encode(image, t)
                except _AV_ERRORS as exc:
                    if self.sent == 0 or self._reconnect_timeout <= 0:
                        raise  # a first connection that fails is a wrong URL or a server not running: no retrying
                    with self._cond:
                        self._busy_since = None
                    if not self._reconnect(self._reason(exc), (image, t)):
                        return
                    continue
                with self._cond:
                    self._busy_since = None
                    self.sent += 1
                    self._t0 = self._encoder.t0
            with self._cond:
                self._busy_since = time.monotonic()
            self._encoder.flush()
            self._container.close()
        except _AV_ERRORS as exc:
            with self._cond:
                self._error = self._error or SinkError(f"push output {self._shown}: send failed ({self._reason(exc)}); "
                                                       "is the server running and accepting this path?")
            with contextlib.suppress(*_AV_ERRORS):
                self._container.close()
        finally:
            with self._cond:
                self._busy_since = None

    def _reconnect(self, reason: str, failed: tuple[np.ndarray, float]) -> bool:
        """After a send of ``failed`` failed: open new connections with back-off until one has sent the newest
        frame (True), or until stopped or ``reconnect_timeout`` has passed (False; the error is set)."""
        with contextlib.suppress(*_AV_ERRORS):
            self._container.close()
        lost = time.monotonic()
        deadline = lost + self._reconnect_timeout
        with self._cond:
            self._lost = (lost, reason)
            self._attempt_error = ""
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
                self._container, self._encoder = self._open()
                self._encoder.encode(*item)  # a new encoder starts with a key frame
            except _AV_ERRORS as exc:
                with contextlib.suppress(*_AV_ERRORS):
                    self._container.close()
                with self._cond:
                    self._attempt_error = self._reason(exc)
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

    def close(self) -> None:
        """Send what is queued, end the stream (idempotent); SinkError when the server failed, hung or stayed away.

        While disconnected, reconnecting stops and the newest frame is dropped. A sender stuck on a dead
        connection is left behind (a daemon thread) after ``stall_timeout`` seconds; the container is never
        touched from this thread.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            lost = self._lost is not None
        self._thread.join(min(1.0, self._stall_timeout) if lost else self._stall_timeout)
        with self._cond:
            if self._thread.is_alive() and self._error is None and self._lost is None:
                self._error = SinkError(f"push output {self._shown}: the server took no data for "
                                        f"{self._stall_timeout:g}s at the end; the stream may be cut short")
            self._raise_if_failed()
