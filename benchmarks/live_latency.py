"""Live latency: a 30 FPS live source feeding an engine slower than the source, for 10,000 frames.

Target: end-to-end latency (capture -> output written) p99 <= one frame interval
+ engine time (its p99) + 10 ms, with no growth over the run: the median latency
of the last 1,000 frames within 5 ms of the first 1,000 counted ones (a queue
that grows would add a frame interval per queued frame). The p99 of every
1,000-frame window is reported too.

Parts: the synthetic clip paced at 30 FPS as a live source (``Paced``: frames
come on the clock whether or not the consumer keeps up, like a camera); a
*simulated accelerator* engine that waits ``--engine-ms`` (as the CPU waits for
a GPU) and returns empty Detections, so 10,000 frames cost little CPU on a
shared machine; the real overlay (with HUD) and a real JSON Lines sink. The
pipeline drops the oldest frames (counted) so latency stays bounded.

    python benchmarks/live_latency.py [--frames 10000] [--engine-ms 45]
    python benchmarks/live_latency.py --engine yolact   # a real tiny YOLACT on the CPU instead

With ``--engine yolact`` a real (random-weight) YOLACT ResNet-18 at 192 px on one torch
thread does the inference, competing for the CPU with decode, overlay and output.
Results go to ``results/live_latency.json`` (simulated) or ``results/live_latency_yolact.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import checked, run_checked, write_result  # noqa: E402
from rtseg.cliargs import TypedFloat  # noqa: E402
from rtseg.data.synthetic import CLASSES  # noqa: E402
from rtseg.errors import ConfigError  # noqa: E402
from rtseg.types import Detections, Frame  # noqa: E402
from rtseg.video.metrics import Metrics  # noqa: E402
from rtseg.video.sources import Paced, SyntheticSource  # noqa: E402

if TYPE_CHECKING:
    from rtseg.video.sinks import JsonlSink

FPS = 30.0


class SimulatedAcceleratorEngine:
    """Waits ``seconds`` per frame (CPU idle, like waiting on a GPU) and returns no detections."""

    class_names = CLASSES
    device = "simulated"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, image: np.ndarray) -> Detections:
        time.sleep(self.seconds)
        return Detections.empty(image.shape[:2], self.class_names)

    def warmup(self) -> None:
        """Nothing to initialise."""


class LatencySink:
    """Records capture -> written latency of every frame (after the real sink wrote it)."""

    def __init__(self, inner: JsonlSink) -> None:
        self.inner, self.latency, self.seq = inner, [], []

    def write(self, frame: Frame, prediction, annotated) -> None:
        self.inner.write(frame, prediction, annotated)
        self.latency.append(time.monotonic() - frame.capture_time)
        self.seq.append(frame.seq)

    def close(self) -> None:
        self.inner.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--engine-ms", type=TypedFloat, default=45.0)
    ap.add_argument("--engine", choices=("simulated", "yolact"), default="simulated")
    ap.add_argument("--warmup", type=int, default=30, help="frames written first, not counted")
    args = checked(ap, ap.parse_args(argv), [("--frames", 1, None, ""), ("--engine-ms", 0, None, ""),
                                             ("--warmup", 0, None, "")])
    if args.frames <= args.warmup:
        ap.error(f"--frames {args.frames}: must be more than --warmup {args.warmup} (the first --warmup frames "
                 "written are not counted)")
    return args


def run(args: argparse.Namespace) -> int:
    """The benchmark: 0 when it passes, 1 when not; ConfigError when no frame after the warm-up was written
    (then nothing is written to the results)."""
    from rtseg.video.pipeline import Pipeline
    from rtseg.video.sinks import JsonlSink

    if args.engine == "yolact":
        import torch

        from rtseg.engines.yolact import YolactEngine
        from rtseg.models.yolact import YolactConfig

        torch.set_num_threads(1)
        torch.manual_seed(0)
        cfg = YolactConfig(backbone="resnet18", num_classes=len(CLASSES), input_size=192, fpn_channels=64,
                           num_prototypes=16)
        engine = YolactEngine.from_config(cfg, class_names=list(CLASSES), score_threshold=0.0, top_k=10)
        engine_text = "real YOLACT ResNet-18 at 192 px, random weights, 1 torch thread, top 10 detections drawn"
    else:
        engine = SimulatedAcceleratorEngine(args.engine_ms / 1e3)
        engine_text = f"simulated accelerator: sleeps {args.engine_ms:g} ms per frame, returns empty Detections"
    source = Paced(SyntheticSource(seed=5, width=320, height=240, num_frames=args.frames, fps=FPS))
    with tempfile.TemporaryDirectory() as tmp:
        sink = LatencySink(JsonlSink(Path(tmp) / "live.jsonl"))
        metrics = Metrics(warmup_frames=args.warmup)
        t0 = time.monotonic()
        Pipeline(source=source, engine=engine, sinks=[sink],
                 metrics=metrics).run()
        wall = time.monotonic() - t0
    snap = metrics.snapshot()
    lat = np.asarray(sink.latency[args.warmup:]) * 1e3
    if not len(lat) or "inference" not in snap["latency_ms"]:
        raise ConfigError(f"{snap['frames']} frames written ({snap['dropped']} dropped), none after the --warmup "
                          f"{args.warmup}: nothing to measure; give more --frames or a smaller --engine-ms")
    engine_p99 = snap["latency_ms"]["inference"]["p99"]
    bound = 1e3 / FPS + engine_p99 + 10.0
    window = 1000 if len(lat) >= 3000 else max(1, len(lat) // 3)
    starts = range(0, len(lat) - window + 1, window)
    p50s = [float(np.percentile(lat[i:i + window], 50)) for i in starts]
    p99s = [float(np.percentile(lat[i:i + window], 99)) for i in starts]
    p99 = float(np.percentile(lat, 99))
    growth = p50s[-1] - p50s[0]
    ok = p99 <= bound and growth <= 5.0
    result = {
        "what": "live 30 FPS source, engine slower than the source: end-to-end latency bounded, no growth",
        "source": "synthetic 320x240 paced at 30 FPS (Paced(SyntheticSource))",
        "engine": engine_text,
        "sinks": "real overlay with HUD + JsonlSink",
        "frames_from_source": args.frames, "frames_written": snap["frames"], "dropped": snap["dropped"],
        "wall_s": wall, "output_fps": snap["fps"],
        "end_to_end_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                          "p99": p99, "max": float(lat.max())},
        "engine_p99_ms": engine_p99, "bound_ms": bound,
        "per_window_ms": {"window_frames": window, "p50": p50s, "p99": p99s}, "median_growth_ms": growth,
        "stage_latency_ms": snap["latency_ms"], "pass": bool(ok),
        "load_average_1_5_15": os.getloadavg(),  # other work on this shared machine during the run
    }
    path = write_result("live_latency" if args.engine == "simulated" else "live_latency_yolact", result)
    print(metrics.summary())
    print(f"end-to-end p99 {p99:.1f} ms "
          f"(bound {bound:.1f} = {1e3 / FPS:.1f} frame + {engine_p99:.1f} engine p99 + 10); "
          f"median first/last window {p50s[0]:.1f}/{p50s[-1]:.1f} ms; "
          f"{snap['dropped']} of {args.frames} dropped -> {'PASS' if ok else 'FAIL'} ({path})")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
