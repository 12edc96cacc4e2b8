"""``python run.py`` / ``python -m rtseg`` / ``rtseg``: segment a video source into outputs.

    rtseg --source rtsp://cam/stream --weights engines/yolact_demo.safetensors --serve 127.0.0.1:8080
    rtseg --source clip.mp4 --weights W --output out.mp4 --json dets.jsonl
    rtseg --source photo.jpg --weights W --output out.png --json dets.json
    rtseg train ...   /   rtseg eval ...   (see their --help)
    rtseg             (no arguments: the demo on a held-out synthetic clip)

A user error (bad option, missing file, unreachable host, port in use ...) prints
one line ``rtseg: error: ...`` on stderr and exits with 2; no traceback.

No torch at this module's top: ``--help`` and a bad option answer at once, without the seconds of importing it;
:func:`run` imports it when it needs it.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from rtseg.engines import BACKENDS, ENGINE_NAMES, INSTANCE_ENGINES
from rtseg.engines.calibration import PRECISIONS, calibration_files
from rtseg.engines.choose import (
    check_engine_options,
    check_weights_file,
    default_weights,
    load_panoptic_engine,
    load_weights_engine,
    resolve_engine,
)
from rtseg.cliargs import SUBCOMMANDS, Once, Parser, TypedFloat, check_ranges, plain_floats
from rtseg.errors import ConfigError, RtsegError, RtsegWarning, Terminated, exit_status, one_line, sigterm_raises
from rtseg.outputs import check_outputs_are_not_inputs, names_frames, weights_paths
from rtseg.video.metrics import Metrics
from rtseg.video.sources import IMAGE_SUFFIXES, Source, open_source, source_path

if TYPE_CHECKING:
    from rtseg.engines.base import Engine
    from rtseg.video.sinks import Sink

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})
NO_OUTPUT = "no output: the frames are segmented and dropped; add --output, --json, --show, --serve or --push"
"""The warning of a run given none of the output options (only its summary would be printed)."""


def build_parser() -> Parser:
    p = Parser(prog="rtseg", description="Real-time video segmentation: source -> engine -> outputs. "
                "Run without arguments for the demo; 'train', 'eval' and 'demo' are subcommands.")
    src = p.add_argument_group("source")
    src.add_argument("--source", type=source_path, help="camera index or /dev/videoN, rtsp:// rtmp:// http(s):// "
                     "URL, video file, image, folder, quoted glob, 'synthetic[:SEED]', or - for a video piped to "
                     "standard input")
    src.add_argument("--vid-stride", type=int, default=1, metavar="K", help="keep every K-th frame (files, folders, synthetic; default 1)")
    src.add_argument("--start", type=TypedFloat, default=0.0, metavar="S", help="start at S seconds (video files)")
    src.add_argument("--end", type=TypedFloat, default=None, metavar="S", help="stop at S seconds (video files)")
    src.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames were written")
    src.add_argument("--reconnect-timeout", type=TypedFloat, default=60.0, metavar="S",
                     help="streams, pipes and --push: seconds a lost stream, a silent pipe or a push server may "
                          "stay down before the run ends (default 60; 0: end at the first loss; a pipe: after 5 s)")
    src.add_argument("--realtime", action="store_true", help="replay a file/folder/synthetic source at its "
                     "frame rate as a live source (frames are dropped when the engine is slower)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                     help="segmenter (default: the one the --weights manifest names; yolact)")
    eng.add_argument("--weights", help="official YOLACT .pth, rtseg .safetensors of any engine, a YOLACT training "
                     "run's checkpoint.pth, or torchvision:fcn_resnet50|fcn_resnet101; for panoptic the instance "
                     "(yolact/msrcnn) weights (default for yolact and panoptic: the shipped demo model, "
                     "engines/yolact_demo.safetensors, 6 synthetic shape classes)")
    eng.add_argument("--semantic", metavar="FCN_WEIGHTS", help="panoptic: the FCN weights of the stuff classes")
    eng.add_argument("--class-names", metavar="FILE",
                     help="yolact / msrcnn / fcn: the model's class names, one per line (weights that carry none: an "
                          "official YOLACT .pth of other than COCO's 80 classes is named class0, class1 …)")
    eng.add_argument("--score-threshold", type=TypedFloat, default=None, metavar="T",
                     help="drop detections scoring at or below T (default: yolact 0.15, msrcnn 0.05, panoptic 0.3)")
    eng.add_argument("--top-k", type=int, default=None, metavar="K",
                     help="at most K detections per frame, best first (yolact, msrcnn; default 100)")
    eng.add_argument("--segments", type=int, default=None, metavar="N",
                     help="slic: about how many superpixels per frame (default 200)")
    eng.add_argument("--compactness", type=TypedFloat, default=None, metavar="C",
                     help="slic: weight of closeness against colour (default 10; higher: more regular superpixels)")
    eng.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    eng.add_argument("--backend", default="eager", choices=BACKENDS,
                     help="YOLACT network backend: eager, compile, tensorrt, onnx or auto (default: eager)")
    eng.add_argument("--precision", default=None, choices=PRECISIONS,
                     help="TensorRT precision (default fp16); int8 needs --calib")
    eng.add_argument("--calib", metavar="DIR", help="folder of frames for TensorRT INT8 calibration")
    out = p.add_argument_group("outputs")
    out.add_argument("--output", action=Once, metavar="PATH", help="annotated video (.mp4/.mov) or image (.png/.jpg; "
                     "'{seq:05d}' in the name writes one image per frame)")
    out.add_argument("--audio", action="store_true", help="copy the source file's audio track into the --output "
                     "video (kept in sync; transcoded to AAC when MP4 cannot hold it or it starts after the first "
                     "frame)")
    out.add_argument("--json", action=Once, metavar="PATH",
                     help="detections: .jsonl (one line per frame; '-' for stdout) "
                     "or .json (COCO results list with RLE masks, written frame by frame to X.partial.json, "
                     "renamed at the end)")
    out.add_argument("--show", action="store_true", help="show an OpenCV window (q or Esc stops)")
    out.add_argument("--serve", action=Once, metavar="HOST:PORT", help="live web page, e.g. 127.0.0.1:8080")
    out.add_argument("--serve-token", metavar="T", help="secret required by the web page (needed off loopback)")
    out.add_argument("--push", action=Once, metavar="URL",
                     help="publish the annotated video to rtsp:// or rtmp:// (reconnects after an outage: "
                     "see --reconnect-timeout)")
    out.add_argument("--no-hud", action="store_true", help="do not draw FPS / latency / drops on the frames")
    out.add_argument("--no-progress", action="store_true", help="no progress bar for file sources")
    return p


def _video_or_image_sink(path: str, fps: float | None, frames: int | None, audio_from: str | None = None) -> Sink:
    """The --output sink: a video file, or an image (one per frame with a ``{seq}`` pattern; else one file, which
    keeps the last of ``frames`` (None: unknown or endless), said in a warning when that is more than one)."""
    from rtseg.video.sinks import ImageSink, Mp4Sink

    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return Mp4Sink(path, fps_hint=fps, audio_from=audio_from)
    if audio_from is not None:
        raise ConfigError(f"--audio needs a video --output (.mp4/.mov), not {path}")
    sink = ImageSink(path)  # (its type checked by _check_output_name)
    if not sink.per_frame and (frames is None or frames > 1):
        warnings.warn(f"--output {path} is one image, so it keeps only the last frame of this source; to keep "
                      "each, name one file per frame, e.g. --output 'out/{seq:05d}.png'", RtsegWarning,
                      stacklevel=2)
    return sink


def _check_output_name(path: str) -> None:
    """ConfigError unless ``path`` names a video (:data:`VIDEO_SUFFIXES`, one file: no ``{seq}``) or an image
    (:data:`IMAGE_SUFFIXES`) file. A name that is no file is said as what it is: a folder (existing, or written
    with a trailing ``/``), standard output (``-``), or, of a name of neither type, a descriptor (``/dev/stdout``),
    FIFO or device (:func:`rtseg.video.outfiles.output_target`). A video named as rtseg names one while it is written
    (``k9.partial.mp4``) is refused: it would replace an interrupted run's recording of ``k9.mp4``."""
    from rtseg.video.outfiles import output_target, refuse_partial_name  # (light: no PyAV)

    if path.endswith("/") or os.path.isdir(path):  # (isdir: False for a name too long to look up)
        folder = Path(path.rstrip("/") or "/")
        said = "is a folder" if os.path.isdir(path) else "names a folder (it ends with /)"
        raise ConfigError(f"--output {path}: {said}; give a file name such as {folder / 'run.mp4'} or an image "
                          f"pattern '{folder / '{seq:05d}.png'}'")
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES and names_frames(path):
        raise ConfigError(f"--output {path}: {{seq}} names one image per frame, but a video is one file; drop "
                          f"{{seq}} from the name, or write images (e.g. --output 'out/{{seq:05d}}.png')")
    if suffix in VIDEO_SUFFIXES:
        refuse_partial_name(Path(path), "--output")
    if suffix in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
        return
    to_file = "give a file name such as out.mp4 (--json - writes the detections to standard output)"
    if path == "-":
        raise ConfigError(f"--output -: the annotated frames cannot go to standard output; {to_file}")
    if os.path.lexists(path):  # /dev/stdout, a FIFO, a device: said as such
        output_target(Path(path), "--output", to_file)
    raise ConfigError(f"--output {path}: unknown type {suffix or '(none)'}; use "
                      f"{'/'.join(sorted(VIDEO_SUFFIXES))} for video or {'/'.join(sorted(IMAGE_SUFFIXES))} for "
                      f"images")


