"""PyAV (FFmpeg) video files, and the decoding helpers :mod:`rtseg.video.sources_live` shares.

Frames come out as players show them: with square pixels (an anamorphic video, whose pixels are wider or
narrower than tall, resampled to its display width), in the orientation of the stream's display matrix (phone
videos carry a rotation there; motion-JPEG frames their EXIF orientation), from the container's main video stream
(not a cover picture), with timestamps even where the file stores none. A video whose frames are larger than
:data:`rtseg.imageio.MAX_IMAGE_PIXELS` is refused, as such an image is.
"""
from __future__ import annotations

import math
import os
import sys
import time
from fractions import Fraction
from itertools import chain
from typing import Callable, Generator, Iterator

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from av.stream import Discard
from av.video.reformatter import VideoReformatter

from rtseg.errors import PERMISSION_DENIED, ConfigError, SourceError, first_line
from rtseg.imageio import MAX_IMAGE_PIXELS
from rtseg.video.pipe_reader import PipeReader, Signalled
from rtseg.video.sources import IMAGE_FPS, STDIN, Source, empty_stdin, redact_url, scrub
from rtseg.video.timeline import TS_DISCONT, Timeline

AV_ERRORS = (av.FFmpegError, OSError, EOFError)
#: A local MPEG-TS / -PS file up to this size is read at open (packet times only, ~1-5 ms per MB) to ``--end`` or
#: its end, for its length and frame count; a larger one only up to ``--start``: its progress total is then the
#: header's estimate (one part's in a joined file), or unknown where the timestamps jumped before the start.
SCAN_WHOLE_BYTES = 1 << 30
#: A scan that has taken this long (s) says so, once, on stderr: up to a 1-GB file's ~1-5 s went by without a word
#: before the first frame. A time, not a file size: the scan's speed per MB varies fivefold (and more on a cold or
#: network disk), and a scan to ``--start`` reads an unknown part of the file.
SCAN_NOTICE_S = 1.0
#: Demuxers whose duration is the end time on the file's clock, not FFmpeg's usual length from the container's
#: first timestamp (as FFmpeg writes and reads these formats): a file whose timestamps start at 11.4 s
#: (``ffmpeg -copyts``) is 5 s long, not 16.4 s.
DURATION_IS_END = frozenset({"matroska", "webm", "nut", "asf"})
#: Pixel aspect ratios (width over height) beyond this, either way, are taken for damaged metadata and ignored
#: (H.264 can state up to 65535:1, which would make frames 65535 times wider); real ones lie within 1:2 and 4:1.
SAR_LIMIT = 8


def _unlisted_side_data(cls: type[SideDataType], value: object) -> SideDataType | None:
    """A stand-in member of PyAV's side-data :class:`~av.sidedata.sidedata.Type` for a type its table lacks (PyAV 18
    stops at 27; its FFmpeg 8.1 attaches 31, EXIF, to MJPEG frames): a frame that carried one made every
    :class:`SideDataContainer` of it raise ValueError ("31 is not a valid Type"), so that such a video failed to
    decode. Made once per value (named ``UNLISTED_<value>``); None for a value that is no integer."""
    if not isinstance(value, int):
        return None
    member = object.__new__(cls)
    member._name_, member._value_ = f"UNLISTED_{value}", value
    return cls._value2member_map_.setdefault(value, member)


SideDataType._missing_ = classmethod(_unlisted_side_data)  # (Enum's hook for a value without a member)


def stream_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """Frames per second of ``stream`` as FFmpeg reports or guesses it; None when unknown."""
    return stream.average_rate or stream.guessed_rate


def frame_period(stream: av.video.stream.VideoStream) -> float:
    """Seconds between frames of ``stream`` at its rate (:func:`stream_rate`; unknown: :data:`IMAGE_FPS`'s): where a
    frame without a timestamp or duration lands, and the step across a timestamp discontinuity."""
    rate = stream_rate(stream)
    return 1.0 / float(rate) if rate else 1.0 / IMAGE_FPS


