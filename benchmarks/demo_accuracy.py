"""Accuracy of YOLACT weights on the held-out synthetic test set, and where it is lost.

COCO mask/box AP (the numbers ``rtseg eval --data synthetic:test`` prints), mask AP per
class, and the recall at mask IoU 0.5 by the visible area of the ground-truth objects
(pixels of the 640×480 frames; buckets < 300, 300–1,024, 1,024–3,000, ≥ 3,000) — the
issue's AP50 target is limited by the smallest objects. Writes
``benchmarks/results/demo_accuracy.json`` (the weights' sha256 included).

    python benchmarks/demo_accuracy.py [--weights engines/yolact_demo.safetensors] [--images 300]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rtseg  # noqa: E402
from benchmarks.common import checked, input_file, run_checked, write_result  # noqa: E402
from rtseg.cliargs import TypedFloat  # noqa: E402
from rtseg.data.synthetic import SyntheticDataset  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=input_file, default=str(DEMO))
    ap.add_argument("--images", type=int, default=300, help="first N test images (default: all 300)")
    ap.add_argument("--score-threshold", type=TypedFloat, default=0.05, help="as rtseg eval (default 0.05)")
    ap.add_argument("--name", default="demo_accuracy", help="results file name (default demo_accuracy)")
    return checked(ap, ap.parse_args(argv), [("--images", 1, None, ""), ("--score-threshold", 0, 1, "")])


def run(args: argparse.Namespace) -> dict:
    """The metrics written (weights that do not load: WeightsError, one line)."""
    from rtseg.eval.coco import CocoEvaluator
    from rtseg.eval.runners import class_mapping, remap, samples

    engine = rtseg.load("yolact", weights=str(args.weights), score_threshold=args.score_threshold, top_k=100)
    data = SyntheticDataset.split("test")
    names = data.class_names
    mapping = class_mapping(engine.class_names, names)
    ev = CocoEvaluator(names)
    start = time.perf_counter()
    n = min(args.images, len(data))
    for sample in samples(data, n):
        ev.add(remap(engine(sample.image), mapping, names), sample)
    result = {"weights": args.weights.name, "sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(),
              "data": "synthetic:test", "images": n, "score_threshold": args.score_threshold,
              "metrics": ev.summarize(), **ev.mask_breakdown(), "seconds": round(time.perf_counter() - start, 1)}
    path = write_result(args.name, result)
    m = result["metrics"]
    print(f"mask AP {m['mask_AP']:.3f}  AP50 {m['mask_AP50']:.3f}  box AP {m['box_AP']:.3f}  "
          f"AP50 {m['box_AP50']:.3f}")
    print("mask AP per class: " + ", ".join(f"{k} {v:.2f}" for k, v in result["mask_AP_per_class"].items()))
    print("recall@0.5 by area: " + ", ".join(
        f"[{b['area'][0]:g}, {b['area'][1]:g}) {b['recall']:.2f} ({b['objects']} objects)"
        for b in result["recall50_by_area"]))
    print(f"wrote {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