def _json_sink(path: str) -> Sink:
    from rtseg.video.coco_json import CocoJsonSink
    from rtseg.video.sinks import JsonlSink

    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl" or path == JsonlSink.STDOUT:
        return JsonlSink(path, on_event=_warn)
    if suffix == ".json":
        return CocoJsonSink(path)
    raise ConfigError(f"--json {path}: use a .jsonl (one record per frame) or .json (COCO results) file, "
                      "or - for JSON lines on stdout")


def _warn(line: str) -> None:
    """What the source or the push output goes through (a stalled pipe, a lost stream, reconnecting, back), at once
    on stderr as ``rtseg: warning: …``."""
    print(f"rtseg: warning: {one_line(line)}", file=sys.stderr, flush=True)


def open_sinks(args: argparse.Namespace, source: Source, metrics: Metrics, stack: contextlib.ExitStack) -> list[Sink]:
    """Every output the options ask for, opened now so that a bad path or busy port fails early.

    Each opened sink is registered on ``stack`` so that it is closed if a later one fails.
    """
    factories: list[Callable[[], Sink]] = []
    if args.audio and not (args.output and Path(args.source).is_file()):
        raise ConfigError("--audio copies a video file's sound into --output: give a file --source and --output x.mp4")
    if args.output:
        audio_from = args.source if args.audio else None
        frames = min((n for n in (source.num_frames, args.max_frames) if n is not None), default=None)
        factories.append(lambda: _video_or_image_sink(args.output, source.fps, frames, audio_from))
    if args.json:
        factories.append(lambda: _json_sink(args.json))
    if args.show:
        from rtseg.video.sinks import WindowSink

        factories.append(WindowSink)
    if args.serve:
        from rtseg.serve.server import WebSink, parse_address

        host, port = parse_address(args.serve)

        def web() -> Sink:
            sink = WebSink(host, port, token=args.serve_token, stats_fn=metrics.snapshot)
            print(f"rtseg: serving {sink.url}", file=sys.stderr)
            return sink

        factories.append(web)
    if args.push:
        from rtseg.video.sinks import PushSink

        def push() -> Sink:
            sink = PushSink(args.push, fps_hint=source.fps, reconnect_timeout=args.reconnect_timeout)
            sink.on_event = _warn  # outage lines like a lost source's
            return sink

        factories.append(push)
    sinks = []
    for make in factories:
        sink = make()
        stack.callback(getattr(sink, "discard", sink.close))  # until the pipeline runs: a failure before it
        sinks.append(sink)
    return sinks