def error_reason(exc: BaseException) -> str:
    """FFmpeg's message without PyAV's ``[Errno N]`` prefix and file-name suffix."""
    return getattr(exc, "strerror", None) or first_line(exc)


def select_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The video stream to decode, every other stream set to be discarded by the demuxer; None when there is none.

    Never a cover picture. Of an HLS master playlist's variants the largest picture (then the highest variant
    bit rate), as a player on a good connection shows it — FFmpeg's own pick (``av_find_best_stream``) was the
    first, smallest one; the discarded variants' segments are then not fetched at all (they were, every one).
    Otherwise the stream FFmpeg would play.
    """
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        return None
    if len(moving) > 1 and container.format.name == "hls":
        def size_then_rate(s: av.video.stream.VideoStream) -> tuple[int, int]:
            rate = str(s.metadata.get("variant_bitrate", ""))
            return s.codec_context.width * s.codec_context.height, int(rate) if rate.isdigit() else 0

        chosen = max(moving, key=size_then_rate)
    else:
        best = container.streams.best("video")
        chosen = best if best in moving else moving[0]
    for other in container.streams:
        if other is not chosen:
            other.discard = Discard.all
    return chosen


def sample_aspect(stream: av.video.stream.VideoStream) -> Fraction | None:
    """Width over height of the pixels of ``stream``'s frames as players take it (FFmpeg's
    ``av_guess_sample_aspect_ratio``: the container's, else the decoder's from the bitstream); None for square
    pixels, none stated or one beyond :data:`SAR_LIMIT`."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar:  # (None or 0: unset)
            return None if sar == 1 or not 1 / SAR_LIMIT <= sar <= SAR_LIMIT else sar
    return None


def check_frame_size(width: int, height: int, sar: Fraction | None, name: str) -> None:
    """SourceError (one line: the size, the limit, how to scale the video down) when frames of ``width`` x ``height``
    pixels as decoded, ``sar`` (:func:`sample_aspect`) times as wide as tall, are over
    :data:`rtseg.imageio.MAX_IMAGE_PIXELS` once their pixels are square (:func:`displayed`), the limit on images:
    a 68-kB FFV1 file of 12000 x 12000 frames took 4.1 GB for two of them. ``name``: the video's, in the message.
    A size of 0 (not known yet) passes."""
    shown = max(width, round(width * sar)) if sar is not None else width  # (narrower: still decoded that wide)
    if shown * height <= MAX_IMAGE_PIXELS:
        return
    # the share of each side that fits, floored (the suggested scale rounds the height to even, maybe up)
    side = math.floor(100 * math.sqrt(MAX_IMAGE_PIXELS / (shown * height))) / 100
    raise SourceError(f"video {name} has frames of {shown} x {height} pixels, over the {MAX_IMAGE_PIXELS:,} rtseg "
                      f"reads; scale it down first, to {side:.0%} a side or less (e.g. ffmpeg -i INPUT -vf "
                      f"'scale=trunc(iw*{side:g}/2)*2:-2' OUTPUT)")


def check_stream_size(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                      name: str) -> None:
    """:func:`check_frame_size` of the frames ``stream`` announces (as opened: the first ones'), ``container``
    closed when they are refused."""
    try:
        check_frame_size(stream.codec_context.width, stream.codec_context.height, sample_aspect(stream), name)
    except SourceError:
        container.close()
        raise


