"""Record annotated video to an MP4 file (H.264, yuv420p, browser-playable).

Crash safety: while recording, the video goes to ``<name>.partial.mp4`` as a
fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``, a keyframe at
least every second, a fragment at least every half second, every packet
flushed to the OS). If the process dies (even SIGKILL), that file plays up to
within about a second of the end. On a clean :meth:`Mp4Sink.close` the
fragments are remuxed (no re-encode) into a regular MP4 with the index at the
front (``+faststart``) under a temporary name, which is then atomically
renamed to the final path, where the last frame lasts its ``Frame.duration`` when that is known (H.264 packets carry
no duration: the fragmented file gives the last one 1 / ``fps_hint``). So the final name only ever holds a complete
file, and an interrupted recording is recognisable by its ``.partial`` name. Every
write of the ``.partial`` file is checked (:class:`~rtseg.video.outfiles.CheckedFile`:
FFmpeg does not report a failed write of the last fragment): a full disk is a
:class:`SinkError` from ``write`` or ``close``, the recording stays ``.partial``
(up to the failure) and the final path as it was. When the remuxed copy cannot
be written (no room for a second copy on a nearly full disk), the finished
fragmented recording itself, complete and playable, is renamed to the final path
instead. While a sink records, it holds an exclusive ``flock`` on
its ``.partial`` file, so a second run aimed at the same output is refused; a ``.partial`` file that an interrupted
run left is moved aside to ``<name>.recovered-N.mp4`` by the next sink for the output, with a warning
(:func:`~rtseg.video.outfiles.claim`).
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from rtseg.errors import SinkError
from rtseg.types import Frame, Prediction
from rtseg.video.audio_copy import AudioPassThrough
from rtseg.video.h264 import H264Encoder, check_crf
from rtseg.video.outfiles import CheckedFile, claim, output_target, partial_path

_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "500000",  # microseconds
    "flush_packets": "1",
}


class Mp4Sink:
    """Write annotated frames to ``path`` as H.264 MP4 at the frames' own timestamps.

    path: the final .mp4 file (its folder must exist and be writable).
    fps_hint: expected frame rate (rate control and keyframe spacing); the
        real timing comes from ``Frame.pts`` (``capture_time`` when pts is None).
    audio_from: a media file whose first audio track is passed through
        (:class:`~rtseg.video.audio_copy.AudioPassThrough`), in sync with frames timed as
        :class:`~rtseg.video.sources_av.FileSource` times that file's (``Frame.pts`` from the start of its video
        stream, continuous across the joins of MPEG-TS files), from the first frame written to the end of the last
        (its time plus its ``Frame.duration``, else the spacing of the last two).
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
        self.path = output_target(Path(path), "MP4 output")  # (a link written through; a FIFO, device refused)
        self.partial = partial_path(self.path if self.path.suffix else self.path.with_suffix(".mp4"))
        self._lock = claim(self.partial, self.path, "MP4 output")
        self._file = CheckedFile(os.dup(self._lock))  # the claimed file; a write that fails is kept
        try:
            self._audio = AudioPassThrough(audio_from) if audio_from else None
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
        self._last_duration: float | None = None  # Frame.duration of the last frame written (None: unknown)
        self._header = False  # the file's header is written (at the first frame): nothing is muxed before it
        self.frames_written = 0  # frames the encoder took (the count a failed run's message gives)

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Encode ``annotated`` ((H, W, 3) uint8 BGR) at the frame's timestamp."""
        t = frame.pts if frame.pts is not None else frame.capture_time
        if self._encoder.started and not self._header:  # (muxing into it would crash FFmpeg)
            raise SinkError(f"MP4 output {self.path}: its start failed (said before); nothing more is written")
        if not self._encoder.started:
            try:
                self._encoder.open_stream(annotated.shape[1], annotated.shape[0])  # (adds the stream; no I/O)
            except ValueError as exc:  # (nothing recorded: no file is left)
                raise SinkError(f"MP4 output {self.path}: {exc}; write images instead (e.g. --output "
                                f"'out/{{seq:05d}}.png') or give a smaller source") from None
            if self._audio is not None:
                with self._reporting(*self._audio_failure, at_start=True):
                    self._audio.add_to(self._container, t)
            with self._reporting("writing the header", "; drop --audio" if self._audio is not None else "",
                                 at_start=True):
                self._container.start_encoding()
            self._header = True
        before = self._encoder.last_time
        with self._reporting("encoding the video"):
            self._encoder.encode(annotated, t)
        if self.frames_written:
            self._step = self._encoder.last_time - before
        self._last_duration = frame.duration if frame.duration is not None and 0 < frame.duration < math.inf else None
        self.frames_written += 1
        if self._audio is not None:
            with self._reporting(*self._audio_failure):
                self._audio.pump(self._container, self._encoder.last_time)

    @contextlib.contextmanager
    def _reporting(self, doing: str, hint: str = "", *, at_start: bool = False, at_end: bool = False
                   ) -> Iterator[None]:
        """Turn an FFmpeg or OS error raised while ``doing`` into a one-line SinkError. A write of the file that the
        system refused (a full disk, a quota, a file size limit: the error :class:`CheckedFile` keeps) says to free
        space; any other error says what failed, and ``hint`` what to do ("; drop --audio"). ``at_start``: while
        beginning the recording, before its header is written (the message names the final path: nothing was
        recorded, and no file is left). ``at_end``: while finishing the recording (the message names the final path
        and where the recording is kept)."""
        try:
            yield
        except (av.error.FFmpegError, OSError) as exc:
            if self._file.error is not None:
                doing = "writing the end of the recording" if at_end else "write"
                exc, hint = self._file.error, "; free space or choose another path"
            path, kept = (self.path, "nothing was recorded") if at_start else \
                (self.path, f"what was written before is kept in {self.partial}") if at_end else \
                (self.partial, "the frames before it are kept in that file")
            raise SinkError(f"MP4 output {path}: {doing} failed ({_reason(exc)}){hint} ({kept})") from None

    @property
    def _audio_failure(self) -> tuple[str, str]:
        """(doing, hint) of :meth:`_reporting` for the audio pass-through."""
        return f"passing the audio of {self._audio.source} through", "; drop --audio"

    def _finish_partial(self) -> bool:
        """Flush and close the fragmented recording; True when it was begun (its header written, at the first frame).
        One that was not (no frame arrived, or its header failed: FFmpeg crashes muxing into it) leaves no file.
        SinkError when a write failed, now or earlier (the file keeps what was written before)."""
        self._closed = True
        try:
            if self._header:
                with self._reporting("encoding the last frames", at_end=True):
                    self._encoder.flush()
                if self._audio is not None:  # up to the end of the last frame
                    with self._reporting(*self._audio_failure, at_end=True):
                        self._audio.finish(self._container,
                                           self._encoder.last_time + (self._last_duration or self._step))
            with self._reporting("writing the end of the recording", at_end=True):
                self._container.close()  # (no header: nothing is written)
                if self._header:
                    self._file.close_checked()
                else:  # (a failed write was reported where it failed)
                    self._file.close()
        except SinkError:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()
            with contextlib.suppress(OSError):
                self._file.close()
            raise
        finally:
            if self._audio is not None:
                self._audio.close()
        if not self._header:
            self.partial.unlink(missing_ok=True)
        return self._header

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
            _remux_faststart(self.partial, tmp, self._last_duration)
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


def _remux_faststart(src_path: Path, dst_path: Path, last_duration: float | None) -> None:
    """Copy every audio/video packet of ``src_path`` into a regular MP4 with a leading index; the last video packet
    (the recording's, without B-frames: its last frame) lasts ``last_duration`` s (> 0) where that is given."""
    with av.open(str(src_path)) as src, av.open(
        str(dst_path), "w", format="mp4", options={"movflags": "+faststart"}
    ) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        held: av.Packet | None = None  # the last video packet read: muxed once the next one (or the end) is read
        for packet in src.demux(*[src.streams[i] for i in streams]):
            if packet.dts is None:  # demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            if packet.stream.type != "video":
                dst.mux(packet)
                continue
            if held is not None:
                dst.mux(held)
            held = packet
        if held is not None:
            if last_duration is not None:
                held.duration = max(1, round(last_duration / held.time_base))
            dst.mux(held)