def engine_name(args: argparse.Namespace) -> str:
    """The engine the run uses: ``--engine``, else the one the ``--weights`` manifest names (yolact)."""
    return resolve_engine(args.weights, args.engine)


def _load_engine(args: argparse.Namespace, name: str) -> Engine:
    options = {k: v for k, v in (("score_threshold", args.score_threshold), ("top_k", args.top_k)) if v is not None}
    options.update({k: v for k, v in (("n_segments", args.segments), ("compactness", args.compactness)) if v is not None})
    if args.backend != "eager":
        options["backend"] = args.backend
    if args.precision is not None or args.calib is not None:
        options.update(precision=args.precision or "fp16", calibration_dir=args.calib)
    if name == "panoptic":
        return load_panoptic_engine(default_weights(args.weights, name), args.semantic, device=args.device, **options)
    return load_weights_engine(name, default_weights(args.weights, name), device=args.device,
                               class_names_file=args.class_names, **options)


def _check_engine_options(args: argparse.Namespace, name: str) -> None:
    """Options that do not apply to engine ``name`` (or to each other) are refused before anything loads."""
    check_engine_options(name, weights=args.weights, semantic=args.semantic, score_threshold=args.score_threshold,
                         top_k=args.top_k, segments=args.segments, compactness=args.compactness,
                         class_names=args.class_names)
    if args.backend != "eager" and name != "yolact":
        instances = resolve_engine(args.weights, None) if name == "panoptic" else None  # (None: the yolact demo)
        if instances != "yolact":
            raise ConfigError(f"--backend {args.backend} applies to the yolact engine and to panoptic with yolact "
                              f"--weights only{f' (--weights holds {instances} weights)' if instances else ''}")
    if (args.precision is not None or args.calib is not None) and args.backend != "tensorrt":
        raise ConfigError("--precision / --calib apply to --backend tensorrt only")
    if args.calib is not None and args.precision != "int8":
        raise ConfigError("--calib is the INT8 calibration folder: add --precision int8")
    if args.precision == "int8":
        if args.calib is None:
            raise ConfigError("--precision int8 needs --calib DIR, a folder of frames like the ones to segment")
        calibration_files(args.calib)
    if args.json and Path(args.json).suffix.lower() == ".json" and name not in INSTANCE_ENGINES:
        raise ConfigError(f"--json {args.json}: a COCO results file holds instance detections, which {name} does "
                          "not make; use a .jsonl file (one record per frame)")


