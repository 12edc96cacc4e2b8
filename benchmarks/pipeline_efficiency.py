"""Pipeline efficiency: end-to-end FPS of the threaded pipeline versus its slowest stage run alone.

Target: pipeline FPS >= 0.9 x the FPS of the slowest stage measured on its own
(decode, inference, annotate, output), on this CPU machine.

Parts (all real): an H.264 MP4 made with PyAV (decoded by ``FileSource``), a
small random-weight YOLACT (ResNet-18, 256 px input, 1 torch thread so that the
other stages can use the second core), the real overlay, and real MP4 + JSON
Lines sinks.

    python benchmarks/pipeline_efficiency.py [--frames 150]
    # on a GPU, issue 5's 1080p target: R-101@550, compiled, masks blended on the device
    python benchmarks/pipeline_efficiency.py --device cuda --size 1920x1080 --preset yolact_base \
        --backend compile --result pipeline_efficiency_gpu
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    checked,
    device_spec,
    frame_size,
    machine,
    run_checked,
    write_result,
)
from rtseg.cliargs import TypedFloat  # noqa: E402
from rtseg.data.synthetic import SyntheticScene  # noqa: E402
from rtseg.engines import BACKENDS  # noqa: E402
from rtseg.ops.overlay import annotate  # noqa: E402
from rtseg.types import Frame, Prediction  # noqa: E402
from rtseg.video.fanout import SinkWriter  # noqa: E402
from rtseg.video.metrics import Metrics  # noqa: E402
from rtseg.video.sources import open_source  # noqa: E402
from rtseg.yolact_spec import PRESET_NAMES  # noqa: E402

if TYPE_CHECKING:
    from rtseg.engines.yolact import YolactEngine

FPS = 30
WARMUP = 5
"""Frames of each pipeline run not timed (``Metrics(warmup_frames=...)``)."""


def clip_source(clip: Path, decode_threads: int):
    """The clip's FileSource; ``decode_threads`` > 0 sets FFmpeg's decoder thread count (an experiment's knob, set
    on the source's stream before its first decode; 0: FFmpeg's own choice, as rtseg runs)."""
    source = open_source(str(clip))
    if decode_threads:
        source._stream.thread_count = decode_threads
    return source


def stage_with_torch(engine: YolactEngine) -> None:
    """An A/B knob: ``engine`` copies each frame into page-locked memory with torch's ``pin_memory()`` (the upload
    up to run 13, split over torch's OpenMP pool) instead of numpy's one-thread copy."""
    from rtseg.engines.base import host_tensor

    engine._upload = lambda img: host_tensor(img).pin_memory().to(engine.device, non_blocking=True)


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """A synthetic scene encoded as H.264 with PyAV (the source the benchmark decodes)."""
    scene = SyntheticScene(11, width=width, height=height, num_frames=frames)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(scene.frame(i)[0], format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_sinks(folder: Path, tag: str, mp4: dict[str, int]) -> list:
    """The MP4 (``mp4``: Mp4Sink's x264 thread options) and JSON Lines sinks of one run."""
    from rtseg.video.sinks import JsonlSink, Mp4Sink

    return [Mp4Sink(folder / f"{tag}.mp4", fps_hint=FPS, **mp4),
            JsonlSink(folder / f"{tag}.jsonl")]


class SequentialSinks:
    """The sinks written one after the other on one thread: the output stage before ``SinkWriter``
    (a baseline for ``--compare-sinks``)."""

    def __init__(self, sinks: list) -> None:
        self.sinks = sinks

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write(frame, prediction, annotated)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def alone(clip: Path, engine: YolactEngine, folder: Path, mp4: dict[str, int],
          decode_threads: int) -> tuple[dict[str, float], dict[str, float], float]:
    """Mean seconds per frame of each stage run by itself, one stage after the other (output: the
    pipeline's ``SinkWriter``, all sinks at once), and of each sink by itself; mean detections per frame."""
    t = time.perf_counter()
    frames = list(clip_source(clip, decode_threads))
    decode = (time.perf_counter() - t) / len(frames)
    t = time.perf_counter()
    preds = [engine(f.image) for f in frames]
    inference = (time.perf_counter() - t) / len(frames)
    t = time.perf_counter()
    images = [annotate(f.image, p, hud={"FPS": 10.0, "latency ms": 100.0, "dropped": 0}) for f, p in zip(frames, preds)]
    annotation = (time.perf_counter() - t) / len(frames)
    per_sink = {}
    for i, name in enumerate(("mp4", "jsonl")):
        preds = [engine(f.image) for f in frames]  # fresh lazy masks: the sinks pay for materialising them
        sink = make_sinks(folder, f"alone-{name}", mp4)[i]
        t = time.perf_counter()
        for f, p, img in zip(frames, preds, images):
            sink.write(f, p, img)
        sink.close()
        per_sink[name] = (time.perf_counter() - t) / len(frames)
    preds = [engine(f.image) for f in frames]
    sinks = make_sinks(folder, "alone", mp4)
    writer = SinkWriter(sinks, abort=threading.Event())
    t = time.perf_counter()
    for f, p, img in zip(frames, preds, images):
        writer.write(f, p, img)
    writer.close()
    for s in sinks:
        s.close()
    output = (time.perf_counter() - t) / len(frames)
    stages = {"decode": decode, "inference": inference, "annotate": annotation, "output": output}
    return stages, per_sink, float(np.mean([len(p) for p in preds]))


def run_pipeline(clip: Path, engine: YolactEngine, folder: Path, tag: str, *, sequential: bool,
                 switch_ms: float | None, mp4: dict[str, int], decode_threads: int) -> Metrics:
    """One pipeline run over the clip (sinks at once, or one after the other as a single sink), under
    the interpreter's thread switch interval ``switch_ms`` (None: Python's default, 5 ms)."""
    from rtseg.video.pipeline import Pipeline

    sinks = make_sinks(folder, tag, mp4)
    metrics = Metrics(warmup_frames=WARMUP)
    default = sys.getswitchinterval()
    sys.setswitchinterval(default if switch_ms is None else switch_ms / 1e3)
    try:
        Pipeline(source=clip_source(clip, decode_threads), engine=engine, sinks=[SequentialSinks(sinks)] if sequential else sinks,
                 metrics=metrics).run()
    finally:
        sys.setswitchinterval(default)
    return metrics


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", type=frame_size("WxH"), default="640x480", help="WxH of the clip")
    ap.add_argument("--device", type=device_spec, default="cpu")
    ap.add_argument("--preset", default=None, choices=PRESET_NAMES,
                    help="a YOLACT preset (e.g. yolact_base); default: ResNet-18 at 256")
    ap.add_argument("--backend", default="eager", choices=BACKENDS)
    ap.add_argument("--result", default="pipeline_efficiency", help="results/<name>.json")
    ap.add_argument("--score-threshold", type=TypedFloat, default=0.3,
                    help="detections kept (random weights score low: 0.3 leaves next to none, 0 keeps top_k)")
    ap.add_argument("--mp4-frame-threads", type=int, default=0,
                    help="Mp4Sink(frame_threads=N) everywhere in this run (0: x264 zerolatency, the default)")
    ap.add_argument("--mp4-slice-threads", type=int, default=0,
                    help="Mp4Sink(slice_threads=N): x264 zerolatency with N sliced threads (0: one per core)")
    ap.add_argument("--decode-threads", type=int, default=0,
                    help="FFmpeg decoder threads everywhere in this run (0: FFmpeg's choice, one per core)")
    ap.add_argument("--cv2-threads", type=int, default=None,
                    help="cv2.setNumThreads(N) for this run (0: no threads of OpenCV's; default: OpenCV's, one per "
                         "core)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads(N) for this run (0: torch's default, one per core; 1 on the CPU)")
    ap.add_argument("--stage-with-torch", action="store_true",
                    help="CUDA: copy frames into page-locked memory with torch's pin_memory() (the upload up to "
                         "run 13) instead of numpy's copy")
    ap.add_argument("--compare-sinks", action="store_true",
                    help="also run with the sinks written one after the other (the output stage before SinkWriter)")
    ap.add_argument("--switch-ms", type=TypedFloat, nargs="+", default=[],
                    help="also run under these interpreter thread switch intervals (ms; Python's default is 5)")
    args = checked(ap, ap.parse_args(argv), [
        ("--frames", WARMUP + 2, None, f" (the first {WARMUP} are not timed; the FPS needs 2 more)"),
        ("--score-threshold", 0, 1, ""), ("--switch-ms", 0.001, None, " (the interpreter counts microseconds)"),
        *((option, 0, 1024, "") for option in ("--mp4-frame-threads", "--mp4-slice-threads", "--decode-threads",
                                                "--cv2-threads", "--torch-threads"))])
    if any(side % 2 for side in args.size):
        ap.error(f"--size {args.size[0]}x{args.size[1]}: libx264 encodes 4:2:0 frames of even sides only; give e.g. "
                 "640x480")
    if args.mp4_frame_threads and args.mp4_slice_threads:
        ap.error("give --mp4-frame-threads or --mp4-slice-threads, not both")
    if args.stage_with_torch and not args.device.startswith("cuda"):
        ap.error("--stage-with-torch compares page-locked uploads: give --device cuda")
    return args


def run(args: argparse.Namespace) -> int:
    """The benchmark: 0 when the pipeline reaches the target ratio, 1 when not."""
    import torch

    from rtseg.engines.yolact import YolactEngine
    from rtseg.models.yolact import PRESETS, YolactConfig

    width, height = args.size
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    if args.torch_threads or args.device == "cpu":
        torch.set_num_threads(args.torch_threads or 1)  # CPU: leave the second core to the other stages
    torch.manual_seed(0)
    cfg = (PRESETS[args.preset] if args.preset else
           YolactConfig(backbone="resnet18", num_classes=6, input_size=256, fpn_channels=64, num_prototypes=16))
    engine = YolactEngine.from_config(cfg, score_threshold=args.score_threshold, top_k=10, device=args.device,
                                      backend=args.backend)
    if args.stage_with_torch:
        stage_with_torch(engine)
    engine.warmup()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = folder / "clip.mp4"
        make_clip(clip, args.frames, width, height)
        mp4 = {"frame_threads": args.mp4_frame_threads, "slice_threads": args.mp4_slice_threads}
        stages, per_sink, detections = alone(clip, engine, folder, mp4, args.decode_threads)
        metrics = run_pipeline(clip, engine, folder, "pipe", sequential=False, switch_ms=None, mp4=mp4,
                               decode_threads=args.decode_threads)
        variants = [(f"sinks {'one after the other' if seq else 'at once'}, switch interval "
                     f"{'default' if ms is None else f'{ms:g} ms'}",
                     run_pipeline(clip, engine, folder, f"pipe{i}", sequential=seq, switch_ms=ms,
                                  mp4=mp4, decode_threads=args.decode_threads).snapshot())
                    for i, (seq, ms) in enumerate([(True, None)] * args.compare_sinks
                                                  + [(False, ms) for ms in args.switch_ms])]
    snap = metrics.snapshot()
    slowest = max(stages, key=stages.get)
    slowest_fps = 1.0 / stages[slowest]
    ratio = snap["fps"] / slowest_fps
    result = {
        "what": "threaded pipeline FPS vs slowest stage alone (file source, no drops)",
        "frame": f"{width}x{height}", "frames": args.frames, "av": av.__version__,
        "engine": f"YOLACT {cfg.backbone}, input {cfg.input_size}, random weights, "
                  f"score>{args.score_threshold:g}, top_k 10, "
                  f"device {args.device}, backend {args.backend}, device overlay {engine.device_overlay}",
        "sinks": f"Mp4Sink (libx264 veryfast, frame_threads {args.mp4_frame_threads}, slice_threads "
                 f"{args.mp4_slice_threads}) + JsonlSink (RLE masks)",
        "threads": {"decode": args.decode_threads or "FFmpeg's", "cv2": cv2.getNumThreads(),
                    "torch": torch.get_num_threads()},
        "upload_staging": "torch pin_memory()" if args.stage_with_torch else "numpy copy",
        "stage_alone_ms": {k: 1e3 * v for k, v in stages.items()},
        "sink_alone_ms": {k: 1e3 * v for k, v in per_sink.items()}, "detections_per_frame": detections,
        "slowest_stage": slowest, "slowest_stage_fps": slowest_fps,
        "pipeline_fps": snap["fps"], "pipeline_latency_ms": snap["latency_ms"], "dropped": snap["dropped"],
        "ratio": ratio, "target_ratio": 0.9, "pass": bool(ratio >= 0.9),
        "load_average_1_5_15": os.getloadavg(),  # other work on this shared machine during the run
        "variants": {name: {"pipeline_fps": v["fps"], "ratio": v["fps"] / slowest_fps,
                            "stage_p50_ms": {k: q["p50"] for k, q in v["latency_ms"].items()}}
                     for name, v in variants},
    }
    path = write_result(args.result, result)
    print(metrics.summary())
    print("stages alone (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in stages.items())
          + "; sinks alone: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in per_sink.items()))
    for name, v in result["variants"].items():
        print(f"variant {name}: {v['pipeline_fps']:.2f} FPS, ratio {v['ratio']:.3f}")
    print(f"pipeline {snap['fps']:.2f} FPS vs slowest stage ({slowest}) {slowest_fps:.2f} FPS: "
          f"ratio {ratio:.3f} (target >= 0.9) -> {path}")
    print(machine())
    return 0 if ratio >= 0.9 else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
