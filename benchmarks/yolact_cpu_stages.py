"""CPU latency of the YOLACT engine per stage (preprocess, network, NMS, masks) at 550.

Random weights with a spread-out class bias so that Fast NMS and mask assembly see a
realistic load (tens of detections). Usage:

    python -m benchmarks.yolact_cpu_stages [--presets yolact_resnet50 yolact_base] [--iters 10]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.common import busy_model, summary, time_it, write_result
from rtseg.engines.yolact import YolactEngine


def run(preset: str, iters: int, frame: np.ndarray) -> dict:
    eng = YolactEngine(model=busy_model(preset), score_threshold=0.0, top_k=100)
    x = eng.preprocess([frame])
    raw = eng.network(x)
    size = [frame.shape[:2]]
    dets = eng.postprocess(eng.detection_head(raw), size)[0]
    stages = {
        "preprocess": time_it(lambda: eng.preprocess([frame]), iters=iters),
        "network": time_it(lambda: eng.network(x), iters=iters),
        "nms": time_it(lambda: eng.postprocess(eng.detection_head(raw), size), iters=iters),
        "masks": time_it(dets._mask_fn, iters=iters),  # re-materialises every full-resolution mask
    }
    out = {k: summary(v) for k, v in stages.items()}
    out["detections"] = len(dets)
    out["total_p50_ms"] = sum(out[s]["p50_ms"] for s in ("preprocess", "network", "nms", "masks"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["yolact_resnet50", "yolact_base"])
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    results = {p: run(p, args.iters, frame) for p in args.presets}
    for p, r in results.items():
        print(p, {k: round(v["p50_ms"], 1) for k, v in r.items() if isinstance(v, dict)}, "dets", r["detections"])
    print(write_result("yolact_cpu_stages", {"frame": "640x480", "input_size": 550, "results": results,
                                             "load_average_1_5_15": os.getloadavg()}))


if __name__ == "__main__":
    main()