def _check_args(args: argparse.Namespace) -> None:
    """Cheap checks first, so that a typo is reported before anything slow happens."""
    if args.source is None:
        raise ConfigError("--source is required (run without arguments for the demo)")
    check_weights_file("--weights", args.weights, torchvision=True)
    check_weights_file("--semantic", args.semantic)
    check_ranges(args, [("--vid-stride", 1, None, ""), ("--max-frames", 1, None, ""),
                        ("--start", 0, None, " seconds"), ("--end", 0, None, " seconds"),
                        ("--reconnect-timeout", 0, None, " seconds")])
    if args.end is not None and not args.end > args.start:
        raise ConfigError(f"--end {args.end}: must be after --start ({args.start} seconds); give a later --end "
                          "or an earlier --start")
    if args.serve_token and not args.serve:
        raise ConfigError("--serve-token needs --serve HOST:PORT")
    # outputs over what the run reads: --weights, --semantic, --calib (read with --backend tensorrt --precision int8
    # only, else refused by _check_engine_options); never the shipped demo model, whatever the run reads
    calib = [args.calib] if args.calib and args.backend == "tensorrt" and args.precision == "int8" else []
    names = [args.class_names] if args.class_names is not None else []
    check_outputs_are_not_inputs(_outputs(args), [*weights_paths(args.weights, args.semantic), *calib, *names])
    if args.output is not None:
        _check_output_name(args.output)


