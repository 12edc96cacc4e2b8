"""H.264 (libx264, yuv420p) encoding of BGR frames into an open PyAV container.

Shared by the MP4 and push sinks. Timestamps come from the frames themselves
(variable frame rate preserved), a keyframe is forced at least every
``keyframe_interval_s`` seconds of media time, and frames with odd width or
height are padded by one replicated pixel (yuv420p needs even sizes).
"""
from __future__ import annotations

import math
from fractions import Fraction

import av
import cv2
import numpy as np
from av.video.frame import PictureType

from rtseg.ranges import check_number

TIME_BASE = Fraction(1, 90_000)
"""Encoder/stream time base: 90 kHz ticks, the MPEG/RTP convention."""
MAX_SIDE = 16384
"""libx264's largest frame side, pixels (a larger frame fails in ``avcodec_open2`` with "Generic error in an
external library")."""


def check_crf(owner: str, crf: int) -> None:
    """ConfigError ``"<owner>: crf must be an integer in [0, 51], got 100"`` unless ``crf`` is a libx264 constant
    rate factor (0 lossless .. 51 worst; libx264 itself takes any number without a word)."""
    check_number(f"{owner}: crf", crf, 0, 51, integer=True)


def bgr_to_i420(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR, H and W even → (H * 3 / 2, W) uint8 planar YUV 4:2:0 (I420: Y, then U, then V).

    BT.601 limited range, as FFmpeg's own bgr24 → yuv420p conversion (luma within 1 level; chroma
    averaged over 2×2 pixels, where swscale filters it at left siting). OpenCV's SIMD conversion
    instead of the swscale PyAV runs when given bgr24 frames: on the 2-core dev machine, 1080p
    0.9 vs 2.5 ms per frame, conversion + libx264 10.7–11.1 vs 12.2–12.5 ms; decoded PSNR +0.2 dB
    at 1080p, −0.55 dB at 640×480 (chroma siting) (``benchmarks/encode_bench.py``).
    """
    return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 ``image`` scaled to fit ``width`` x ``height`` with its aspect ratio kept, centred on black.

    Frames of another size than the stream's (an image folder of mixed sizes, a portrait photo among
    landscape ones) are shown whole and undistorted.
    """
    scale = min(width / image.shape[1], height / image.shape[0])
    w, h = max(1, min(width, round(image.shape[1] * scale))), max(1, min(height, round(image.shape[0] * scale)))
    fitted = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (width - w) // 2, (height - h) // 2
    return cv2.copyMakeBorder(fitted, top, height - h - top, left, width - w - left, cv2.BORDER_CONSTANT, value=0)


