"""Speed of the JPEG size reader (``rtseg.imageio._jpeg_size``, run on every JPEG before OpenCV decodes it, to
refuse one over the pixel limit) against its version at a git revision (default 193a479: a Python step per fill
byte, RST marker or stuffed zero), in one process on the same inputs.

Inputs: crafted headers, the JPEG start, ``--mb`` MB of one run, then a 640x480 frame header: fill bytes (0xFF),
RST markers (0xFF 0xD0-0xD7), stuffed zeros (0xFF 0x00), empty COM segments (4 bytes each, the fewest bytes per
segment: the reader takes a Python step per segment), junk (no 0xFF); and a normal file, a 1920x1080 synthetic
frame as OpenCV writes it (quality 90) with a 64 kB APP1 segment (a camera's EXIF and thumbnail) before its frame
header. Times are milliseconds per call (wall-clock; calls repeated within a sample where one takes under 20 ms),
the two versions alternated sample by sample for ``--rounds`` samples after one warm-up call each; ``mb_per_s`` is
the bytes before the frame header over the p50; ``speedup`` the baseline's p50 over the current one. For the
normal file also ``decode_image``'s p50 (reader and decode) and the reader's share of it. The 1-, 5- and 15-minute
load averages are recorded before and after. Writes benchmarks/results/jpeg_scan_cpu.json. Usage:

    python -m benchmarks.jpeg_scan [--mb 1] [--rounds 5] [--baseline REV]
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2

from benchmarks.common import check_revision, checked, module_at, run_checked, summary, write_result
from rtseg.cliargs import TypedFloat
from rtseg.data.synthetic import SyntheticScene
from rtseg.imageio import _jpeg_size, decode_image

SOURCE = "rtseg/imageio.py"
SOI = b"\xff\xd8"
FRAME = b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"  # 640 x 480, 3 components


def crafted(mb: float) -> dict[str, bytes]:
    """The JPEG start, ``mb`` MB of each run, a 640 x 480 frame header."""
    n = int(mb * 2**20)
    runs = {"fill_bytes": b"\xff" * n, "rst_markers": b"".join(bytes([0xFF, 0xD0 + k]) for k in range(8)) * (n // 16),
            "stuffed_zeros": b"\xff\x00" * (n // 2), "empty_com_segments": b"\xff\xfe\x00\x02" * (n // 4),
            "junk": b"\x12" * n}
    return {name: SOI + run + FRAME for name, run in runs.items()}


def camera_jpeg() -> tuple[bytes, int]:
    """A 1920 x 1080 synthetic frame as OpenCV writes it (quality 90), a 64 kB APP1 segment after its start; and
    the number of bytes before its frame header."""
    image, _ = SyntheticScene(0, width=1920, height=1080, num_frames=1).frame(0)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 65_008) + b"Exif\0\0" + random.Random(0).randbytes(65_000)  # marker-
    # like pairs in the random bytes, skipped by the segment's length
    return data[:2] + app1 + data[2:], len(app1) + data.find(b"\xff\xc0")  # OpenCV's: JFIF, DQT, then the frame


def per_call_ms(fn: Callable[[], Any]) -> float:
    """Milliseconds per call of ``fn``, called as often as 20 ms takes (at least once)."""
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    calls = max(1, int(0.02 / max(once, 1e-7)))
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) * 1e3 / calls


def alternated(versions: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """:func:`summary` of each version's :func:`per_call_ms`, one sample of each version per round (the order
    alternated), after one warm-up call each."""
    for fn in versions.values():
        fn()
    names = list(versions)
    ms: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            ms[name].append(per_call_ms(versions[name]))
    return {name: summary(times) for name, times in ms.items()}


def compare(data: bytes, head: int, baseline: Callable[[bytes], Any], rounds: int) -> dict[str, Any]:
    """Both readers on ``data``: their size (the same), per-call ms, MB/s of the ``head`` bytes before the frame
    header."""
    size = _jpeg_size(data)
    assert size is not None and baseline(data) == size, (size, baseline(data))
    head_mb = head / 1e6
    ms = alternated({"current": lambda: _jpeg_size(data), "baseline": lambda: baseline(data)}, rounds)
    out: dict[str, Any] = {"size": size, "bytes_before_frame_header_mb": head_mb}
    for name, timing in ms.items():
        out[name] = {**timing, "mb_per_s": head_mb / (timing["p50_ms"] / 1e3)}
    out["speedup"] = ms["baseline"]["p50_ms"] / ms["current"]["p50_ms"]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is run (argparse's usage and one error line, exit 2): a run too short
    to time the scan (``--mb 0``) is refused, not written over the results."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=TypedFloat, default=1.0, help="MB of each crafted run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", default="193a479", help=f"git revision of {SOURCE} to compare with")
    args = checked(ap, ap.parse_args(argv), [
        ("--mb", 0.01, 256, " (less times the call, not the scan; the five runs are held in memory)"),
        ("--rounds", 1, None, "")])
    check_revision(ap, args.baseline, SOURCE)
    return args


def run(args: argparse.Namespace) -> None:
    baseline = module_at(args.baseline, SOURCE)._jpeg_size
    load_before = os.getloadavg()
    result: dict[str, Any] = {"mb": args.mb, "rounds": args.rounds, "baseline_revision": args.baseline,
                              "crafted": {name: compare(data, len(data) - len(FRAME), baseline, args.rounds)
                                          for name, data in crafted(args.mb).items()}}
    camera, head = camera_jpeg()
    normal = compare(camera, head, baseline, args.rounds)
    decode = alternated({"decode_image": lambda: decode_image(camera)}, args.rounds)["decode_image"]
    result["camera_1080p"] = {**normal, "file_mb": len(camera) / 1e6, "decode_image": decode,
                              "reader_share_of_decode_image": normal["current"]["p50_ms"] / decode["p50_ms"]}
    result["load_avg_1_5_15_before"], result["load_avg_1_5_15_after"] = load_before, os.getloadavg()
    for name, r in {**result["crafted"], "camera_1080p": normal}.items():
        print(f"{name}: {r['current']['mb_per_s']:.1f} MB/s ({r['current']['p50_ms']:.3f} ms), baseline "
              f"{r['baseline']['mb_per_s']:.1f} MB/s ({r['baseline']['p50_ms']:.3f} ms): {r['speedup']:.1f}x")
    print(f"camera_1080p decode_image p50 {decode['p50_ms']:.1f} ms, the reader "
          f"{result['camera_1080p']['reader_share_of_decode_image']:.2%} of it; "
          f"load {load_before} -> {result['load_avg_1_5_15_after']}")
    print(write_result("jpeg_scan_cpu", result))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