def _outputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files a run writes, as ``(option, path)`` for :func:`check_outputs_are_not_inputs`."""
    return [("--output", args.output), ("--json", args.json)]


def _with_kept_recordings(exc: RtsegError, sinks: list[Sink], frames: int) -> RtsegError:
    """``exc`` with its line extended by the files a failed run kept and how many frames each holds: finished
    outputs, and the ``.partial`` file of an output whose own write failed (not one without a frame, nor a file
    the line already names). A sink's count is its ``frames_written`` where it keeps one, else ``frames`` (the
    frames the run wrote to all sinks): the sinks write each frame concurrently, so another sink may hold the frame
    at which one failed (``the 45 frames ... in a.jsonl`` of 46 lines)."""
    kept: list[tuple[str, int]] = []
    for s in sinks:
        for f in (getattr(s, "partial", None), getattr(s, "path", None)):
            if isinstance(f, Path) and f.exists():
                kept.append((str(f), getattr(s, "frames_written", frames)))
                break
    kept = [(f, n) for f, n in kept if f not in str(exc) and n > 0]
    if not kept:
        return exc
    if len({n for _, n in kept}) == 1:
        n = kept[0][1]
        said = "the frame written before it is" if n == 1 else f"the {n} frames written before it are"
        return type(exc)(f"{exc}; {said} kept in {', '.join(f for f, _ in kept)}")
    counted = ", ".join(f"{f} ({n} frame{'s' * (n != 1)})" for f, n in kept)
    return type(exc)(f"{exc}; the frames written before it are kept in {counted}")


def run(args: argparse.Namespace) -> int:
    """Segment ``args.source`` into the requested outputs; print the metrics summary.

    The checks of the options (torch-free, the weights' manifests read by :mod:`rtseg.manifest`), the opening of
    the source (which may wait for a server or a FIFO's writer), the import of the pipeline (torch) and the
    loading of the engine run with SIGTERM raising :class:`rtseg.errors.Terminated`: a SIGTERM during those seconds
    is one line and 143 (the outputs opened by then are closed, nothing in them), as it was while the entry point
    imported this module; the pipeline handles it from its start."""
    with sigterm_raises(Terminated):
        _check_args(args)
        name = engine_name(args)
        _check_engine_options(args, name)
        plain_floats(args)
    with contextlib.ExitStack() as stack:
        # until the pipeline runs (its own handler); opening may wait (a stream's server, a FIFO's first writer);
        # outputs opened by then close unwritten
        with sigterm_raises(Terminated):
            source = open_source(args.source, vid_stride=args.vid_stride, start=args.start, end=args.end,
                                 realtime=args.realtime, reconnect_timeout=args.reconnect_timeout, on_event=_warn)
            stack.callback(source.close)
            # ... and the source: a file, or every image of a folder or glob (--vid-stride or not; not its other files)
            check_outputs_are_not_inputs(_outputs(args), [str(p) for p in getattr(source, "files", [args.source])])
            from rtseg.video.coco_json import CocoJsonSink
            from rtseg.video.pipeline import Pipeline

            expected = [n for n in (source.num_frames, args.max_frames) if n is not None]
            short = bool(expected) and min(expected) <= 20  # too few frames to leave 5 untimed
            metrics = Metrics(warmup_frames=0 if short else 5)
            sinks = open_sinks(args, source, metrics, stack)
            engine = _load_engine(args, name)
            for sink in sinks:  # COCO results use the category ids the weights were trained with, if they name them
                if isinstance(sink, CocoJsonSink):
                    sink.category_ids = getattr(engine, "category_ids", None)
            if args.backend == "auto":
                print(f"rtseg: --backend auto chose {engine.backend.name}", file=sys.stderr)
            if not sinks:  # (said once the run is set to go: an option or source error is one line alone)
                warnings.warn(NO_OUTPUT, RtsegWarning)
            pipeline = Pipeline(source=source, engine=engine, sinks=sinks, metrics=metrics,
                                max_frames=args.max_frames,
                                progress=not (source.is_live or args.no_progress) and sys.stderr.isatty(),
                                show_hud=not args.no_hud)
        stack.pop_all()  # the pipeline closes the source and the sinks from here on
        try:
            pipeline.run()
        except RtsegError as exc:
            raise _with_kept_recordings(exc, sinks, metrics.frames) from None
    print(metrics.summary(), file=sys.stderr if args.json == "-" else sys.stdout)  # stdout: the JSON lines
    for notice in source.notices:
        print(f"rtseg: warning: {one_line(notice)}", file=sys.stderr)
    if pipeline.interrupted:
        print(f"rtseg: stopped by signal after {metrics.frames} frames; outputs are closed", file=sys.stderr)
    for reason in filter(None, (getattr(sink, "stop_reason", None) for sink in sinks)):
        print(f"rtseg: {reason}: the run stopped after {metrics.frames} frames; outputs are closed", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code (0 ok, 2 user error, 130 second Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    if not argv:
        from rtseg.demo import run_demo

        return exit_status("rtseg", lambda: run_demo([]))
    return exit_status("rtseg", lambda: run(parse_args(argv)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options of a run (:func:`build_parser`). A first word that is no option and close to a subcommand's
    name (``rtseg evl``; a subcommand is the first word, and a run takes no other bare word) is refused naming that
    subcommand: ``unknown command 'evl'; did you mean 'eval'? (see rtseg --help)``."""
    parser = build_parser()
    if argv and not argv[0].startswith("-"):
        near = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
        if near:
            parser.error(f"unknown command {argv[0]!r}; did you mean {near[0]!r}?")
    return parser.parse_args(argv)
