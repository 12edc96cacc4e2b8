"""Time ``rtseg.annotate`` on 1920x1080 frames with 20 and 100 instances (CPU).

Each instance is an elliptical mask inside a random box (40-480 px a side).
Masks are materialised before timing (the overlay's own cost is measured,
not the engine's mask assembly). For comparison the script also times a
naive overlay that blends every instance over the whole frame, the
per-instance-full-frame pattern ``annotate`` avoids.

Usage: python benchmarks/overlay_bench.py [--repeats 30] [--out benchmarks/results/overlay_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, checked, output_file, run_checked  # noqa: E402
from rtseg.ops.overlay import annotate, colors_for  # noqa: E402
from rtseg.types import Detections  # noqa: E402

H, W = 1080, 1920


def make_detections(n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(40, 480, n), rng.uniform(40, 480, n)
    x0, y0 = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.float32)
    masks = np.zeros((n, H, W), bool)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        yy, xx = np.ogrid[b:d, a:c]
        cy, cx, ry, rx = (b + d) / 2, (a + c) / 2, (d - b) / 2, (c - a) / 2
        masks[i, b:d, a:c] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return Detections(
        boxes=boxes,
        scores=np.sort(rng.uniform(0.3, 1.0, n))[::-1].astype(np.float32),
        class_ids=rng.integers(0, 80, n),
        image_size=(H, W),
        class_names=[f"class{i}" for i in range(80)],
        _masks=masks,
    )


def naive_overlay(image: np.ndarray, dets: Detections, alpha: float = 0.45) -> np.ndarray:
    """Reference pattern: one full-frame blend per instance (cost ~ N x frame)."""
    out = image.copy()
    for mask, color in zip(dets.masks, colors_for(dets.class_ids)):
        blended = (out * (1 - alpha) + color * alpha).astype(np.uint8)
        out = np.where(mask[..., None], blended, out)
    return out


def time_ms(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "mean": round(float(np.mean(samples)), 2), "repeats": repeats}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is run (argparse's usage and one error line, exit 2)."""
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=output_file, default=RESULTS / "overlay_cpu.json")
    return checked(parser, parser.parse_args(argv), [("--repeats", 1, None, "")])


def run(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    image = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    results = {}
    for n in (0, 20, 100):
        dets = make_detections(n)
        _ = dets.masks
        hud = {"FPS": 29.7, "latency ms": 41.2}
        row = {"annotate_ms": time_ms(lambda: annotate(image, dets, hud=hud), args.repeats)}
        if n:
            row["naive_full_frame_per_instance_ms"] = time_ms(lambda: naive_overlay(image, dets), 3, 1)
            row["mean_box_area_px"] = int(np.mean((dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])))
        results[f"{n}_instances"] = row
        print(n, "instances:", json.dumps(row))
    report = {
        "benchmark": "overlay (rtseg.annotate) at 1920x1080, masks pre-materialised, labels + boxes + HUD drawn",
        "device": "cpu",
        "cpu": cpu_name(),
        "cpu_count_visible": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