def displayed(frame: av.VideoFrame, reformatter: VideoReformatter, sar: Fraction | None, name: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR image of ``frame`` as players show it, converted by ``reformatter`` (one per source:
    ``frame.to_ndarray`` made a new swscale context, with its threads, for every frame). A frame over the size
    :func:`check_frame_size` allows (the video ``name`` grew mid-stream) raises SourceError instead.

    Pixels ``sar`` times as wide as tall (:func:`sample_aspect`; None: square) are resampled to square ones,
    round(width × sar) wide, the height kept (DVD PAL 720x576 at 16:15 → 768x576), in the conversion's swscale
    pass (bilinear; 2-core VM, load 1-4: 720x576 → 768x576 1.2-1.5 ms, converting then ``cv2.resize`` 2.2-2.8 ms;
    1440x1080 → 1920x1080 alike). Then the display matrix (rotation of phone videos, mirroring) is applied the way
    FFmpeg's autorotate does, rounded to quarter turns; a frame without one comes out as decoded. (FFmpeg 8.1 gives
    a motion-JPEG frame's EXIF orientation as one: applied, as ffmpeg does and as rtseg does to a still JPEG.)
    """
    check_frame_size(frame.width, frame.height, sar, name)
    width = None if sar is None else max(1, round(frame.width * sar))
    image = reformatter.reformat(frame, format="bgr24", width=width).to_ndarray()
    # Not frame.side_data: PyAV caches that container on the frame, a reference cycle that kept every decoded
    # frame, its buffers and its swscale threads alive until a garbage-collection pass (hundreds of threads).
    side = SideDataContainer(frame).get(SideDataType.DISPLAYMATRIX)
    if side is None:
        return image
    # (x', y') = (a x + c y, b x + d y): FFmpeg's row-vector convention, 16.16 fixed point
    a, b, _, c, d = np.frombuffer(bytes(side), dtype=np.int32)[:5].astype(np.float64)
    if abs(a) + abs(d) >= abs(b) + abs(c):  # no quarter turn: at most mirrored
        flips = [axis for axis, v in ((1, a), (0, d)) if v < 0]
    else:  # x' from y and y' from x: transposed, then mirrored
        image = image.transpose(1, 0, 2)
        flips = [axis for axis, v in ((0, b), (1, c)) if v < 0]
    if not flips and image.flags.c_contiguous:
        return image
    return np.ascontiguousarray(np.flip(image, axis=flips) if flips else image)


def _open_file(path: str, timeouts: tuple[float, float] | None = None, pipe: PipeReader | None = None
               ) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a video file (an HTTP file: ``timeouts`` = (open, read) seconds; a pipe or FIFO: through ``pipe``) and
    pick its video stream; SourceError (one line, credentials removed) when that is impossible: also a pipe whose
    writer closed it without writing (FFmpeg called that invalid data)."""
    name = redact_url(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise SourceError(f"video file {name} is empty (0 bytes); pass a complete file")
    try:
        container = av.open(path if pipe is None else pipe, timeout=timeouts)
    except Signalled as exc:
        raise exc.args[0] from None
    except PermissionError:
        raise SourceError(f"cannot read video file {name}: {PERMISSION_DENIED}") from None
    except AV_ERRORS as exc:
        if pipe is not None and pipe.failure is not None:
            raise pipe.failure from None
        if pipe is not None and not pipe.written:
            if path == STDIN:
                raise empty_stdin("nothing was piped in") from None
            raise SourceError(f"cannot read video file {name}: nothing was written to it (its writer closed it "
                              "without writing); write a video to it, or give the file") from None
        raise SourceError(f"cannot read video file {name}: {scrub(error_reason(exc), path)}; it is not a video FFmpeg can "
                          f"decode, or damaged or incomplete (e.g. a recording cut off before its index was written)"
                          ) from None
    stream = select_video_stream(container)
    if stream is None:
        cover = " (only a cover picture)" if container.streams.video else ""
        container.close()
        raise SourceError(f"no video stream in {name}{cover}: pass a video file, image, folder or stream URL")
    check_stream_size(container, stream, name)
    stream.thread_type = "AUTO"
    return container, stream


def video_shifts(path: str) -> Generator[float, None, None]:
    """The shift (s) :class:`FileSource`'s timeline adds to the frames of the local file ``path`` after each
    discontinuity of its video stream's timestamps (the parts of MPEG-TS files joined: ``cat a.ts b.ts``), in order,
    read lazily from the packets' times without decoding (as :meth:`FileSource._scan` places them). For a file read
    from its beginning; the file is closed when the iterator is."""
    container, stream = _open_file(path)
    try:
        timeline, period = Timeline(jumps_ahead=bool(container.format.flags & TS_DISCONT)), frame_period(stream)
        for packet in container.demux(stream):
            if packet.dts is not None:
                jumps = timeline.jumps
                timeline.place(float((packet.dts - (stream.start_time or 0)) * stream.time_base), period)
                if timeline.jumps > jumps:
                    yield timeline.offset
    finally:
        container.close()


class FileSource(Source):
    """Frames of a video file, ``start`` to ``end`` seconds, every ``vid_stride``-th one.

    pts: seconds from the start of the file's video stream; a frame stored without one (raw
    H.264, some AVIs) follows the previous frame by its duration (or 1 / fps). index: the frame's number in the
    file (:meth:`_numbered`), whatever ``start`` and ``vid_stride`` pass over. duration: until the end of the last
    frame it stands for (itself and the ``vid_stride`` - 1 after it, as far as ``end``), from the decoder's frame
    durations (or 1 / fps): a frame is yielded once those after it that ``vid_stride`` passes over are decoded.
    ``fps`` is the rate after the stride. Never drops: the consumer sets the pace. ``start`` is reached by a seek when
    the container allows one that lands at or before it (else by decoding from the beginning). A local file of a
    format whose timestamps may jump (MPEG-TS and -PS, ...) has its packets' times read at open, without decoding
    (:meth:`_scan`: its length, the number of frames and the key frame to start from; over
    :data:`SCAN_WHOLE_BYTES`, only up to the start).
    A packet the decoder rejects (damaged data) is skipped as FFmpeg skips it, with a warning
    (``on_event``) and a notice; a file no frame of which decodes raises SourceError.
    A pipe or FIFO is read through a :class:`PipeReader`: a stop request ends a wait for its data, and a writer
    that stalls (or a FIFO no writer opened yet) is warned of after ``pipe_timeouts[0]`` s (``on_event``; also
    while the file is opened, when given to the constructor) and ends the source (SourceError) after
    ``pipe_timeouts[1]`` s (at least the first) without data, as a live stream that stays lost does.
    """

    def __init__(self, path: str, *, vid_stride: int = 1, start: float = 0.0, end: float | None = None,
                 timeouts: tuple[float, float] | None = None, pipe_timeouts: tuple[float, float] = (5.0, 60.0),
                 on_event: Callable[[str], None] | None = None) -> None:
        name = redact_url(path)  # in messages: an HTTP file's URL without its credentials
        super().__init__(source_id=name, on_event=on_event)
        self._seekable = timeouts is not None or os.path.isfile(path)  # (not a pipe: it can be sought or reopened)
        self._pipe = None if self._seekable else PipeReader(
            path, stop=self._stop, warn_s=pipe_timeouts[0], limit_s=pipe_timeouts[1],
            on_event=lambda line: self.on_event(line))
        try:
            self._container, self._stream = _open_file(path, timeouts, self._pipe)
        except BaseException:
            if self._pipe is not None:
                self._pipe.close()
            raise
        self._open, self._name = (path, timeouts), name
        rate = stream_rate(self._stream)
        self._period = frame_period(self._stream)
        self._stride, self._start, self._end = vid_stride, start, end
        # a local file whose timestamps may jump is scanned (then start is never sought by timestamp); _scan sets
        # _key: (byte position, timeline offset in s) of the key frame to start from
        self._key: tuple[int, float] | None = None
        jumpy = timeouts is None and self._seekable and bool(self._container.format.flags & TS_DISCONT)
        whole = jumpy and os.path.getsize(path) <= SCAN_WHOLE_BYTES
        self._scanned = whole or (jumpy and start > 0)  # (a large file without a start: nothing to scan for)
        if self._scanned:
            length, frames = self._scan(rate, until=None if whole else start)
        else:
            length, frames = self._announced_length(), self._estimate_frames(rate)
            if start > 0 and length is not None and start >= length and timeouts is None and self._seekable:
                length = max(length, self._packets_end(near=length) or 0.0)  # a header that says too little
        if start > 0 and length is not None and start >= length:
            self.close()
            raise ConfigError(f"start {start:g} s is past the end of {name} ({length:.2f} s long); "
                              f"choose an earlier start")
        self._damage: list[float | None] = []  # media time (s) of every damaged packet skipped
        self._reformatter = VideoReformatter()  # decoded frames → BGR, one swscale context for the whole file
        self._timeline = Timeline(jumps_ahead=False)  # of the frames read so far (see _timed)
        self._decoded_frames = 0
        self.fps, self.num_frames = float(rate) / vid_stride if rate else None, frames

    def _announced_length(self) -> float | None:
        """Seconds from the video stream's first timestamp to the end its header announces (the stream's duration,
        else the container's), None when it announces none. FFmpeg's durations are lengths from the stream's or
        the container's first timestamp, except in the formats of :data:`DURATION_IS_END`: end times, on a clock
        that need not start at 0."""
        stream, container = self._stream, self._container
        is_end = not DURATION_IS_END.isdisjoint(container.format.name.split(","))
        begin = float((stream.start_time or 0) * stream.time_base)
        if stream.duration:
            end = float(stream.duration * stream.time_base) + (0.0 if is_end else begin)
        elif container.duration:
            end = (container.duration + (0 if is_end else container.start_time or 0)) / 1e6
        else:
            return None
        return end - begin if end > begin else None

    def _packets_end(self, *, near: float) -> float | None:
        """Seconds from the video stream's first timestamp to the end of its last packet (its time + duration),
        read from the key frame at or before ``near`` s to the end of the file; None when that finds no timed
        packet or the file cannot be read there. A muxer can announce less than the file holds (an MP4 of variable
        frame rate with B-frames: FFmpeg's muxer wrote 1.8 s for frames up to 2.5 s). Leaves the demuxer where it
        stopped (a start > 0, the only caller's case, is sought afterwards)."""
        end = None
        try:
            self._seek_key_before(max(0.0, near - 1.0))
            for packet in self._container.demux(self._stream):
                t = self._time(packet.pts)
                if t is not None:
                    duration = float(packet.duration * self._stream.time_base) if packet.duration else self._period
                    end = t + duration if end is None else max(end, t + duration)
        except AV_ERRORS:
            return end
        return end

    def _seek_key_before(self, t: float) -> None:
        """Seek the demuxer to the key frame at or before ``t`` s from the video stream's first timestamp (as
        precisely as the container seeks); FFmpeg's error when it cannot."""
        stream = self._stream
        self._container.seek((stream.start_time or 0) + int(t / stream.time_base), stream=stream, backward=True)

    def _estimate_frames(self, rate: Fraction | None) -> int | None:
        """Expected number of frames yielded (for progress) from the rate and the duration the header announces
        (:meth:`_announced_length`), None when either is unknown."""
        duration = self._announced_length()
        if not rate or duration is None:
            return None
        stop = min(duration, self._end) if self._end is not None else duration
        return self._strided(max(0, int(round((stop - self._start) * float(rate)))))

    def _scan(self, rate: Fraction | None, until: float | None) -> tuple[float | None, int | None]:
        """Read the packets' times without decoding, to ``end`` or the end of the file, in a local file whose
        timestamps may jump (MPEG-TS: ``cat a.ts b.ts``, where a seek by timestamp lands in whichever part has that
        time, and where FFmpeg's duration spans the first timestamp to the last: one part's, or the parts' clocks'
        distance). Times are placed on the continuous timeline of :meth:`_timed`. Sets ``_key`` to the byte
        position of the last key frame at or before a ``start`` > 0 and the timeline's shift there (the start is
        reached by a byte seek, then). Leaves the demuxer where it stopped.

        Returns the file's continuous length in s (None when the scan stopped at ``end``) and the number of frames
        yielded from ``start`` to ``end``. Where the demuxer flagged more damaged packets than one per jump (each
        join costs one), the decoder may put frames later than their packets' times (frames out of order after
        lost data make jumps of their own): the length is then None, and a ``start`` past the packets' times is
        reached by decoding from the beginning (frames None: none counted). Both None when the file is unreadable
        further on (decoding from the beginning reports it in one line). ``until`` (s, the start of a file over
        :data:`SCAN_WHOLE_BYTES`): the scan stops past it, the length is None and the count
        :meth:`_estimate_frames` (``rate``), or None when the timestamps jumped before it."""
        timeline, last, kept, damaged = Timeline(jumps_ahead=True), -self._period, 0, 0
        try:
            for packet in self._said_when_slow(self._container.demux(self._stream)):
                damaged += packet.is_corrupt
                own = self._time(packet.dts)  # decode order: times rise but at a jump (pts go back at B-frames)
                if own is None:
                    continue
                placed = timeline.place(own, self._period)
                if self._end is not None and placed >= self._end:  # pts >= dts: every frame before end seen
                    return None, self._strided(kept)
                if until is not None and placed > until:  # every frame shown at or before `until` seen
                    return None, None if timeline.jumps else self._estimate_frames(rate)
                t = placed + (self._time(packet.pts) - own if packet.pts is not None else 0.0)  # pts - dts: B-frames
                entry = packet.is_keyframe and packet.pos is not None and packet.pos >= 0
                if self._start > 0 and entry and t <= self._start:  # (no start: decoded from the beginning)
                    self._key = (packet.pos, placed - own)
                kept += t >= self._start - 1e-6 and (self._end is None or t < self._end - 1e-6)
                last = max(last, t)
        except AV_ERRORS:
            self._key = None
            return None, None
        length = last + self._period
        if damaged <= timeline.jumps:
            return length, self._strided(kept)
        if self._start >= length:
            self._key = None
        return None, self._strided(kept) if kept else None

    def _said_when_slow(self, packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
        """``packets``; once reading them has taken :data:`SCAN_NOTICE_S`, one line on stderr says what the wait for
        the first frame is."""
        deadline: float | None = time.monotonic() + SCAN_NOTICE_S
        for packet in packets:
            if deadline is not None and time.monotonic() >= deadline:
                size = os.path.getsize(self._open[0])
                print(f"rtseg: reading the packet times of {self._name} ({size / 1e6:,.0f} MB) before decoding it "
                      "(its timestamps may jump: spliced or joined video)", file=sys.stderr, flush=True)
                deadline = None
            yield packet

    def _strided(self, frames: int) -> int:
        """How many of ``frames`` consecutive frames are yielded, every ``vid_stride``-th from the first."""
        return (frames + self._stride - 1) // self._stride

    def _time(self, ticks: int | None) -> float | None:
        """Seconds from the stream's start of a pts in stream ticks (None stays None)."""
        stream = self._stream
        return None if ticks is None else float((ticks - (stream.start_time or 0)) * stream.time_base)

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """Frames from the demuxer's position; a packet the decoder rejects is skipped, as FFmpeg does."""
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                t = self._time(packet.pts)
                if not self._damage:
                    where = f" at {t:.2f} s" if t is not None else ""
                    self.on_event(f"damaged data in {self._name}{where} ({scrub(error_reason(exc), self._open[0])}): skipping it")
                self._damage.append(t)
                continue
            self._decoded_frames += len(frames)
            yield from frames

    def _timed(self, frames: Iterator[av.VideoFrame], offset: float = 0.0) -> Iterator[tuple[av.VideoFrame, float]]:
        """``(frame, t)``: t from the frame's pts, continuous across timestamp discontinuities
        (:class:`rtseg.video.timeline.Timeline`, shifted by ``offset`` s from the start: the jumps before a
        byte seek), else the previous t plus the frame's duration (or 1 / fps)."""
        t: float | None = None
        step = self._period
        self._timeline = Timeline(jumps_ahead=bool(self._container.format.flags & TS_DISCONT), offset=offset)
        for frame in frames:
            own = self._time(frame.pts)
            t = self._timeline.place(own, step) if own is not None else (t + step if t is not None else 0.0)
            step = self._shown(frame)
            yield frame, t

    def _shown(self, frame: av.VideoFrame) -> float:
        """Seconds ``frame`` is shown: its duration as decoded, else 1 / fps (:func:`frame_period`)."""
        return float(frame.duration * frame.time_base) if frame.duration and frame.time_base else self._period

    def _from_start(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """Timed frames from the last key frame at or before ``start``.

        A file :meth:`_scan` read is entered at that key frame's byte position (else decoded from the
        beginning). Others are sought by timestamp; some containers seek imprecisely (MPEG-TS lands past its key
        frames) or not at all (raw H.264): the seek goes 1, 2, 4 ... s further back until the first frame is not
        after ``start``, and ends in a reopen that decodes from the beginning. A pipe (a FIFO) is read on from
        where the demuxer is (it can be neither sought nor reopened; :meth:`_frames` drops what precedes ``start``).
        """
        if not self._seekable:
            return self._timed(self._decoded())
        if self._key is not None:
            pos, offset = self._key
            try:
                self._container.seek(pos, unsupported_byte_offset=True)
                return self._timed(self._decoded(), offset)
            except AV_ERRORS:
                pass
        back = 0.0
        while self._start > 0 and self._start - back > 0 and not self._scanned:
            target = self._start - back
            try:
                self._seek_key_before(target)
            except AV_ERRORS:
                break
            frames = self._timed(self._decoded())
            first = next(frames, None)
            if first is not None and first[0].pts is not None and first[1] <= self._start + 1e-6:
                return chain([first], frames)
            back = 2 * back if back else 1.0
        if self._start > 0 or self._scanned:  # back to the very beginning: a fresh demuxer and decoder
            self._container.close()
            self._container, self._stream = _open_file(*self._open)
        return self._timed(self._decoded())

    def _numbered(self, timed: Iterator[tuple[av.VideoFrame, float]]) -> Iterator[tuple[int, av.VideoFrame, float]]:
        """``(index, frame, t)`` for each of the ``timed`` frames: its number in the file (:attr:`Frame.index
        <rtseg.types.Frame.index>`), counted on from that of the first, which is its time in frame periods (0 when
        decoded from the beginning; after a seek, exact at a constant frame rate)."""
        first: int | None = None
        for n, (frame, t) in enumerate(timed):
            if first is None:
                first = max(0, round(t / self._period))
            yield first + n, frame, t

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        kept = 0
        t: float | None = None
        last: float | None = None  # time of the last frame before start
        held: tuple[np.ndarray, float, int] | None = None  # (image, t, index) of the frame yielded next
        until = 0.0  # where the last frame read ends (s): the frame held is shown until then
        t0 = time.perf_counter()
        try:
            for index, frame, t in self._numbered(self._from_start()):
                if t < self._start - 1e-6:
                    last = t
                    continue
                if self._end is not None and t >= self._end - 1e-6:  # (a byte seek's timeline offset: float noise)
                    if not kept:
                        raise ConfigError(f"no frame of {self._name} from start {self._start:g} s to end {self._end:g} s "
                                          f"(one at {t:.3f} s); widen the range")
                    break
                kept += 1
                if (kept - 1) % self._stride == 0:
                    held = displayed(frame, self._reformatter, sample_aspect(self._stream), self._name), t, index
                until = t + self._shown(frame)
                if kept % self._stride == 0:  # the frames it stands for are read
                    yield self._release(held, until, t0)
                    held, t0 = None, time.perf_counter()
            if held is not None:  # (the file or the range ended within its stride)
                yield self._release(held, until, t0)
        except Signalled as exc:
            raise exc.args[0] from None
        except AV_ERRORS as exc:
            if held is not None:  # (read before the failure, as it would have been without a stride)
                yield self._release(held, until, t0)
            where = f" at {t:.3f}s" if t is not None else ""
            raise SourceError(f"reading {self._name} failed{where}: {self._read_failure(exc, t)}") from None
        if self._pipe is not None and self._pipe.failure is not None:
            raise self._pipe.failure
        self._report_damage()
        if not kept and self._start > 0 and not self._stop.is_set():  # the duration told was longer, or none was
            at = f" (at {last:.3f} s)" if last is not None else ""
            raise ConfigError(f"start {self._start:g} s is past the last frame of {self._name}{at}; "
                              "choose an earlier start")
        if self._timeline.jumps:
            self.notices.append(f"the timestamps of {self._name} jumped {self._timeline.jumps} time(s) (spliced or "
                                "concatenated video): frames were timed on across each jump")
        else:
            self._check_complete(t)

    def _release(self, held: tuple[np.ndarray, float, int], until: float, t0: float) -> tuple[np.ndarray, float]:
        """``(image, t)`` of the frame ``held`` (``(image, t, index)``), its index and its duration, up to ``until``
        s (at most to ``end``), set for :class:`Frame`; ``t0``: :func:`time.perf_counter` when its decoding began."""
        image, t, index = held
        end = min(until, self._end) if self._end is not None else until
        self.decode_seconds, self._index, self._duration = time.perf_counter() - t0, index, end - t if end > t else None
        return image, t

    def _read_failure(self, exc: BaseException, t: float | None) -> str:
        """Why reading failed after the frame at ``t`` s (None: before any) and what to do, as one clause
        (credentials removed)."""
        path, timeouts = self._open
        reason = scrub(error_reason(exc), path)
        if timeouts is None:
            return f"{reason}; the file may be damaged"
        then = f", then go on from there with --start {t:.3f}" if t is not None else ", then run again"
        if isinstance(exc, (av.error.ExitError, TimeoutError)):  # PyAV's read timeout / the protocol's
            return f"the server sent no data for {timeouts[1]:g}s (it or the network stalled); check the server{then}"
        if "mp4" in self._container.format.name.split(","):
            return (f"{reason}; over HTTP, an MP4 whose index is at its end needs a server that supports byte ranges "
                    "(or the file remuxed with ffmpeg -movflags +faststart)")
        return f"{reason} (the connection dropped, or the file is damaged); check the server{then}"

    def _report_damage(self) -> None:
        """Notice of the damaged packets skipped; SourceError when they were all there was."""
        if not self._damage:
            return
        if self._decoded_frames == 0 and not self._stop.is_set():
            raise SourceError(f"no frame of {self._name} could be decoded ({len(self._damage)} damaged packets); "
                              "the file is damaged or its codec unsupported")
        times = [t for t in self._damage if t is not None]
        span = f" between {min(times):.2f} s and {max(times):.2f} s" if times else ""
        self.notices.append(f"skipped {len(self._damage)} damaged packet(s) of {self._name}{span}; "
                            "frames near them may show artefacts")

    def _check_complete(self, last: float | None) -> None:
        """Add a notice when decoding ended over a second before the video duration the file announces
        (:meth:`_announced_length`)."""
        announced = self._announced_length()
        if announced is None or self._stop.is_set():
            return
        stop = min(announced, self._end) if self._end is not None else announced
        reached = last if last is not None else 0.0
        if stop - reached > 1.0:
            self.notices.append(f"{self._name} ended at {reached:.2f} s of the {stop:.2f} s its header announces; "
                                "the file may be truncated")

    def close(self) -> None:
        super().close()
        self._container.close()
        if self._pipe is not None:
            self._pipe.close()
