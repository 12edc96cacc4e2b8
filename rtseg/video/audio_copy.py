"""Pass a media file's first audio track through into an MP4 recording, in sync with its frames.

:class:`AudioPassThrough` copies the track's packets where the recording's MP4 takes its codec and its sound begins with
the first frame, or transcodes it to AAC (with leading silence where it begins later);
:class:`~rtseg.video.sink_mp4.Mp4Sink` muxes its packets in step with the video (``--audio``).
"""
from __future__ import annotations

import io
from fractions import Fraction
from itertools import chain
from typing import Generator, Iterator

import av
import numpy as np
from av.stream import Discard

from rtseg.errors import SinkError
from rtseg.video.sources_av import AV_ERRORS, error_reason, select_video_stream, video_shifts
from rtseg.video.timeline import TS_DISCONT, Timeline

_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}
#: Samples FFmpeg's AAC encoder puts before the sound (its ``initial_padding``): decoders play them first (the
#: fragmented MP4 keeps no edit list to skip them), so the sound is encoded from that much after output time 0.
_AAC_PRIMING = 1024
#: Seconds before the first frame to which the audio is sought (``--start``): a seek by the video's key frames lands
#: where the audio packets read first may begin a little after the key frame (Matroska: 8 ms after it in a test file).
_SEEK_BACK_S = 1.0


class AudioPassThrough:
    """Copy (or transcode to AAC) a file's first audio track into the recording, in sync with its frames.

    Packets are muxed in step with the video: :meth:`pump` writes everything up to a given output time.
    Output time 0 is the first video frame given to :meth:`add_to`; a packet is placed at its source time minus
    that frame's, both on the container's clock (``Frame.pts`` counts from the start of the video stream the source
    reads, :func:`~rtseg.video.sources_av.select_video_stream`: here that stream's start time is added back).
    Packets that begin before the first frame are dropped.

    The track is copied where MP4 holds its codec, the recording's header takes it (:func:`_header_takes`: FFmpeg's
    fragmented MP4 refuses AC-3 and E-AC-3) and its sound begins less than one audio frame after the first frame (a
    copy plays from output time 0: the fragmented MP4 keeps no edit list). Otherwise it is transcoded to AAC where
    its timestamps place it (:meth:`_transcode`: silence before a sound that starts later). ADTS AAC
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
        # the codec's name, not its decoder's (MP3's is "mp3float": MP3 was never copied). A copy keeps MP3's sync: the
        # source's timestamps already count its encoder delay (LAME's 1105 samples) as before the sound (MP4: an edit
        # list, a first packet before 0; MPEG-TS, Matroska as FFmpeg writes them: an audio start that much earlier)
        codec = self._in.codec_context.codec.canonical_name
        self._copy = codec in _MP4_AUDIO
        channels = self._in.codec_context.channels
        self._transcodable = channels in _DEFAULT_LAYOUTS
        if not self._copy and not self._transcodable:
            self._input.close()
            raise SinkError(f"audio source {source}: {channels} channels cannot be converted to AAC; drop --audio")
        self._layout = _DEFAULT_LAYOUTS.get(channels, "")  # AAC refuses unordered layouts such as "1 channels"
        adts = self._copy and codec == "aac" and not self._in.codec_context.extradata
        try:
            self._adts = av.bitstream.BitStreamFilterContext("aac_adtstoasc", self._in) if adts else None
        except av.error.FFmpegError as exc:
            self._input.close()
            raise SinkError(f"audio source {source}: its AAC audio cannot be prepared for MP4 ({error_reason(exc)}); "
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
        if self._copy and self._transcodable and not _header_takes(container, self._in):
            self._copy = False
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


def _header_takes(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream) -> bool:
    """Whether ``container``'s format, with its options, writes its header with a copy of ``stream``: tried on an
    audio-only file of that kind in memory. FFmpeg's fragmented MP4 (``empty_moov``) refuses AC-3 and E-AC-3 there
    ("Cannot write moov atom before AC3 packets", FFmpeg 8.1), and a container whose header failed cannot be
    written at all."""
    with av.open(io.BytesIO(), "w", format=container.format.name, options=dict(container.options)) as probe:
        probe.add_stream_from_template(stream)
        try:
            probe.start_encoding()
        except AV_ERRORS:
            return False
    return True


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
