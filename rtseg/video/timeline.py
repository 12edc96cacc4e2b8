"""Frame times kept continuous across timestamp discontinuities, as FFmpeg keeps them.

Streams cut and spliced together (MPEG-TS files concatenated, broadcast splices, a camera that restarts
its clock mid-connection) carry timestamps that jump. A recording timed by them squeezed everything after
a backward jump into a few microseconds. FFmpeg's command line handles such jumps by shifting the rest of
the stream so that it continues one frame after the last frame before the jump: for containers that declare
discontinuities (AVFMT_TS_DISCONT: MPEG-TS, HLS, ...) when a timestamp goes back more than 0.1 s or ahead
more than 10 s (``-dts_delta_threshold``). :class:`Timeline` does the same with the frames' times.
"""
from __future__ import annotations

#: FFmpeg's AVFMT_TS_DISCONT: the container format allows timestamp discontinuities (``av.ContainerFormat.flags``).
TS_DISCONT = 0x0200
#: FFmpeg's AVFMT_NOTIMESTAMPS: the container format stores no timestamps; its demuxer numbers the frames at a
#: rate it assumes (motion JPEG over HTTP, ``mpjpeg``: 25 FPS whatever the camera sends; raw H.264).
NO_TIMESTAMPS = 0x0080
#: A time this much before the previous frame's is a jump back (FFmpeg: AV_TIME_BASE / 10).
BACK_S = 0.1
#: A time this much after the previous frame's is a jump ahead, in formats with discontinuities (FFmpeg's
#: default ``-dts_delta_threshold``).
AHEAD_S = 10.0


class Timeline:
    """Maps a stream's frame times (seconds, presentation order) onto one continuous timeline.

    jumps_ahead: whether jumps ahead count too (formats with discontinuities, ``flags & TS_DISCONT``); a jump
    back always counts (frames leave the decoder in presentation order, so one means the clock restarted).
    offset: seconds added to every time before the first jump (the shift of the jumps before where reading
    starts, when that is not the stream's beginning). ``jumps`` counts the discontinuities bridged.
    """

    def __init__(self, *, jumps_ahead: bool, offset: float = 0.0) -> None:
        self.jumps_ahead = jumps_ahead
        self.jumps = 0
        self._offset = offset
        self._last: float | None = None

    @property
    def offset(self) -> float:
        """Seconds added to the times now: ``offset`` given, plus the shifts of the discontinuities so far."""
        return self._offset

    def place(self, t: float, period: float) -> float:
        """The time of a frame stamped ``t`` (s): ``t`` plus the shift of the discontinuities so far; a frame
        past a new one lands ``period`` (s, the frame's expected spacing) after the previous frame."""
        placed = t + self._offset
        last = self._last
        if last is not None and (placed < last - BACK_S or (self.jumps_ahead and placed > last + AHEAD_S)):
            self._offset += last + period - placed
            placed = last + period
            self.jumps += 1
        self._last = placed
        return placed
