"""The demo (``python run.py`` without arguments).

Runs the shipped model ``engines/yolact_demo.safetensors`` through the full
pipeline on a held-out synthetic clip (``TEST_SEED``: never seen in training),
writes ``out/demo.mp4`` and ``out/demo.jsonl``, and prints per-stage speed and
the clip's COCO mask/box AP against its exact ground truth.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from rtseg.cliargs import Parser, check_ranges
from rtseg.errors import Terminated, WeightsError, exit_status, make_folder, sigterm_raises
from rtseg.outputs import DEMO_WEIGHTS  # (defined without numpy: the trainers' checks of --out use it)
from rtseg.types import Frame, Prediction
from rtseg.userfiles import check_input_file

DEMO_TRAIN_HINT = ("the demo model ships with the source checkout (engines/yolact_demo.safetensors), not with "
                   "an installed package: run from a git clone, pass --weights PATH, or train it with the "
                   "commands in README.md, section 'The demo model'")


class _EvalSink:
    """Feeds each prediction with its frame's ground truth (kept by the synthetic source) to an evaluator."""

    def __init__(self, source, evaluator) -> None:
        self.source, self.evaluator = source, evaluator

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        self.evaluator.add(prediction, self.source.truth(frame.seq))

    def close(self) -> None:
        """Nothing to release."""


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="rtseg demo", description="Segment a held-out synthetic clip with the shipped demo model.")
    p.add_argument("--weights", default=str(DEMO_WEIGHTS), help="demo checkpoint (default: %(default)s)")
    p.add_argument("--frames", type=int, default=120, help="clip length in frames (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--out", default="out", help="output folder (default: %(default)s)")
    return p


def main(argv: Sequence[str]) -> int:
    """``rtseg demo``: :func:`run_demo` with its errors as one line (exit code)."""
    return exit_status("rtseg demo", lambda: run_demo(argv))


def run_demo(argv: Sequence[str]) -> int:
    """Run the demo; returns the exit code (RtsegError for the caller to print).

    Torch is imported once the options are checked (an ``--out`` that is a file among them): a SIGTERM or SIGHUP during
    those seconds is one line and 143 or 129 (:class:`rtseg.errors.Terminated`). The output folder is made once the
    model has loaded, so that weights that fail to load leave no empty folder behind."""
    args = _parser().parse_args(list(argv))
    weights = Path(args.weights)
    if weights == DEMO_WEIGHTS and not weights.exists():
        raise WeightsError(f"demo weights {weights} not found; {DEMO_TRAIN_HINT}")
    check_input_file(f"demo weights {weights}", weights, "pass the path of an existing weights file")
    check_ranges(args, [("--frames", 2, None, "")])
    if os.path.lexists(args.out):  # a file there is refused now (make_folder's line); a folder is taken as it is
        make_folder("--out", args.out)
    with sigterm_raises(Terminated):
        import rtseg
        from rtseg.data.synthetic import CLASSES, TEST_SEED
        from rtseg.eval.coco import CocoEvaluator, format_table
        from rtseg.video.metrics import Metrics
        from rtseg.video.pipeline import Pipeline
        from rtseg.video.sinks import JsonlSink, Mp4Sink
        from rtseg.video.sources import SyntheticSource
    engine = rtseg.load("yolact", weights=str(weights), device=args.device)
    if list(engine.class_names) != list(CLASSES):
        names = list(engine.class_names)
        which = "the synthetic classes in another order" if sorted(names) == sorted(CLASSES) else ", ".join(names)
        raise WeightsError(f"{weights} has the classes {which}; the demo scores the synthetic classes "
                           f"{', '.join(CLASSES)} in this order: pass weights trained with rtseg train --data synthetic")
    out = make_folder("--out", args.out)
    source = SyntheticSource(seed=TEST_SEED, num_frames=args.frames, keep_truth=True)
    evaluator = CocoEvaluator(CLASSES)
    metrics = Metrics()
    sinks = [Mp4Sink(out / "demo.mp4", fps_hint=source.fps), JsonlSink(out / "demo.jsonl"),
             _EvalSink(source, evaluator)]
    print(f"demo: {args.frames} frames of synthetic:{TEST_SEED} ({source.scene.width}x{source.scene.height}) "
          f"through {weights.name} on {engine.device}", file=sys.stderr)
    Pipeline(source=source, engine=engine, sinks=sinks, metrics=metrics,
             progress=sys.stderr.isatty()).run()
    print(metrics.summary())
    print(f"wrote {out / 'demo.mp4'} and {out / 'demo.jsonl'}")
    print("held-out clip accuracy (COCO AP, %):")
    print(format_table(evaluator.summarize()))
    return 0
