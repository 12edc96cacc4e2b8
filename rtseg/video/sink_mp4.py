"""Record annotated video to an MP4 file (H.264, yuv420p, browser-playable).

Crash safety: while recording, the video goes to ``<name>.partial.mp4`` as a
fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``, a keyframe at
least every second, a fragment at least every half second, every packet
flushed to the OS). If the process dies (even SIGKILL), that file plays up to
within about a second of the end. On a clean :meth:`Mp4Sink.close` the
fragments are remuxed (no re-encode) into a regular MP4 with the index at the
front (``+faststart``) under a temporary name, which is then atomically
renamed to the final path. So the final name only ever holds a complete file,
and an interrupted recording is recognisable by its ``.partial`` name. Every
write of the ``.partial`` file is checked (:class:`~rtseg.video.outfiles.CheckedFile`:
FFmpeg does not report a failed write of the last fragment): a full disk is a
:class:`SinkError` from ``write`` or ``close``, the recording stays ``.partial``
(up to the failure) and the final path as it was. When the remuxed copy cannot
be written (no room for a second copy on a nearly full disk), the finished
fragmented recording itself, complete and playable, is renamed to the final path
instead. While a sink records, it holds an exclusive ``flock`` on
its ``.partial`` file, so a second run aimed at the same output is refused.
"""
from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Generator, Iterator

import av
import numpy as np
from av.stream import Discard

from rtseg.errors import SinkError
from rtseg.types import Frame, Prediction
from rtseg.video.h264 import H264Encoder, check_crf
from rtseg.video.outfiles import CheckedFile, claim, partial_path, require_writable_folder
from rtseg.video.sources_av import AV_ERRORS, select_video_stream, video_shifts
from rtseg.video.timeline import TS_DISCONT, Timeline

_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "500000",  # microseconds
    "flush_packets": "1",
}
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}
#: Samples FFmpeg's AAC encoder puts before the sound (its ``initial_padding``): decoders play them first (the
#: fragmented MP4 keeps no edit list to skip them), so the sound is encoded from that much after output time 0.
_AAC_PRIMING = 1024
#: Seconds before the first frame to which the audio is sought (``--start``): a seek by the video's key frames lands
#: where the audio packets read first may begin a little after the key frame (Matroska: 8 ms after it in a test file).
_SEEK_BACK_S = 1.0


