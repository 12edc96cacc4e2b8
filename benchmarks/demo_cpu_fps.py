"""End-to-end FPS of the shipped demo model on this CPU: eager PyTorch vs ONNX Runtime.

The real threaded pipeline (synthetic 640×480 source → YOLACT → overlay → a sink
that keeps nothing) runs the shipped ``engines/yolact_demo.safetensors`` once per
backend; FPS is (n − 1)/Δt over the frames after warm-up, latencies are p50/p95
per stage. A backend that cannot run here (e.g. ONNX without onnxruntime) is
reported as skipped with the reason. Target: >= 10 FPS on the 2-core CPU.

    python benchmarks/demo_cpu_fps.py [--frames 120] [--threads 2] [--weights PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rtseg  # noqa: E402
from benchmarks.common import THREADS, checked, input_file, run_checked, write_result  # noqa: E402
from rtseg.errors import ConfigError  # noqa: E402
from rtseg.types import Frame, Prediction  # noqa: E402
from rtseg.video.metrics import Metrics  # noqa: E402
from rtseg.video.sources import open_source  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors"
TARGET_FPS = 10.0
WARMUP = 5
"""Frames of each run not timed (``Metrics(warmup_frames=...)``)."""


class NullSink:
    """Counts frames and drops them (the output cost is not part of this benchmark)."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


def run_backend(weights: Path, backend: str, frames: int) -> dict:
    """Pipeline figures of one backend, or {"skipped": reason}."""
    from rtseg.video.pipeline import Pipeline

    try:
        engine = rtseg.load("yolact", weights=str(weights), device="cpu", backend=backend)
    except ConfigError as e:
        return {"skipped": str(e)}
    engine.warmup()
    metrics = Metrics(warmup_frames=WARMUP)
    source = open_source("synthetic:3", synthetic={"width": 640, "height": 480, "num_frames": frames})
    Pipeline(source=source, engine=engine, sinks=[NullSink()], metrics=metrics).run()
    snap = metrics.snapshot()
    return {"fps": snap["fps"], "latency_ms": snap["latency_ms"], "frames": snap["frames"],
            "input_size": engine.cfg.input_size}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=input_file, default=str(DEMO))
    return checked(ap, ap.parse_args(argv), [
        ("--frames", WARMUP + 2, None, f" (the first {WARMUP} are not timed; the FPS needs 2 more)"), THREADS])


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    results = {b: run_backend(args.weights, b, args.frames) for b in ("eager", "onnx")}
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
        else:
            e2e = r["latency_ms"].get("end_to_end", {})
            print(f"{name}: {r['fps']:.1f} FPS, end-to-end latency p50 {e2e.get('p50', float('nan')):.0f} ms "
                  f"(target >= {TARGET_FPS:.0f} FPS)")
    path = write_result("demo_cpu_fps", {
        "what": "threaded pipeline, synthetic 640x480 source, shipped demo model, overlay, null sink",
        "weights": args.weights.name, "threads": args.threads, "target_fps": TARGET_FPS, "results": results,
        "note": "the 2 cores are shared with other jobs while this runs; numbers are lower bounds",
    })
    print(path)


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
