"""Push annotated video to an RTSP or RTMP server (H.264 via PyAV).

RTSP is published over TCP (``rtsp_transport=tcp``: no UDP ports to open, no
packet loss on the LAN); RTMP carries the stream in FLV.
"""
from __future__ import annotations

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
    unreachable server raises :class:`SinkError` from the first :meth:`write`.
    (A probing connection beforehand would use up single-client listeners
    such as ``ffmpeg -listen 1``.)
    """

    def __init__(self, url: str, *, fps_hint: float | None = None, preset: str = "veryfast", crf: int = 23) -> None:
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
        self._closed = False

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Encode and send ``annotated`` ((H, W, 3) uint8 BGR) at the frame's timestamp."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        try:
            self._encoder.encode(annotated, t)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"push output {self._shown}: send failed ({exc}); is the server running and accepting this path?") from None

    def close(self) -> None:
        """Flush the encoder and end the stream (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._encoder.flush()
        except (av.error.FFmpegError, OSError):
            pass  # the server went away; closing below still releases our side
        finally:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError):
                pass