class _AudioPassThrough:
    """Copy (or transcode to AAC) a file's first audio track into the recording, in sync with its frames.

    Packets are muxed in step with the video: :meth:`pump` writes everything up to a given output time.
    Output time 0 is the first video frame given to :meth:`add_to`; a packet is placed at its source time minus
    that frame's, both on the container's clock (``Frame.pts`` counts from the start of the video stream the source
    reads, :func:`~rtseg.video.sources_av.select_video_stream`: here that stream's start time is added back).
    Packets that begin before the first frame are dropped.

    The track is copied where MP4 holds its codec and its sound begins less than one audio frame after the first
    frame (a copy plays from output time 0: the fragmented MP4 keeps no edit list). Otherwise it is transcoded to
    AAC where its timestamps place it (:meth:`_transcode`: silence before a sound that starts later). ADTS AAC
    (MPEG-TS) is copied through FFmpeg's ``aac_adtstoasc`` filter (the form MP4 holds, with the AudioSpecificConfig
    its header needs).

    A format whose timestamps may jump (MPEG-TS, ...) is read from its beginning, and each part of a joined file
    moved by the video's shift there (:func:`~rtseg.video.sources_av.video_shifts`), so its sound stays with the
    part's frames as :class:`~rtseg.video.sources_av.FileSource` times them. Where parts' sounds overlap, the copied
    packets that would play half their length or more late are left out (:meth:`_kept`). Any other format is sought
    to the first frame (``--start``), not demuxed from its beginning.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._input = av.open(source)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"audio source {source}: cannot open ({exc}); check the path") from None
        if not self._input.streams.audio:
            self._input.close()
            raise SinkError(f"audio source {source}: has no audio track; drop --audio")
        video = select_video_stream(self._input)  # (sets every other stream to be discarded)
        self._video_start = float((video.start_time or 0) * video.time_base) if video is not None else 0.0
        self._in = self._input.streams.audio[0]
        self._in.discard = Discard.default
        self._copy = self._in.codec_context.name in _MP4_AUDIO
        channels = self._in.codec_context.channels
        self._transcodable = channels in _DEFAULT_LAYOUTS
        if not self._copy and not self._transcodable:
            self._input.close()
            raise SinkError(f"audio source {source}: {channels} channels cannot be converted to AAC; drop --audio")
        self._layout = _DEFAULT_LAYOUTS.get(channels, "")  # AAC refuses unordered layouts such as "1 channels"
        adts = self._copy and self._in.codec_context.name == "aac" and not self._in.codec_context.extradata
        try:
            self._adts = av.bitstream.BitStreamFilterContext("aac_adtstoasc", self._in) if adts else None
        except av.error.FFmpegError as exc:
            self._input.close()
            raise SinkError(f"audio source {source}: its AAC audio cannot be prepared for MP4 ({_reason(exc)}); "
                            "drop --audio") from None
        # the video's shift over each part of a file whose timestamps may jump (read when the audio jumps)
        self._joins: Generator[float, None, None] | None = \
            video_shifts(source) if self._input.format.flags & TS_DISCONT else None
        self._shifts = [0.0]
        self._out: av.stream.Stream | None = None
        self._packets: Iterator[av.Packet] = iter(())
        self._pending: av.Packet | None = None
        self._offset = 0  # ticks of the input time base subtracted from source times
        self._clock = 0.0  # transcoding: output time (s) where the next sample encoded will play

    def add_to(self, container: av.container.OutputContainer, t0: float) -> None:
        """Add the output audio stream (before the container's header is written) for a first video frame at
        ``t0`` s (its ``Frame.pts``: from the start of the source's video stream)."""
        self._offset = int(round((self._video_start + t0) / float(self._in.time_base)))
        kept = self._kept()
        first = next(kept, None)
        self._packets = kept if first is None else chain((first,), kept)
        if first is not None and first.pts >= max(first.duration or 0, 1) and self._transcodable:
            self._copy = False  # the sound begins a frame or more after the first frame: padded with silence
        if not self._copy:
            self._out = container.add_stream("aac", rate=_aac_rate(self._in.codec_context.sample_rate))
            self._out.layout = self._layout
            self._clock = _AAC_PRIMING / self._out.codec_context.sample_rate
            return
        self._out = container.add_stream_from_template(self._in)
        if self._adts is not None:  # the header needs the AudioSpecificConfig the filter makes of the first packet
            adts = self._adts
            self._packets = (out for packet in self._packets for out in adts.filter(packet))
            self._pending = next(self._packets, None)
            if self._pending is not None and self._pending.has_sidedata("new_extradata"):
                self._out.codec_context.extradata = bytes(self._pending.get_sidedata("new_extradata"))

    def _from_first_frame(self) -> Iterator[av.Packet]:
        """The source's audio packets; in a format without timestamp jumps whose audio begins before the first frame,
        from a seek (as ``ffmpeg -ss`` seeks: by the file's main stream, whose key frame index the demuxer has) to
        :data:`_SEEK_BACK_S` before that frame, while the first packet read begins at or before it; else from the
        beginning (where the format cannot seek, or the seek landed after it)."""
        start = self._in.start_time or 0
        if self._joins is None and self._offset > start:
            target = self._offset * self._in.time_base - Fraction(_SEEK_BACK_S)  # s on the file's clock
            try:
                self._input.seek(int(target * av.time_base), backward=True)
            except AV_ERRORS:
                pass  # (nothing read: the demuxer is still at the beginning)
            else:
                packets = self._input.demux(self._in)
                first = next(packets, None)
                if first is not None and first.pts is not None and first.pts <= self._offset:
                    yield first
                    yield from packets
                    return
                self._input.seek(start, stream=self._in, backward=True)
        yield from self._input.demux(self._in)

    def _kept(self) -> Iterator[av.Packet]:
        """The source's audio packets that begin at or after the first video frame, their times moved to output times
        (ticks of the input time base; in a file whose timestamps may jump, on the video's continuous timeline).
        Copying, the packets of a joined file's next part that begin half their length or more before the end of
        the sound kept (played back to back from output time 0), or not after the last packet kept, are left out:
        the parts' sounds overlap there (the error stays under half a packet however many joins there are)."""
        tb = float(self._in.time_base)
        own = Timeline(jumps_ahead=True)  # the audio's own discontinuities: which part of a joined file it is in
        part, played, last = 0, 0, -1  # the last packet kept's part; ticks of sound kept; its begin (ticks)
        for packet in self._from_first_frame():
            if packet.pts is None or not packet.size:
                continue
            moved = -self._offset
            if self._joins is not None:
                own.place(packet.pts * tb, (packet.duration or 0) * tb)
                moved += int(round(self._shift(own.jumps, own.offset) / tb))
            begin = packet.pts + moved
            if begin < 0 or (self._copy and own.jumps != part and (
                    begin <= last or 2 * (played - begin) >= (packet.duration or 0))):
                continue
            packet.pts = begin
            if packet.dts is not None:
                packet.dts += moved
            part, played, last = own.jumps, played + (packet.duration or 0), begin
            yield packet

    def _shift(self, part: int, own: float) -> float:
        """Seconds the video's timeline moves part ``part`` of a joined file (0: the first); ``own`` (the audio's
        own shift) where the video has fewer parts."""
        for shift in self._joins if len(self._shifts) <= part else ():
            self._shifts.append(shift)
            if len(self._shifts) > part:
                break
        return self._shifts[part] if part < len(self._shifts) else own

    def pump(self, container: av.container.OutputContainer, until: float) -> None:
        """Mux the source audio that begins before output time ``until`` (s)."""
        tb = float(self._in.time_base)
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
            packet = self._pending
            if packet is None or packet.pts * tb >= until:
                return
            self._pending = None
            if self._copy:
                packet.stream = self._out
                container.mux(packet)
            else:
                self._transcode(container, packet)

    def _transcode(self, container: av.container.OutputContainer, packet: av.Packet) -> None:
        """Decode ``packet`` and encode its sound to AAC where its timestamps place it: a frame due half its length or
        more after the end of the sound encoded follows silence; one due as much before it loses the samples that
        overlap that sound (all of them: it is left out)."""
        for frame in packet.decode():
            if frame.pts is not None and frame.time_base is not None:
                late = round((float(frame.pts * frame.time_base) - self._clock) * frame.sample_rate)  # samples
                if 2 * abs(late) >= frame.samples:
                    if late > 0:
                        self._pad(container, frame, late)
                    elif -late >= frame.samples:
                        continue
                    else:
                        frame = _trimmed(frame, -late)
            self._encode(container, frame)

    def _pad(self, container: av.container.OutputContainer, like: av.AudioFrame, samples: int) -> None:
        """Encode ``samples`` samples of silence in the form of ``like``, in pieces of at most a second."""
        while samples > 0:
            piece = min(samples, like.sample_rate)
            silence = av.AudioFrame(format=like.format.name, layout=like.layout, samples=piece)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate = like.sample_rate
            self._encode(container, silence)
            samples -= piece

    def _encode(self, container: av.container.OutputContainer, frame: av.AudioFrame) -> None:
        """Encode ``frame`` right after the sound encoded before it."""
        frame.pts = None
        self._clock += frame.samples / frame.sample_rate
        for out in self._out.encode(frame):
            container.mux(out)

    def finish(self, container: av.container.OutputContainer, until: float) -> None:
        """Mux the audio that begins before output time ``until`` (s), drain the AAC encoder."""
        self.pump(container, until)
        if not self._copy and self._out is not None:
            for out in self._out.encode(None):
                container.mux(out)

    def close(self) -> None:
        if self._joins is not None:
            self._joins.close()
        self._input.close()


class Mp4Sink:
    """Write annotated frames to ``path`` as H.264 MP4 at the frames' own timestamps.

    path: the final .mp4 file (its folder must exist and be writable).
    fps_hint: expected frame rate (rate control and keyframe spacing); the
        real timing comes from ``Frame.pts`` (``capture_time`` when pts is None).
    audio_from: a media file whose first audio track is passed through (:class:`_AudioPassThrough`), in sync with
        frames timed as :class:`~rtseg.video.sources_av.FileSource` times that file's (``Frame.pts`` from the start
        of its video stream, continuous across the joins of MPEG-TS files), from the first frame written to the end
        of the last (its time plus the spacing of the last two).
    preset, crf: libx264 speed/quality settings.
    frame_threads: 0 (default): every frame is encoded and in the file's next fragment when ``write``
        returns. N > 0: x264 frame threads (:class:`~rtseg.video.h264.H264Encoder`), more frames per second
        on many cores; up to N - 1 frames wait in the encoder, which ``close``/``abort`` write out but a
        hard kill loses.
    slice_threads: with ``frame_threads`` 0, x264's sliced threads (0: one per core; see H264Encoder).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps_hint: float | None,
        audio_from: str | None = None,
        preset: str = "veryfast",
        crf: int = 23,
        frame_threads: int = 0,
        slice_threads: int = 0,
    ) -> None:
        H264Encoder.check_threads(frame_threads, slice_threads)
        check_crf("Mp4Sink", crf)  # before any file is made
        self.path = Path(path)
        self.partial = partial_path(self.path if self.path.suffix else self.path.with_suffix(".mp4"))
        require_writable_folder(self.path, "MP4 output")
        self._lock = claim(self.partial, self.path, "MP4 output")
        self._file = CheckedFile(os.dup(self._lock))  # the claimed file; a write that fails is kept
        try:
            self._audio = _AudioPassThrough(audio_from) if audio_from else None
            self._container = av.open(self._file, "w", format="mp4", options=dict(_FRAGMENTED))
        except (av.error.FFmpegError, OSError, SinkError) as exc:
            if getattr(self, "_audio", None) is not None:
                self._audio.close()
            self._file.close()
            self.partial.unlink(missing_ok=True)
            os.close(self._lock)
            if isinstance(exc, SinkError):
                raise
            raise SinkError(f"MP4 output {self.partial}: cannot create ({_reason(exc)}); choose another path") from None
        self._encoder = H264Encoder(self._container, fps_hint=fps_hint, preset=preset, crf=crf,
                                    frame_threads=frame_threads, slice_threads=slice_threads)
        self._closed = False
        self._step = 1.0 / float(self._encoder.rate)  # s between the last two frames: the last one's duration
        self.frames_written = 0  # frames the encoder took (the count a failed run's message gives)

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Encode ``annotated`` ((H, W, 3) uint8 BGR) at the frame's timestamp."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        if not self._encoder.started:
            try:
                self._encoder.open_stream(annotated.shape[1], annotated.shape[0])  # (adds the stream; no I/O)
            except ValueError as exc:  # (nothing recorded: no file is left)
                raise SinkError(f"MP4 output {self.path}: {exc}; write images instead (e.g. --output "
                                f"'out/{{seq:05d}}.png') or give a smaller source") from None
            if self._audio is not None:
                with self._reporting(*self._audio_failure):
                    self._audio.add_to(self._container, t)
        before = self._encoder.last_time
        with self._reporting("encoding the video"):
            self._encoder.encode(annotated, t)
        if self.frames_written:
            self._step = self._encoder.last_time - before
        self.frames_written += 1
        if self._audio is not None:
            with self._reporting(*self._audio_failure):
                self._audio.pump(self._container, self._encoder.last_time)

    @contextlib.contextmanager
    def _reporting(self, doing: str, hint: str = "", *, at_end: bool = False) -> Iterator[None]:
        """Turn an FFmpeg or OS error raised while ``doing`` into a one-line SinkError. A write of the file that the
        system refused (a full disk, a quota, a file size limit: the error :class:`CheckedFile` keeps) says to free
        space; any other error says what failed, and ``hint`` what to do ("; drop --audio"). ``at_end``: while
        finishing the recording (the message names the final path and where the recording is kept)."""
        try:
            yield
        except (av.error.FFmpegError, OSError) as exc:
            if self._file.error is not None:
                doing = "writing the end of the recording" if at_end else "write"
                exc, hint = self._file.error, "; free space or choose another path"
            path, kept = (self.path, f"what was written before is kept in {self.partial}") if at_end else \
                (self.partial, "the frames before it are kept in that file")
            raise SinkError(f"MP4 output {path}: {doing} failed ({_reason(exc)}){hint} ({kept})") from None

    @property
    def _audio_failure(self) -> tuple[str, str]:
        """(doing, hint) of :meth:`_reporting` for the audio pass-through."""
        return f"passing the audio of {self._audio.source} through", "; drop --audio"

    def _finish_partial(self) -> bool:
        """Flush and close the fragmented recording; True when it holds at least one frame.
        SinkError when a write failed, now or earlier (the file keeps what was written before)."""
        self._closed = True
        started = self._encoder.started
        try:
            with self._reporting("encoding the last frames", at_end=True):
                self._encoder.flush()
            if self._audio is not None and started:  # up to the end of the last frame
                with self._reporting(*self._audio_failure, at_end=True):
                    self._audio.finish(self._container, self._encoder.last_time + self._step)
            with self._reporting("writing the end of the recording", at_end=True):
                self._container.close()
                self._file.close_checked()
        except SinkError:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()
            with contextlib.suppress(OSError):
                self._file.close()
            raise
        finally:
            if self._audio is not None:
                self._audio.close()
        if not started:  # no frame arrived: leave no file behind
            self.partial.unlink(missing_ok=True)
        return started

    def abort(self) -> None:
        """End a failed run: keep what was recorded in the ``.partial`` file, never at the final path.
        Best effort (the run has already failed): errors while flushing are ignored."""
        if not self._closed:
            try:
                with contextlib.suppress(SinkError):
                    self._finish_partial()
            finally:
                os.close(self._lock)

    def close(self) -> None:
        """Finish the recording and move it to the final path (idempotent)."""
        if self._closed:
            return
        try:
            if self._finish_partial():
                self._finalise()
        finally:
            os.close(self._lock)  # held until the final file is in place

    def _finalise(self) -> None:
        """Remux the finished fragmented recording to the final path (faststart), or move it there as is (no room
        for the copy; or a Ctrl-C / SIGTERM during the remux, which goes on up after: it left the copy's hidden
        temporary file and the output as ``.partial.mp4``)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            _remux_faststart(self.partial, tmp)
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not isinstance(exc, (av.error.FFmpegError, OSError)):  # Ctrl-C / SIGTERM meanwhile (a long remux):
                with contextlib.suppress(OSError):  # the finished fragmented recording is the output
                    os.replace(self.partial, self.path)
                raise
            try:  # no room for the remuxed copy: the finished fragmented file (its writes checked) is complete
                os.replace(self.partial, self.path)
                return
            except OSError:
                pass
            kept = f"the recording is in {self.partial}" if self.partial.exists() else \
                f"{self.partial} is gone (was its folder removed?)"
            raise SinkError(f"MP4 output {self.path}: finalising failed ({_reason(exc)}); {kept}") from None
        self.partial.unlink(missing_ok=True)


def _aac_rate(rate: int) -> int:
    """The sample rate (Hz) nearest ``rate`` that FFmpeg's AAC encoder takes (it refuses others, such as 192 kHz;
    PyAV resamples the decoded audio to it)."""
    return min(av.Codec("aac", "w").audio_rates, key=lambda r: abs(r - rate))


def _trimmed(frame: av.AudioFrame, samples: int) -> av.AudioFrame:
    """``frame`` without its first ``samples`` samples (fewer than it has)."""
    planar = frame.format.is_planar
    data = frame.to_ndarray()[:, samples if planar else samples * len(frame.layout.channels):]
    trimmed = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout)
    trimmed.sample_rate = frame.sample_rate
    return trimmed


def _reason(exc: BaseException) -> str:
    """An OS/FFmpeg error's reason without the file name it repeats."""
    return getattr(exc, "strerror", None) or str(exc)


def _remux_faststart(src_path: Path, dst_path: Path) -> None:
    """Copy every audio/video packet of ``src_path`` into a regular MP4 with a leading index."""
    with av.open(str(src_path)) as src, av.open(
        str(dst_path), "w", format="mp4", options={"movflags": "+faststart"}
    ) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux(*[src.streams[i] for i in streams]):
            if packet.dts is None:  # demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
