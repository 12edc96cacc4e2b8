"""CPU latency of the YOLACT engine per stage (preprocess, network, NMS, masks) at 550.

Random weights with a spread-out class bias so that Fast NMS and mask assembly see a
realistic load (tens of detections). Usage:

    python -m benchmarks.yolact_cpu_stages [--presets yolact_resnet50 yolact_base] [--iters 10]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.common import busy_model, checked, run_checked, summary, time_it, write_result
from rtseg.yolact_spec import PRESET_NAMES


def measure(preset: str, iters: int, frame: np.ndarray) -> dict:
    from rtseg.engines.yolact import YolactEngine

    eng = YolactEngine(model=busy_model(preset), score_threshold=0.0, top_k=100)
    x = eng.preprocess([frame])
    raw = eng.network(x)
    size = [frame.shape[:2]]
    dets = eng.postprocess(eng.detection_head(raw), size)[0]
    make_masks = dets._mask_fn  # (None for a frame without detections; dropped once .masks is read)
    assert make_masks is not None, "the busy model gave no detection"
    stages = {
        "preprocess": time_it(lambda: eng.preprocess([frame]), iters=iters),
        "network": time_it(lambda: eng.network(x), iters=iters),
        "nms": time_it(lambda: eng.postprocess(eng.detection_head(raw), size), iters=iters),
        "masks": time_it(make_masks, iters=iters),  # re-materialises every full-resolution mask
    }
    out = {k: summary(v) for k, v in stages.items()}
    out["detections"] = len(dets)
    out["total_p50_ms"] = sum(out[s]["p50_ms"] for s in ("preprocess", "network", "nms", "masks"))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__)
    ap.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=["yolact_resnet50", "yolact_base"])
    ap.add_argument("--iters", type=int, default=10)
    return checked(ap, ap.parse_args(argv), [("--iters", 1, None, "")])


def run(args: argparse.Namespace) -> None:
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    results = {p: measure(p, args.iters, frame) for p in args.presets}
    for p, r in results.items():
        print(p, {k: round(v["p50_ms"], 1) for k, v in r.items() if isinstance(v, dict)}, "dets", r["detections"])
    print(write_result("yolact_cpu_stages", {"frame": "640x480", "input_size": 550, "results": results,
                                             "load_average_1_5_15": os.getloadavg()}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
