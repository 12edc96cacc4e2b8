"""H.264 output cost per frame: who converts BGR to YUV 4:2:0, and what it does to quality.

The MP4 / push sinks hand libx264 planar YUV 4:2:0. Two ways to get there from the annotated BGR
frame, timed in one run on the same synthetic frames (640×480 and 1920×1080):

- ``swscale``: a bgr24 ``av.VideoFrame`` converted by FFmpeg's swscale (what PyAV does when the
  encoder is given bgr24 frames; single-threaded);
- ``opencv``: :func:`rtseg.video.h264.bgr_to_i420` (OpenCV, SIMD + threads), a yuv420p frame.

Per size: ms per frame of the conversion alone and of conversion + libx264 (veryfast, zerolatency,
crf 23), p50 over the frames after a warm-up, and the PSNR (dB, over all BGR pixels) of the decoded
file against the source frames for each way. Usage:

    python -m benchmarks.encode_bench [--frames 60]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

from benchmarks.common import checked, run_checked, summary, write_result
from rtseg.data.synthetic import SyntheticScene
from rtseg.video.h264 import bgr_to_i420

WAYS: dict[str, Callable[[np.ndarray], av.VideoFrame]] = {
    "swscale": lambda img: av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p"),
    "opencv": lambda img: av.VideoFrame.from_ndarray(bgr_to_i420(img), format="yuv420p"),
}
WARMUP = 5


def encode(frames: list[np.ndarray], convert: Callable[[np.ndarray], av.VideoFrame]) -> tuple[list[float], list[float], bytes]:
    """(conversion ms per frame, conversion + encode ms per frame, MP4 bytes) for ``frames``."""
    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}
        conv, total = [], []
        for i, img in enumerate(frames):
            t0 = time.perf_counter()
            frame = convert(img)
            t1 = time.perf_counter()
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            t2 = time.perf_counter()
            conv.append((t1 - t0) * 1e3)
            total.append((t2 - t0) * 1e3)
        for packet in stream.encode(None):
            out.mux(packet)
    return conv[WARMUP:], total[WARMUP:], buf.getvalue()


def psnr(data: bytes, frames: list[np.ndarray]) -> float:
    """PSNR (dB) of the decoded MP4 against the source BGR frames."""
    with av.open(io.BytesIO(data)) as src:
        decoded = [f.to_ndarray(format="bgr24") for f in src.decode(video=0)]
    assert len(decoded) == len(frames), (len(decoded), len(frames))
    mse = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(decoded, frames)])
    return float(10 * np.log10(255.0 ** 2 / mse))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    return checked(ap, ap.parse_args(argv), [("--frames", WARMUP + 1, None, f" (the first {WARMUP} are not timed)")])


def run(args: argparse.Namespace) -> None:
    results = {}
    for w, h in ((640, 480), (1920, 1080)):
        scene = SyntheticScene(5, width=w, height=h, num_frames=args.frames)
        frames = [scene.frame(i)[0] for i in range(args.frames)]
        row = {}
        for name, convert in WAYS.items():
            conv, total, data = encode(frames, convert)
            row[name] = {"convert": summary(conv), "convert_and_encode": summary(total), "psnr_db": psnr(data, frames)}
            print(f"{w}x{h} {name}: convert {row[name]['convert']['p50_ms']:.2f} ms, convert + encode "
                  f"{row[name]['convert_and_encode']['p50_ms']:.2f} ms p50, PSNR {row[name]['psnr_db']:.2f} dB",
                  flush=True)
        row["encode_speedup_p50"] = (row["swscale"]["convert_and_encode"]["p50_ms"]
                                     / row["opencv"]["convert_and_encode"]["p50_ms"])
        results[f"{w}x{h}"] = row
    print(write_result("encode_bench", {"frames": args.frames, "codec": "libx264 veryfast zerolatency crf 23",
                                        "av": av.__version__, "results": results,
                                        "load_average_1_5_15": os.getloadavg()}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
