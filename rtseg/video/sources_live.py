"""PyAV (FFmpeg) live network streams (RTSP, RTMP, HTTP, HLS) that reconnect when they drop or stall.

Frames are decoded as :mod:`rtseg.video.sources_av` decodes files (display matrix, main video stream,
timestamps continuous across discontinuities).
"""
from __future__ import annotations

import errno
import socket
import time
from collections import deque
from typing import Callable, Iterator
from urllib.parse import urlsplit

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from rtseg.errors import SourceError
from rtseg.video.sources import IMAGE_FPS, Source, redact_url, scrub, unresolved_host, url_scheme
from rtseg.video.sources_av import (
    AV_ERRORS,
    check_stream_size,
    displayed,
    error_reason,
    sample_aspect,
    select_video_stream,
    stream_rate,
)
from rtseg.video.timeline import NO_TIMESTAMPS, TS_DISCONT, Timeline


class StreamSource(Source):
    """A network stream (RTSP over TCP, RTMP, HTTP) that reconnects when it drops or stalls.

    RTSP/RTMP streams, and HTTP streams of unknown duration and size (or live HLS), are live
    (``is_live``): the pipeline keeps only their newest frames and the source
    reconnects as described below. An HTTP resource with a known duration or size (e.g. an
    MP4 or MPEG-TS file or a VOD playlist) is read like a file: every
    frame, ending at its end; a read error then raises SourceError instead of
    reconnecting (reconnecting would start it again from the beginning).
    :func:`rtseg.video.sources.open_source` hands such a resource to :class:`FileSource` instead
    (seeking, timestamps where the file has none, damaged packets skipped).

    Opening fails fast (one try, ``open_timeout`` seconds) so that a wrong URL is
    reported at once. Once running, a read that stalls for ``read_timeout`` seconds
    or a dropped connection triggers reconnection with exponential backoff
    (0.25 s doubling to 8 s) until ``reconnect_timeout`` seconds after the last frame
    (a server that answers but sends no new frame, such as a live HLS playlist that
    stopped growing, ends the run then too); ``reconnects`` counts successes. After
    every (re)connection frames are discarded until the first key frame, and frames a
    live HLS playlist replays are skipped, so no grey, black or stale frame is ever
    yielded; the frame size and codec may differ after a reconnection (and the size
    within one connection). The frames the decoder still holds when a connection ends or fails (B-frame
    reordering, frame threads) are yielded before it reconnects or ends. A live HLS event that is over (its playlist
    gained ``#EXT-X-ENDLIST``, also while reconnecting) ends the run like a file, with a notice saying so.
    pts: seconds since the first frame yielded, continuing monotonically across reconnections; a stream whose
    format carries no timestamps (motion JPEG over HTTP, raw H.264: :func:`_untimed`) is timed by the wall clock
    at decoding instead.

    A live stream hands on its newest frames, not a backlog: frames that piled up unread (the connection is
    made when the source opens, seconds before a run reads it; a stopped process; a network stall, after which
    the data comes in a burst) are skipped (:class:`_Backlog`) but for live HLS, which is paced instead (see
    :meth:`_session`). A stream without timestamps (:func:`_untimed`) is timed by arrival, so only the backlog of
    its start (data read at once at the first frames) can be told from current frames: one that piles up later
    is handed on. ``source_id`` never contains credentials.
    """

    _BACKOFF = (0.25, 8.0)
    #: Reloads of a live HLS playlist without a new segment before FFmpeg ends it: one after a target duration,
    #: then every half target duration (FFmpeg's default, 1000, waits for ever).
    _HLS_HOLD = 3
    #: Microseconds FFmpeg's probe of an RTMP stream may read (its default 5 s is spent in full on a video-only
    #: stream: FFmpeg's RTMP client announces audio too); the video's parameters come with its first packets.
    _RTMP_PROBE_US = 1_000_000
    #: Seconds an HLS frame may fall behind the clock its timestamps set before that clock restarts.
    _LATE = 1.0
    #: How many frames of a live HLS stream are remembered to skip a replay after reconnecting
    #: (a playlist's last 3 segments of up to ~20 s at 60 FPS).
    _SHOWN = 4096
    #: Seconds (and at least two frame periods) a frame may come late before it begins a backlog (:class:`_Backlog`).
    _STALE = 0.5
    #: Packets whose read times are kept for the frames the decoder has yet to give (B-frame reordering, threads).
    _ARRIVALS = 64

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0,
                 reconnect_timeout: float = 60.0, on_event: Callable[[str], None] | None = None) -> None:
        super().__init__(source_id=redact_url(url), on_event=on_event)
        self._url = url
        self._timeouts = (open_timeout, read_timeout)
        self._reconnect_timeout = reconnect_timeout
        self._shown: deque[tuple[int | None, int]] = deque(maxlen=self._SHOWN)  # HLS frames yielded last:
        # (pts in stream ticks, hash of every 8th pixel)
        self._reformatter = VideoReformatter()  # decoded frames → BGR (a new size after a reconnection is fine)
        self._container = self._connect()
        self.is_live = not url.lower().startswith("http") or not self._finite()
        rate = stream_rate(self._stream)
        self.fps = float(rate) if rate else None

    def _finite(self) -> bool:
        """Whether the HTTP resource is a file (known duration, or a known size that is not an HLS playlist's).

        A file without a duration (MPEG-TS, raw H.264) must not count as live: its end would trigger a
        reconnection that replays it from the start, forever.
        """
        container = self._container
        return container.duration is not None or (container.size > 0 and container.format.name != "hls")

    def _options(self) -> dict[str, str]:
        """FFmpeg options: timeouts; for RTSP/RTMP also no input buffering and low-delay decoding.

        (HTTP may carry ordinary files with B-frames, which low-delay decoding would mangle.) The protocol's
        I/O timeout (``read_timeout``) ends any read that waits that long for data, opening included.
        A live HLS playlist may rightly wait a segment's duration for the next segment: it counts as stalled
        once :attr:`_HLS_HOLD` reloads brought nothing new.
        """
        read_us = str(int(self._timeouts[1] * 1e6))
        scheme = self._url.split(":", 1)[0].lower()
        options = {} if scheme.startswith("http") else {"fflags": "nobuffer", "flags": "low_delay"}
        if scheme.startswith("rtsp"):
            options.update(rtsp_transport="tcp", timeout=read_us, max_delay="500000")
        else:
            options["rw_timeout"] = read_us
        if scheme.startswith("http"):  # a live HLS playlist that gains no segment in ~2 target durations has ended
            options["m3u8_hold_counters"] = str(self._HLS_HOLD)
        if scheme.startswith("rtmp"):
            options["analyzeduration"] = str(self._RTMP_PROBE_US)
        return options

    def _connect(self) -> av.container.InputContainer:
        """Open the stream once; SourceError (one line, credentials removed) when it is unreachable, or its frames
        are over the size :func:`~rtseg.video.sources_av.check_frame_size` allows."""
        started = time.monotonic()
        try:
            container = av.open(self._url, options=self._options(), timeout=self._av_timeouts())
        except AV_ERRORS as exc:
            failure = self._open_failure(exc, time.monotonic() - started)
            raise SourceError(f"cannot open stream {self.source_id}: {failure}") from None
        stream = select_video_stream(container)
        if stream is None:
            audio = " (only audio)" if container.streams.audio else ""
            container.close()
            raise SourceError(f"stream {self.source_id} has no video track{audio}; pass a URL that carries video")
        check_stream_size(container, stream, self.source_id)
        stream.thread_type = "AUTO"
        self._stream = stream
        self._connected = time.monotonic()  # (what the opening read is current: what comes later may pile up)
        return container

    def _av_timeouts(self) -> tuple[float, float | None]:
        """PyAV's (open, read) timeouts. Over HTTP none for reading: HTTP's own I/O timeout (``_options``) ends a
        stalled read, and a live HLS playlist waits a whole segment (often 6 s or more) for its next one inside
        one read, which PyAV's timeout took for a stall (the stream "ended" at every segment)."""
        return (self._timeouts[0], None) if self._url.lower().startswith("http") else self._timeouts

    def _open_failure(self, exc: BaseException, took: float) -> str:
        """Why opening failed (after ``took`` seconds) and what to check, as one clause (credentials removed)."""
        reason = scrub(error_reason(exc), self._url)
        host = urlsplit(self._url).netloc.rpartition("@")[2]
        # FFmpeg's RTSP client reports its read timeout (no answer to its first request) as invalid data
        unanswered = self._url.lower().startswith("rtsp") and took >= self._timeouts[1]
        if isinstance(exc, av.error.InvalidDataError) and not unanswered:
            # (also what it says of a server that hangs up at once: asked after the failure, on a connection of ours)
            if url_scheme(self._url) == "rtsp" and _hangs_up(self._url, self._timeouts[1]):
                return (f"the server at {host} closed the connection without answering; check the URL, and that it "
                        "is an RTSP server")
            return f"{reason}; what the URL serves is not a video FFmpeg can decode (check the path)"
        if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
            return f"the server refused access ({reason}); check the user name and password in the URL"
        if isinstance(exc, av.error.HTTPNotFoundError):
            return f"the server has no such stream ({reason}); check the path"
        if isinstance(exc, (av.error.HTTPError, av.error.HTTPClientError)):
            return f"the server answered with an error ({reason}); check the URL, or the server"
        if isinstance(exc, ConnectionRefusedError):
            return f"nothing listens at {host} ({reason}); check host and port, and that the server runs"
        if isinstance(exc, (TimeoutError, av.error.ExitError, av.error.InvalidDataError)):  # the protocol's read
            # timeout (RTSP's: invalid data) / PyAV's open timeout
            waited = self._timeouts[0] if isinstance(exc, av.error.ExitError) else self._timeouts[1]
            return f"no answer within {waited:g}s; check host, port and path, and that the server sends a stream"
        if getattr(exc, "errno", None) == errno.EIO:  # also what FFmpeg says of a host name that does not resolve
            unknown = unresolved_host(self._url)
            if unknown is not None:
                return f"{unknown}; check the name in the URL"
            if self._url.lower().startswith("http"):
                return (f"{reason} (the server closed the connection, or redirected more than FFmpeg follows); "
                        "check the URL")
        return f"{reason}; check host, port, path and credentials"

    def _reopen(self, reason: str, since: float, delay: float) -> float | None:
        """Open a new connection, first after ``delay`` s, then with back-off (doubling to 8 s); returns the next
        back-off delay, None when stopped. since: monotonic time of the last frame yielded; SourceError when no
        connection is made by ``since + reconnect_timeout``."""
        while not self._stop.wait(delay):
            delay = min(2 * delay, self._BACKOFF[1])
            try:
                self._container = self._connect()
            except SourceError as exc:
                if time.monotonic() >= since + self._reconnect_timeout:
                    raise SourceError(
                        f"stream {self.source_id} lost ({reason}) and not back after "
                        f"{self._reconnect_timeout:g}s: {exc}"
                    ) from None
                continue
            return delay
        return None

    def _packets(self, arrivals: dict[int | None, tuple[float, float]]) -> Iterator[av.Packet | None]:
        """The current connection's packets to decode: from its first key frame, corrupt ones left out; at its end
        the demuxer's empty packets that drain the decoder. When the connection fails (a stall, a drop), None
        stands in for those (decoding it drains the decoder: the frames it holds back for B-frame reordering or in
        its threads) before the failure is raised. ``arrivals`` maps the pts (stream ticks) of the packets handed
        out to ``(read, waited)``: the monotonic time (s) their read returned and how long it took (s); the
        oldest are forgotten past :attr:`_ARRIVALS`."""
        keyed = False
        demuxed = self._container.demux(self._stream)
        try:
            while True:
                asked = time.monotonic()
                packet = next(demuxed, None)
                if packet is None:
                    return
                keyed = keyed or packet.is_keyframe
                if keyed and not packet.is_corrupt:
                    if len(arrivals) >= self._ARRIVALS:
                        del arrivals[next(iter(arrivals))]
                    read = time.monotonic()
                    arrivals[packet.pts] = (read, read - asked)
                    yield packet
        except AV_ERRORS:
            if keyed:
                yield None
            raise

    def _session(self, base: float) -> Iterator[tuple[np.ndarray, float, float]]:
        """``(image, pts, wall)`` of the current connection's frames, key frame first, up to the last one the decoder
        held when the connection ended or failed (:meth:`_packets`). pts: seconds, offset by ``base`` and continuous
        across timestamp discontinuities (:class:`rtseg.video.timeline.Timeline`); a format without timestamps
        (:func:`_untimed`) is timed as a frame without one. wall: the monotonic time (s) the frame stands
        for: when it was decoded; for a frame drained after a failure (decoded only then, after the stall), the
        previous frame's plus the time between their pts (at most now). Frames that piled up unread are skipped
        (:class:`_Backlog`, by when their packets were read and how long those reads waited).

        A live HLS playlist that stopped growing ends the connection; reconnecting to it starts again a few
        segments before its end, at frames already yielded: those (same timestamp and same picture as a frame
        yielded before, up to the first new one) are skipped, so that no stale frame is ever yielded twice. (The
        picture counts too: an encoder that restarted stamps its new frames with the old times.)

        HLS delivers whole segments at once (the first three at connection): its frames leave at the pace of
        their timestamps, as a player shows them, so that the pipeline's newest-frame policy drops evenly
        (else it kept a few frames at the start of each segment and nothing for the rest of it). A frame more
        than :attr:`_LATE` s behind that clock (the network was slow) restarts it.
        """
        stream = self._stream
        first: float | None = None
        timeline = Timeline(jumps_ahead=bool(self._container.format.flags & TS_DISCONT))
        period = 1.0 / self.fps if self.fps else 1.0 / IMAGE_FPS
        hls = self._container.format.name == "hls"
        untimed = _untimed(self._container.format)
        replayed = set(self._shown) if hls else set()
        backlog = _Backlog(self._connected, self._STALE, period) if self.is_live and not hls else None
        arrivals: dict[int | None, tuple[float, float]] = {}
        read = (time.monotonic(), 0.0)  # (when, waited) of the last packet read: a frame's without a known packet
        clock: float | None = None  # HLS: wall time (monotonic) at which the session's first frame was due
        prev: tuple[float, float] | None = None  # the last frame's time since the first and its wall (as yielded)
        for packet in self._packets(arrivals):
            if self._stop.is_set():
                return
            t0 = time.perf_counter()
            read = arrivals.get(packet.pts, read) if packet is not None else read
            for frame in stream.decode(packet):
                image = None
                if hls:  # square pixels, as a file's; SourceError for a frame over the size limit
                    image = displayed(frame, self._reformatter, sample_aspect(stream), self.source_id)
                    key = (frame.pts, hash(image[::8, ::8].tobytes()))
                    if key in replayed:
                        continue
                    replayed = set()
                    self._shown.append(key)
                now = time.monotonic()
                drained = packet is None and prev is not None  # held by the decoder until the connection failed
                if frame.pts is None or untimed:  # the previous time + the wall time between (one period for a
                    # drained frame: its wall time since includes the stall)
                    since = 0.0 if prev is None else prev[0] + (period if drained else now - prev[1])
                else:
                    t = float(frame.pts * stream.time_base)
                    first = t if first is None else first
                    since = max(0.0, timeline.place(t - first, period))
                prev = (since, min(now, prev[1] + since - prev[0]) if drained else now)
                if backlog is not None and backlog.stale(*arrivals.get(frame.pts, read), prev[1], since):
                    continue
                if image is None:
                    image = displayed(frame, self._reformatter, sample_aspect(stream), self.source_id)
                self.decode_seconds = time.perf_counter() - t0
                if hls:
                    clock = now - since if clock is None or now - (clock + since) > self._LATE else clock
                    if self._stop.wait(clock + since - now):
                        return
                yield image, base + since, prev[1]
                t0 = time.perf_counter()

    def _lost(self, exc: BaseException) -> str:
        """Why a running connection failed, in a few words (credentials removed)."""
        if isinstance(exc, (TimeoutError, av.error.ExitError)):  # PyAV's read timeout / the protocol's
            return f"no data for {self._timeouts[1]:g}s"
        return scrub(error_reason(exc), self._url)

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """Frames of every connection in turn. An outage is announced once when it begins ("lost") and once when
        a NEW frame arrives again ("back", counted in ``reconnects``): a connection that opens but brings nothing
        new (a live HLS playlist that stopped growing opens fine) is part of the outage, retried with growing
        back-off, and the outage ends the run ``reconnect_timeout`` s after the last frame."""
        pts, last_wall, base = 0.0, time.monotonic(), 0.0
        zero: float | None = None  # the pts of the first frame yielded (a backlog skipped before it), yielded as 0
        lost = False  # in an outage (announced)
        delay: float | None = self._BACKOFF[0]
        while not self._stop.is_set():
            try:
                for image, pts, wall in self._session(base):
                    if lost:
                        self.reconnects += 1
                        self.on_event(f"stream {self.source_id} back after {time.monotonic() - last_wall:.1f}s "
                                      f"(reconnection {self.reconnects})")
                        lost, delay = False, self._BACKOFF[0]
                    last_wall = wall
                    zero = pts if zero is None else zero
                    yield image, pts - zero
                if self._container.format.name != "hls":
                    reason = "stream ended"
                elif self._hls_complete():  # a live event that is over: its end, like a file's, not an outage
                    self.notices.append(f"the live stream {self.source_id} ended: its server marked it over "
                                        "(#EXT-X-ENDLIST in its playlist)")
                    return
                else:
                    reason = "the live playlist stopped growing"
            except AV_ERRORS as exc:
                reason = self._lost(exc)
                if not self.is_live:
                    raise SourceError(f"reading {self.source_id} failed: {reason}") from None
            self._container.close()
            if self._stop.is_set() or not self.is_live:
                return
            if not lost:
                self.on_event(f"stream {self.source_id} lost ({reason}); "
                              f"reconnecting for up to {self._reconnect_timeout:g}s")
                lost = True
            elif time.monotonic() - last_wall >= self._reconnect_timeout:
                raise SourceError(f"stream {self.source_id} lost ({reason}) and not back after "
                                  f"{self._reconnect_timeout:g}s: the server answers but sends no new frame")
            delay = self._reopen(reason, last_wall, delay)
            if delay is None:
                return
            self._seek_to_shown()
            base = pts + (time.monotonic() - last_wall)

    def _seek_to_shown(self) -> None:
        """Start a reconnection to a live HLS playlist that has ended meanwhile (``#EXT-X-ENDLIST``) at the segment
        of the last frame yielded (its pts in stream ticks), so that at most that segment is replayed.

        FFmpeg starts a finished playlist at its first segment, not a few before its end; a replay is recognised
        only among the last :attr:`_SHOWN` frames yielded (the skipping ends at the first frame not among them), so
        an event longer than those would be fetched and yielded again. FFmpeg places the time by adding up the
        segments' durations (#EXTINF); a time it cannot place (a clock restarted within the event) is left to the
        skipping, from the first segment.
        """
        last = self._shown[-1][0] if self._shown else None
        if last is None or self._container.format.name != "hls" or not self._finite():
            return
        try:
            self._container.seek(last, stream=self._stream)  # backward: to the start of its segment
        except AV_ERRORS:
            pass  # unplaced: replayed from the first segment, as said above

    def _hls_complete(self) -> bool:
        """Whether the live HLS playlist whose connection just ended now ends with ``#EXT-X-ENDLIST`` (the event
        is over): at once when that connection was to the finished playlist (a reconnection after it ended), else
        a new connection to it reports a duration, as any finished playlist does. That connection is kept open
        (``close`` ends it); when the playlist merely stopped growing, it is closed."""
        if self._finite():
            return True
        self._container.close()
        try:
            self._container = self._connect()
        except SourceError:  # the outage path reconnects and reports it
            return False
        return self._finite()

    def close(self) -> None:
        super().close()
        self._container.close()


