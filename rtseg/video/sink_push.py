"""Push annotated video to an RTSP or RTMP server (H.264 via PyAV).

RTSP is published over TCP (``rtsp_transport=tcp``: no UDP ports to open, no
packet loss on the LAN); RTMP carries the stream in FLV.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from urllib.parse import urlsplit

import av
import numpy as np

from rtseg.errors import SinkError
from rtseg.types import Frame, Prediction
from rtseg.video.h264 import H264Encoder
from rtseg.video.sources import redact_url

_FORMATS = {"rtsp": ("rtsp", {"rtsp_transport": "tcp"}), "rtmp": ("flv", {}), "rtmps": ("flv", {})}


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
    is dropped) and raises SinkError once a send has been stuck for ``stall_timeout``
    seconds or has failed.
    """

    def __init__(self, url: str, *, fps_hint: float | None = None, preset: str = "veryfast", crf: int = 23,
                 stall_timeout: float = 10.0, queue_size: int = 8) -> None:
        self.url = url
        self._shown = redact_url(url)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _FORMATS:
            raise SinkError(f"push output {self._shown}: unsupported scheme {scheme!r}; use rtsp:// or rtmp://")
        fmt, options = _FORMATS[scheme]
        try:
            self._container = av.open(url, "w", format=fmt, options=dict(options), timeout=10.0)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"push output {self._shown}: cannot open ({exc}); check the URL") from None
        self._encoder = H264Encoder(self._container, fps_hint=fps_hint, preset=preset, crf=crf)
        self._stall_timeout = stall_timeout
        self._pending: deque[tuple[np.ndarray, float]] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._busy_since: float | None = None  # time.monotonic() when the send in progress began
        self._error: SinkError | None = None
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="rtseg-push", daemon=True)
        self._thread.start()

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Queue ``annotated`` ((H, W, 3) uint8 BGR, not modified afterwards) for sending at the frame's timestamp."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        with self._cond:
            while len(self._pending) >= self._queue_size:
                self._raise_if_failed()
                self._cond.wait(0.1)
            self._raise_if_failed()
            self._pending.append((annotated, t))
            self._cond.notify()

    def _raise_if_failed(self) -> None:
        """(Holding ``_cond``.) Raise the sender's error, or a stall error once a send hangs too long."""
        if self._error is None and self._busy_since is not None \
                and time.monotonic() - self._busy_since > self._stall_timeout:
            self._error = SinkError(f"push output {self._shown}: the server took no data for "
                                    f"{self._stall_timeout:g}s; is it still running and reachable?")
        if self._error is not None:
            raise self._error

    def _send_loop(self) -> None:
        """Encode and send queued frames until closed and drained, then end the stream."""
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._closing)
                    if not self._pending:
                        break
                    image, t = self._pending.popleft()
                    self._busy_since = time.monotonic()
                    self._cond.notify_all()
                self._encoder.encode(image, t)
                with self._cond:
                    self._busy_since = None
            with self._cond:
                self._busy_since = time.monotonic()
            self._encoder.flush()
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            with self._cond:
                self._error = self._error or SinkError(
                    f"push output {self._shown}: send failed ({exc}); is the server running and accepting this path?")
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()
        finally:
            with self._cond:
                self._busy_since = None

    def close(self) -> None:
        """Send what is queued, end the stream (idempotent); SinkError when the server failed or hung.

        A sender stuck on a dead connection is left behind (a daemon thread) after ``stall_timeout``
        seconds; the container is never touched from this thread.
        """
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(self._stall_timeout)
        with self._cond:
            if self._thread.is_alive() and self._error is None:
                self._error = SinkError(f"push output {self._shown}: the server took no data for "
                                        f"{self._stall_timeout:g}s at the end; the stream may be cut short")
            self._raise_if_failed()
