"""PyAV (FFmpeg) sources: video files and live network streams (RTSP, RTMP, HTTP)."""
from __future__ import annotations

import time
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from rtseg.errors import ConfigError, SourceError, first_line
from rtseg.video.sources import Source, redact_url, scrub

_AV_ERRORS = (av.FFmpegError, OSError, EOFError)


def _rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """Frames per second of ``stream`` as FFmpeg reports or guesses it; None when unknown."""
    return stream.average_rate or stream.guessed_rate


class FileSource(Source):
    """Frames of a video file, ``start`` to ``end`` seconds, every ``vid_stride``-th one.

    pts: seconds from the start of the file's video stream. ``fps`` is the rate
    after the stride. Never drops: the consumer sets the pace.
    """

    def __init__(self, path: str, *, vid_stride: int = 1, start: float = 0.0, end: float | None = None) -> None:
        try:
            self._container = av.open(path)
        except _AV_ERRORS as exc:
            raise SourceError(f"cannot read video file {path}: {first_line(exc)}; "
                              f"is it a video FFmpeg can decode?") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"no video stream in {path}: pass a video file, image, folder or stream URL")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        length = self._container.duration / 1e6 if self._container.duration else None
        if start > 0 and length is not None and start >= length:
            self._container.close()
            raise ConfigError(f"start {start:g} s is past the end of {path} ({length:.2f} s long); "
                              f"choose an earlier start")
        self._path, self._stride, self._start, self._end = path, vid_stride, start, end
        rate = _rate(self._stream)
        super().__init__(source_id=path, fps=float(rate) / vid_stride if rate else None,
                         num_frames=self._estimate_frames(rate))

    def _estimate_frames(self, rate: Fraction | None) -> int | None:
        """Expected number of frames yielded (for progress), None when unknown."""
        duration = self._container.duration / 1e6 if self._container.duration else None
        if not rate or duration is None:
            return None
        stop = min(duration, self._end) if self._end is not None else duration
        return max(0, int(round((stop - self._start) * float(rate))) + self._stride - 1) // self._stride

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        stream, tb = self._stream, self._stream.time_base
        origin = stream.start_time or 0
        if self._start > 0:
            self._container.seek(origin + int(self._start / tb), stream=stream, backward=True)
        kept = 0
        t: float | None = None
        t0 = time.perf_counter()
        try:
            for frame in self._container.decode(stream):
                t = float((frame.pts - origin) * tb) if frame.pts is not None else None
                if t is not None and t < self._start - 1e-6:
                    continue
                if t is not None and self._end is not None and t >= self._end:
                    return
                kept += 1
                if (kept - 1) % self._stride == 0:
                    image = frame.to_ndarray(format="bgr24")
                    self.decode_seconds = time.perf_counter() - t0
                    yield image, t
                    t0 = time.perf_counter()
        except _AV_ERRORS as exc:
            where = f" at {t:.3f}s" if t is not None else ""
            raise SourceError(f"decoding {self._path} failed{where}: {first_line(exc)}; "
                              f"the file may be damaged") from None
        self._check_complete(t)

    def _check_complete(self, last: float | None) -> None:
        """Add a notice when decoding ended over a second before the video duration the file announces."""
        stream, container = self._stream, self._container
        announced = (float(stream.duration * stream.time_base) if stream.duration else
                     container.duration / 1e6 if container.duration else None)
        if announced is None or self._stop.is_set():
            return
        stop = min(announced, self._end) if self._end is not None else announced
        reached = last if last is not None else 0.0
        if stop - reached > 1.0:
            self.notices.append(f"{self._path} ended at {reached:.2f} s of the {stop:.2f} s its header announces; "
                                "the file may be truncated")

    def close(self) -> None:
        super().close()
        self._container.close()


