"""``python run.py`` / ``python -m rtseg`` / ``rtseg``: segment a video source into outputs.

    rtseg --source rtsp://cam/stream --weights engines/yolact_demo.safetensors --serve 127.0.0.1:8080
    rtseg --source clip.mp4 --weights W --output out.mp4 --json dets.jsonl
    rtseg --source photo.jpg --weights W --output out.png --json dets.json
    rtseg train ...   /   rtseg eval ...   (see their --help)
    rtseg             (no arguments: the demo on a held-out synthetic clip)

A user error (bad option, missing file, unreachable host, port in use ...) prints
one line ``rtseg: error: ...`` on stderr and exits with 2; no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

from rtseg.engines.backends import BACKENDS
from rtseg.errors import ConfigError, RtsegError, WeightsError
from rtseg.video.metrics import Metrics
from rtseg.video.pipeline import Pipeline
from rtseg.video.sources import IMAGE_SUFFIXES, Source, open_source

if TYPE_CHECKING:
    from rtseg.video.sinks import Sink

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})
SUBCOMMANDS = ("train", "eval", "demo")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one-line ConfigErrors (exit code 2 via main)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> _Parser:
    p = _Parser(prog="rtseg", description="Real-time video segmentation: source -> engine -> outputs. "
                "Run without arguments for the demo; 'train' and 'eval' are subcommands.")
    src = p.add_argument_group("source")
    src.add_argument("--source", help="camera index or /dev/videoN, rtsp:// rtmp:// http(s):// URL, video file, "
                     "image, folder, quoted glob, or 'synthetic[:SEED]'")
    src.add_argument("--vid-stride", type=int, default=1, metavar="K", help="keep every K-th frame (files)")
    src.add_argument("--start", type=float, default=0.0, metavar="S", help="start at S seconds (video files)")
    src.add_argument("--end", type=float, default=None, metavar="S", help="stop at S seconds (video files)")
    src.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames were written")
    src.add_argument("--reconnect-timeout", type=float, default=60.0, metavar="S",
                     help="streams: seconds a lost stream may stay down before the run ends (default 60; "
                          "0: end at the first loss)")
    src.add_argument("--realtime", action="store_true", help="replay a file/folder/synthetic source at its "
                     "frame rate as a live source (frames are dropped when the engine is slower)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", default="yolact", help="segmenter (default: yolact)")
    eng.add_argument("--weights", help="checkpoint: official YOLACT .pth, rtseg .safetensors or a training run's checkpoint.pth (yolact default: "
                     "the shipped demo model, engines/yolact_demo.safetensors, 6 synthetic shape classes)")
    eng.add_argument("--score-threshold", type=float, default=None, metavar="T")
    eng.add_argument("--top-k", type=int, default=None, metavar="K")
    eng.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    eng.add_argument("--backend", default="eager", choices=BACKENDS,
                     help="YOLACT network backend: eager, compile, tensorrt, onnx or auto (default: eager)")
    eng.add_argument("--precision", default="fp16", choices=("fp16", "int8"),
                     help="TensorRT precision (default fp16); int8 needs --calib")
    eng.add_argument("--calib", metavar="DIR", help="folder of frames for TensorRT INT8 calibration")
    out = p.add_argument_group("outputs")
    out.add_argument("--output", metavar="PATH", help="annotated video (.mp4/.mov) or image (.png/.jpg; "
                     "'{seq:05d}' in the name writes one image per frame)")
    out.add_argument("--audio", action="store_true", help="copy the source file's audio track into the --output "
                     "video (kept in sync; transcoded to AAC when MP4 cannot hold it)")
    out.add_argument("--json", metavar="PATH", help="detections: .jsonl (one line per frame) or .json "
                     "(COCO results list with RLE masks, written at the end)")
    out.add_argument("--show", action="store_true", help="show an OpenCV window (q or Esc stops)")
    out.add_argument("--serve", metavar="HOST:PORT", help="live web page, e.g. 127.0.0.1:8080")
    out.add_argument("--serve-token", metavar="T", help="secret required by the web page (needed off loopback)")
    out.add_argument("--push", metavar="URL", help="publish the annotated video to rtsp:// or rtmp://")
    out.add_argument("--no-hud", action="store_true", help="do not draw FPS / latency / drops on the frames")
    out.add_argument("--no-progress", action="store_true", help="no progress bar for file sources")
    return p


def _host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"--serve {spec}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _video_or_image_sink(path: str, fps: float | None, audio_from: str | None = None) -> Sink:
    from rtseg.video.sinks import ImageSink, Mp4Sink

    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return Mp4Sink(path, fps_hint=fps, audio_from=audio_from)
    if audio_from is not None:
        raise ConfigError(f"--audio needs a video --output (.mp4/.mov), not {path}")
    if suffix in IMAGE_SUFFIXES:
        return ImageSink(path)
    raise ConfigError(f"--output {path}: unknown type {suffix or '(none)'}; use .mp4 for video or .png/.jpg for images")


def _json_sink(path: str) -> Sink:
    from rtseg.video.sinks import JsonlSink

    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return JsonlSink(path)
    if suffix == ".json":
        from rtseg.video.coco_json import CocoJsonSink

        return CocoJsonSink(path)
    raise ConfigError(f"--json {path}: use a .jsonl (one record per frame) or .json (COCO results) file")


def open_sinks(args: argparse.Namespace, source: Source, metrics: Metrics, stack: contextlib.ExitStack) -> list[Sink]:
    """Every output the options ask for, opened now so that a bad path or busy port fails early.

    Each opened sink is registered on ``stack`` so that it is closed if a later one fails.
    """
    factories: list[Callable[[], Sink]] = []
    if args.audio and not (args.output and Path(args.source).is_file()):
        raise ConfigError("--audio copies a video file's sound into --output: give a file --source and --output x.mp4")
    if args.output:
        audio_from = args.source if args.audio else None
        factories.append(lambda: _video_or_image_sink(args.output, source.fps, audio_from))
    if args.json:
        factories.append(lambda: _json_sink(args.json))
    if args.show:
        from rtseg.video.sinks import WindowSink

        factories.append(WindowSink)
    if args.serve:
        from rtseg.serve.server import WebSink

        host, port = _host_port(args.serve)

        def web() -> Sink:
            sink = WebSink(host, port, token=args.serve_token, stats_fn=metrics.snapshot)
            print(f"rtseg: serving {sink.url}", file=sys.stderr)
            return sink

        factories.append(web)
    if args.push:
        from rtseg.video.sinks import PushSink

        factories.append(lambda: PushSink(args.push, fps_hint=source.fps))
    sinks = []
    for make in factories:
        sink = make()
        stack.callback(sink.close)
        sinks.append(sink)
    return sinks


def _load_engine(args: argparse.Namespace):
    import rtseg

    options = {k: v for k, v in (("score_threshold", args.score_threshold), ("top_k", args.top_k)) if v is not None}
    if args.backend != "eager":
        if args.engine != "yolact":
            raise ConfigError(f"--backend {args.backend} applies to the yolact engine only")
        options["backend"] = args.backend
    if args.precision != "fp16" or args.calib is not None:
        if args.backend != "tensorrt":
            raise ConfigError("--precision int8 / --calib apply to --backend tensorrt only")
        options.update(precision=args.precision, calibration_dir=args.calib)
    return rtseg.load(args.engine, weights=_weights(args), device=args.device, **options)


def _weights(args: argparse.Namespace) -> str | None:
    """``--weights``, or for yolact without it the shipped demo model (said on stderr)."""
    if args.weights is not None or args.engine == "slic":
        return args.weights
    if args.engine != "yolact":
        raise ConfigError(f"--engine {args.engine} needs --weights PATH (rtseg .safetensors of that engine)")
    from rtseg.demo import DEMO_WEIGHTS, DEMO_TRAIN_HINT

    if not DEMO_WEIGHTS.is_file():
        raise WeightsError(f"no --weights and no demo model at {DEMO_WEIGHTS}: pass --weights PATH "
                           f"(official YOLACT .pth or rtseg .safetensors) or {DEMO_TRAIN_HINT}")
    print(f"rtseg: no --weights: using the demo model {DEMO_WEIGHTS.name} (synthetic shapes; "
          "pass --weights for your own model)", file=sys.stderr)
    return str(DEMO_WEIGHTS)


def _check_args(args: argparse.Namespace) -> None:
    """Cheap checks first, so that a typo is reported before anything slow happens."""
    if args.source is None:
        raise ConfigError("--source is required (run without arguments for the demo)")
    if args.weights is not None and not Path(args.weights).is_file():
        raise WeightsError(f"--weights {args.weights}: file not found")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    if not args.reconnect_timeout >= 0:  # also NaN
        raise ConfigError(f"--reconnect-timeout must be >= 0 seconds, got {args.reconnect_timeout}")
    if args.serve_token and not args.serve:
        raise ConfigError("--serve-token needs --serve HOST:PORT")


def _with_kept_recordings(exc: RtsegError, sinks: list[Sink], frames: int) -> RtsegError:
    """``exc`` with its line extended by the files a failed run kept: finished outputs, and the
    ``.partial`` file of an output whose own write failed."""
    kept = []
    for s in sinks:
        for f in (getattr(s, "partial", None), getattr(s, "path", None)):
            if isinstance(f, Path) and f.exists():
                kept.append(str(f))
                break
    if not kept:
        return exc
    return type(exc)(f"{exc}; the {frames} frames written before it are kept in {', '.join(kept)}")


def run(args: argparse.Namespace) -> int:
    """Segment ``args.source`` into the requested outputs; print the metrics summary."""
    _check_args(args)
    with contextlib.ExitStack() as stack:
        source = open_source(args.source, vid_stride=args.vid_stride, start=args.start, end=args.end,
                             realtime=args.realtime, reconnect_timeout=args.reconnect_timeout)
        stack.callback(source.close)
        source.on_event = lambda line: print(f"rtseg: warning: {line}", file=sys.stderr, flush=True)
        short = source.num_frames is not None and source.num_frames <= 20
        metrics = Metrics(warmup_frames=0 if short else 5)
        sinks = open_sinks(args, source, metrics, stack)
        engine = _load_engine(args)
        pipeline = Pipeline(source=source, engine=engine, sinks=sinks, metrics=metrics, max_frames=args.max_frames,
                            progress=not (source.is_live or args.no_progress) and sys.stderr.isatty(),
                            show_hud=not args.no_hud)
        stack.pop_all()  # the pipeline closes the source and the sinks from here on
        try:
            pipeline.run()
        except RtsegError as exc:
            raise _with_kept_recordings(exc, sinks, metrics.frames) from None
    print(metrics.summary())
    for notice in source.notices:
        print(f"rtseg: warning: {notice}", file=sys.stderr)
    if pipeline.interrupted:
        print(f"rtseg: stopped by signal after {metrics.frames} frames; outputs are closed", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code (0 ok, 2 user error, 130 second Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv[0], argv[1:])
        if not argv:
            from rtseg.demo import run_demo

            return run_demo([])
        return run(build_parser().parse_args(argv))
    except RtsegError as exc:
        print(f"rtseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtseg: interrupted", file=sys.stderr)
        return 130


def _subcommand(name: str, argv: list[str]) -> int:
    if name == "train":
        from rtseg.train.cli import main as sub
    elif name == "eval":
        from rtseg.eval.cli import main as sub
    else:
        from rtseg.demo import run_demo as sub
    return sub(argv)