def _untimed(fmt: av.ContainerFormat) -> bool:
    """Whether streams of the container format ``fmt`` carry no timestamps, its demuxer numbering their frames at a
    rate it assumes (25 FPS, whatever the camera sends): a format flagged so (AVFMT_NOTIMESTAMPS: motion JPEG in
    HTTP's multipart, ``mpjpeg``; raw MJPEG, H.264, HEVC), or one of FFmpeg's image pipes (``image2pipe``,
    ``jpeg_pipe``, ``png_pipe`` …: images sent one after another, as JPEGs over HTTP are detected)."""
    return bool(fmt.flags & NO_TIMESTAMPS) or fmt.name == "image2pipe" or fmt.name.endswith("_pipe")


class _Backlog:
    """Tells the frames of one connection to a live stream that piled up unread from current ones.

    A live stream's frames come at the pace of their timestamps. How ``late`` a frame comes is measured against the
    stream's clock: the earliest any frame came, less its time (the connection's first frame counts as current
    when the connection opened, or when it came if its read had to wait). Frames whose data waited unread (the
    connection is made when the source opens, seconds before a run starts reading it; the process was stopped;
    the network stalled, then the server sent what it held) come late, one after another, faster than that pace.

    A frame more than ``stale`` s and two frame periods late begins a backlog: it is skipped, and so is each next
    frame still over one ``period`` (s) late that was read in under a quarter period (its data was there) or came
    half a period less late than the one before (faster than the stream's pace: frames the decoder held while
    the process was stopped). The first other frame ends the backlog and is kept: caught up; or coming at the
    stream's pace, as late (its clock moved: an encoder that paused, then went on with its times; the clock is set
    anew); or coming after the skipping lasted longer than the lateness it began with (a decoder slower than the
    stream would never catch up).

    Known cost: the first late frame is skipped whether or not its data waited, so a camera whose clock runs slow
    loses a frame each time it falls ``stale`` s behind (every 50 s at 1 %), and a stream paused with its times
    going on loses the first frame after each pause.
    """

    def __init__(self, connected: float, stale: float, period: float) -> None:
        """connected: monotonic time (s) the connection opened; stale, period: seconds (see the class)."""
        self._connected, self._stale, self._period = connected, max(stale, 2 * period), period
        self._clock: float | None = None  # when a frame on time comes, less its time (s, monotonic)
        self._skipping: tuple[float, float, float] | None = None  # a backlog: when its first frame came, how late,
        # and how late the last frame skipped was (s)

    def stale(self, read: float, waited: float, came: float, t: float) -> bool:
        """Whether the frame at ``t`` s of stream time is to be skipped; ``came``: monotonic time (s) the decoder
        gave it; ``read``, ``waited``: when the read of its packet returned (monotonic s) and how long it took (s).
        Frames in order of their times."""
        offset, quick = came - t, waited < self._period / 4
        if self._clock is None:
            self._clock = offset - (read - self._connected if quick else 0.0)
        late = offset - self._clock
        if self._skipping is None:
            if late <= self._stale:
                self._clock = min(self._clock, offset)
                return False
            self._skipping = (came, late, late)
            return True
        began, lateness, last = self._skipping
        if late > self._period and (quick or late < last - self._period / 2) and came - began <= lateness:
            self._skipping = (began, lateness, late)
            return True
        self._clock = min(self._clock, offset) if late <= self._stale else offset
        self._skipping = None
        return False


def _hangs_up(url: str, wait: float) -> bool:
    """Whether the server of the ``rtsp://`` URL ``url`` (port 554 unless it names one) closes a connection without a
    byte of answer to an RTSP OPTIONS request, within ``wait`` s. FFmpeg's RTSP client reports such a server as
    invalid data, as it does one that answers with something that is no RTSP: ask this after FFmpeg failed so (it
    opens one more connection). False where that cannot be told (no connection, an answer, no end within ``wait``)."""
    try:
        parts = urlsplit(url)
        address = (parts.hostname, parts.port or 554)
    except ValueError:
        return False
    if address[0] is None:  # (the system's resolver would take it for this machine)
        return False
    try:
        with socket.create_connection(address, timeout=wait) as conn:
            conn.sendall(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            return conn.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False