class StreamSource(Source):
    """A network stream (RTSP over TCP, RTMP, HTTP) that reconnects when it drops or stalls.

    RTSP/RTMP streams, and HTTP streams without a known duration, are live
    (``is_live``): the pipeline keeps only their newest frames and the source
    reconnects as described below. An HTTP stream with a known duration (e.g. an
    MP4 file or a VOD playlist) is read like a file: every
    frame, ending at its end; a read error then raises SourceError instead of
    reconnecting (reconnecting would start it again from the beginning).

    Opening fails fast (one try, ``open_timeout`` seconds) so that a wrong URL is
    reported at once. Once running, a read that stalls for ``read_timeout`` seconds
    or a dropped connection triggers reconnection with exponential backoff
    (0.25 s doubling to 8 s) for up to ``reconnect_timeout`` seconds; ``reconnects``
    counts successes. After every (re)connection frames are discarded until the
    first key frame, so no grey, black or stale frame is ever yielded; the frame
    size may differ after a reconnection. pts: seconds since the first frame,
    continuing monotonically across reconnections. ``source_id`` never contains
    credentials.
    """

    _BACKOFF = (0.25, 8.0)

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0,
                 reconnect_timeout: float = 60.0) -> None:
        super().__init__(source_id=redact_url(url))
        self._url = url
        self._timeouts = (open_timeout, read_timeout)
        self._reconnect_timeout = reconnect_timeout
        self._container = self._connect()
        self.is_live = not url.lower().startswith("http") or self._container.duration is None
        rate = _rate(self._container.streams.video[0])
        self.fps = float(rate) if rate else None

    def _options(self) -> dict[str, str]:
        """FFmpeg options: timeouts; for RTSP/RTMP also no input buffering and low-delay decoding.

        (HTTP may carry ordinary files with B-frames, which low-delay decoding would mangle.)
        """
        read_us = str(int(self._timeouts[1] * 1e6))
        scheme = self._url.split(":", 1)[0].lower()
        options = {} if scheme.startswith("http") else {"fflags": "nobuffer", "flags": "low_delay"}
        if scheme.startswith("rtsp"):
            options.update(rtsp_transport="tcp", timeout=read_us, max_delay="500000")
        else:
            options["rw_timeout"] = read_us
        return options

    def _connect(self) -> av.container.InputContainer:
        """Open the stream once; SourceError (credentials removed) when it is unreachable."""
        try:
            container = av.open(self._url, options=self._options(), timeout=self._timeouts)
        except _AV_ERRORS as exc:
            raise SourceError(
                f"cannot open stream {self.source_id}: {scrub(first_line(exc), self._url)} "
                f"(nothing within {self._timeouts[0]:g}s; check host, port, path and credentials)"
            ) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"stream {self.source_id} has no video track")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _reconnect(self, reason: str) -> bool:
        """Reconnect with backoff; False when stopped, SourceError when the stream stays down."""
        lost = time.monotonic()
        delay, deadline = self._BACKOFF[0], lost + self._reconnect_timeout
        self.on_event(f"stream {self.source_id} lost ({reason}); reconnecting for up to {self._reconnect_timeout:g}s")
        while not self._stop.wait(delay):
            try:
                self._container = self._connect()
            except SourceError as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(
                        f"stream {self.source_id} lost ({reason}) and not back after "
                        f"{self._reconnect_timeout:g}s: {exc}"
                    ) from None
                delay = min(2 * delay, self._BACKOFF[1])
                continue
            self.reconnects += 1
            self.on_event(f"stream {self.source_id} back after {time.monotonic() - lost:.1f}s "
                          f"(reconnection {self.reconnects})")
            return True
        return False

    def _session(self, base: float) -> Iterator[tuple[np.ndarray, float]]:
        """Frames of the current connection, key frame first; pts offset by ``base``."""
        stream = self._container.streams.video[0]
        first: float | None = None
        keyed = False
        for packet in self._container.demux(stream):
            if self._stop.is_set():
                return
            keyed = keyed or packet.is_keyframe
            if not keyed or packet.is_corrupt:
                continue
            t0 = time.perf_counter()
            for frame in packet.decode():
                t = float(frame.pts * stream.time_base) if frame.pts is not None else time.monotonic()
                first = t if first is None else first
                image = frame.to_ndarray(format="bgr24")
                self.decode_seconds = time.perf_counter() - t0
                yield image, base + max(0.0, t - first)
                t0 = time.perf_counter()

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        pts, last_wall = 0.0, time.monotonic()
        base = 0.0
        while not self._stop.is_set():
            try:
                for image, pts in self._session(base):
                    last_wall = time.monotonic()
                    yield image, pts
                reason = "stream ended"
            except _AV_ERRORS as exc:
                reason = scrub(first_line(exc), self._url)
                if not self.is_live:
                    raise SourceError(f"reading {self.source_id} failed: {reason}") from None
            self._container.close()
            if self._stop.is_set() or not self.is_live or not self._reconnect(reason):
                return
            base = pts + (time.monotonic() - last_wall)

    def close(self) -> None:
        super().close()
        self._container.close()