class H264Encoder:
    """Encode frames into ``container`` as one H.264 video stream.

    The stream is added on the first frame (its size fixes the video size;
    later frames of another size are fitted into it, aspect ratio kept: :func:`letterbox`).
    With ``container`` None the encoder stands alone: :meth:`encode` and :meth:`flush` return the
    packets (Annex B, SPS/PPS repeated before every key frame, time base :data:`TIME_BASE`) for the
    caller to mux elsewhere (the push sink sends them to its network process).

    frame_threads: 0 (default) encodes each frame before :meth:`encode` returns (x264's ``zerolatency``:
    sliced threads, nothing held back: what a live push and a crash-safe recording want). N > 0 uses x264's
    frame threads instead (N of them; no look-ahead, no B-frames), which scale better on many cores: up to
    N - 1 frames are held in the encoder until later calls or :meth:`flush`.
    slice_threads: with ``frame_threads`` 0, how many sliced threads x264 runs (0: its own choice, one per
    core); fewer leave cores to the other stages of a pipeline on the same machine.
    """

    def __init__(
        self,
        container: av.container.OutputContainer | None,
        *,
        fps_hint: float | None,
        preset: str = "veryfast",
        crf: int = 23,
        keyframe_interval_s: float = 1.0,
        t0: float | None = None,
        frame_threads: int = 0,
        slice_threads: int = 0,
    ) -> None:
        self.check_threads(frame_threads, slice_threads)
        check_crf("H264Encoder", crf)
        self._container = container
        self._fps = float(fps_hint) if fps_hint and fps_hint > 0 else 30.0
        self._options = {"preset": preset, "crf": str(crf)}
        if frame_threads > 0:
            self._options["x264-params"] = f"threads={frame_threads}:rc-lookahead=0:sync-lookahead=0:bframes=0"
        else:
            self._options["tune"] = "zerolatency"
            if slice_threads > 0:
                self._options["x264-params"] = f"threads={slice_threads}"
        self._key_every = keyframe_interval_s
        self._stream: av.video.stream.VideoStream | None = None  # in the container, if there is one
        self._codec: av.video.codeccontext.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None  # (W, H) as given by the first frame
        self._t0 = t0  # media time (s) of output pts 0; None: the first frame's
        self._last_pts = -1
        self._last_key_t = -math.inf

    @staticmethod
    def check_threads(frame_threads: int, slice_threads: int) -> None:
        """ValueError unless both counts are >= 0 and at most one of them is set."""
        if frame_threads < 0 or slice_threads < 0 or (frame_threads and slice_threads):
            raise ValueError(f"H264Encoder: frame_threads={frame_threads}, slice_threads={slice_threads}: "
                             "give one of them (>= 0), not both")

    @property
    def started(self) -> bool:
        return self._codec is not None

    @property
    def t0(self) -> float | None:
        """Media time (seconds) of the first frame; pts 0 in the output."""
        return self._t0

    @property
    def rate(self) -> Fraction:
        """The nominal frame rate (from ``fps_hint``; the timestamps are the frames' own)."""
        return Fraction(self._fps).limit_denominator(1001)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the encoded video (even), once started."""
        return (self._codec.width, self._codec.height) if self._codec is not None else None

    @property
    def last_time(self) -> float:
        """Output time (seconds from the first frame) of the last encoded frame."""
        return max(self._last_pts, 0) * float(TIME_BASE)

    def open_stream(self, width: int, height: int) -> None:
        """Add the video stream for frames of ``width`` x ``height`` (called by the first :meth:`encode`).
        ValueError, with nothing added, for a side over :data:`MAX_SIDE`."""
        if max(width, height) > MAX_SIDE:
            raise ValueError(f"frames of {width}x{height} are larger than H.264 takes (at most {MAX_SIDE} pixels a "
                             f"side)")
        if self._container is None:
            codec = av.CodecContext.create("libx264", "w")
            codec.framerate = self.rate
        else:
            self._stream = self._container.add_stream("libx264", rate=self.rate)
            self._stream.time_base = TIME_BASE
            codec = self._stream.codec_context
        codec.width, codec.height = width + width % 2, height + height % 2
        codec.pix_fmt = "yuv420p"
        codec.time_base = TIME_BASE
        codec.gop_size = max(1, int(round(self._fps * self._key_every)))
        codec.options = dict(self._options)
        self._codec, self._size = codec, (width, height)

    def encode(self, image: np.ndarray, t: float) -> list[av.Packet]:
        """Encode one (H, W, 3) uint8 BGR image shown at media time ``t`` seconds; the packets it completed
        (already muxed into the container, if there is one).

        Times must not go backwards; a repeated time is nudged by one tick.
        """
        if self._codec is None:
            self.open_stream(image.shape[1], image.shape[0])
        if self._t0 is None:
            self._t0 = t
        w, h = self._size
        if (image.shape[1], image.shape[0]) != (w, h):
            image = letterbox(image, w, h)
        if w % 2 or h % 2:
            image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        pts = max(int(round((t - self._t0) / float(TIME_BASE))), self._last_pts + 1)
        frame = av.VideoFrame.from_ndarray(bgr_to_i420(image), format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        rel = pts * float(TIME_BASE)
        if rel - self._last_key_t >= self._key_every:
            frame.pict_type = PictureType.I
            self._last_key_t = rel
        self._last_pts = pts
        return self._emit(frame)

    def flush(self) -> list[av.Packet]:
        """Drain the encoder's delayed packets (into the container, if there is one)."""
        return self._emit(None) if self._codec is not None else []

    def _emit(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        if self._stream is None:
            return self._codec.encode(frame)
        packets = self._stream.encode(frame)
        self._container.mux(packets)
        return packets
