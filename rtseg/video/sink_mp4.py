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
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from rtseg.errors import SinkError
from rtseg.types import Frame, Prediction
from rtseg.video.h264 import H264Encoder, check_crf
from rtseg.video.outfiles import CheckedFile, claim, partial_path, require_writable_folder

_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "500000",  # microseconds
    "flush_packets": "1",
}
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}


class _AudioPassThrough:
    """Copy (or, for codecs MP4 cannot hold, transcode to AAC) a file's first audio track.

    Packets are muxed in step with the video: :meth:`pump` writes everything up
    to a given output time. Source times are shifted by ``t0`` (the source time
    of the first video frame) so audio and video stay in sync.
    """

    def __init__(self, source: str) -> None:
        try:
            self._input = av.open(source)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"audio source {source}: cannot open ({exc}); check the path") from None
        if not self._input.streams.audio:
            self._input.close()
            raise SinkError(f"audio source {source}: has no audio track; drop --audio")
        self._in = self._input.streams.audio[0]
        self._copy = self._in.codec_context.name in _MP4_AUDIO
        channels = self._in.codec_context.channels
        if not self._copy and channels not in _DEFAULT_LAYOUTS:
            self._input.close()
            raise SinkError(f"audio source {source}: {channels} channels cannot be converted to AAC; drop --audio")
        self._layout = _DEFAULT_LAYOUTS.get(channels, "")  # AAC refuses unordered layouts such as "1 channels"
        self._out: av.stream.Stream | None = None
        self._packets: Iterator[av.Packet] = self._input.demux(self._in)
        self._pending: av.Packet | None = None
        self._done = False
        self._offset = 0  # ticks of the input time base subtracted from source times

    def add_to(self, container: av.container.OutputContainer, t0: float) -> None:
        """Add the output audio stream (before the container's header is written)."""
        if self._copy:
            self._out = container.add_stream_from_template(self._in)
        else:
            self._out = container.add_stream("aac", rate=self._in.codec_context.sample_rate)
            self._out.layout = self._layout
        self._offset = int(round(t0 / float(self._in.time_base)))

    def _next(self) -> av.Packet | None:
        while not self._done:
            packet = next(self._packets, None)
            if packet is None:
                self._done = True
            elif packet.pts is not None and packet.size and packet.pts >= self._offset:
                return packet
        return None

    def pump(self, container: av.container.OutputContainer, until: float) -> None:
        """Mux source audio whose output time is <= ``until`` seconds."""
        tb = float(self._in.time_base)
        while True:
            if self._pending is None:
                self._pending = self._next()
            packet = self._pending
            if packet is None or (packet.pts - self._offset) * tb > until:
                return
            self._pending = None
            packet.pts -= self._offset
            if packet.dts is not None:
                packet.dts -= self._offset
            if self._copy:
                packet.stream = self._out
                container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for out in self._out.encode(frame):
                        container.mux(out)

    def finish(self, container: av.container.OutputContainer, until: float) -> None:
        """Mux the audio up to ``until`` seconds, drain the AAC encoder, close the source."""
        self.pump(container, until)
        if not self._copy and self._out is not None:
            for out in self._out.encode(None):
                container.mux(out)
        self.close()

    def close(self) -> None:
        self._input.close()


class Mp4Sink:
    """Write annotated frames to ``path`` as H.264 MP4 at the frames' own timestamps.

    path: the final .mp4 file (its folder must exist and be writable).
    fps_hint: expected frame rate (rate control and keyframe spacing); the
        real timing comes from ``Frame.pts`` (``capture_time`` when pts is None).
    audio_from: a media file whose first audio track is passed through
        (shifted so that it stays in sync with the first video frame's pts).
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
        self.frames_written = 0  # frames the encoder took (the count a failed run's message gives)

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Encode ``annotated`` ((H, W, 3) uint8 BGR) at the frame's timestamp."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        try:
            if not self._encoder.started:
                self._encoder.open_stream(annotated.shape[1], annotated.shape[0])
                if self._audio is not None:
                    self._audio.add_to(self._container, t)
            self._encoder.encode(annotated, t)
            self.frames_written += 1
            if self._audio is not None:
                self._audio.pump(self._container, self._encoder.last_time)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"MP4 output {self.partial}: write failed ({_reason(exc)}); "
                            "free space or choose another path (the frames before it are kept in that file)") from None

    def _finish_partial(self) -> bool:
        """Flush and close the fragmented recording; True when it holds at least one frame.
        SinkError when a write failed, now or earlier (the file keeps what was written before)."""
        self._closed = True
        started = self._encoder.started
        try:
            self._encoder.flush()
            if self._audio is not None:
                if started:
                    self._audio.finish(self._container, self._encoder.last_time)
                else:
                    self._audio.close()
            self._container.close()
            self._file.close_checked()
        except (av.error.FFmpegError, OSError) as exc:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()
            with contextlib.suppress(OSError):
                self._file.close()
            raise SinkError(f"MP4 output {self.path}: writing the end of the recording failed ({_reason(exc)}); "
                            f"free space or choose another path (what was written before is kept in "
                            f"{self.partial})") from None
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
