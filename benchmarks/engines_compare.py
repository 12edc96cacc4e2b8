"""YOLACT vs Mask Scoring R-CNN vs FCN vs panoptic fusion vs SLIC on one synthetic clip (CPU).

For every engine: milliseconds per stage (preprocess / network / postprocess, p50
over the clip after warm-up) and end-to-end FPS ((n-1)/Δt over the clip), plus
its quality on the clip's ground truth: mask AP (instance engines; MS R-CNN
ranked by classification score and by mask score), mIoU / pixel accuracy (FCN),
PQ / SQ / RQ (panoptic), boundary recall / UE / ASA (SLIC).

Weights: ``--fcn`` and ``--msrcnn`` take rtseg safetensors trained by
``rtseg.train.fcn_trainer`` / ``rtseg.train.msrcnn_trainer``; ``--yolact`` an
rtseg or official YOLACT file. An engine whose option is not given is a random
network (timings stay meaningful, quality is then ~0 and flagged "untrained");
a file given that is not there is refused.

    python -m benchmarks.engines_compare --fcn F.safetensors --msrcnn M.safetensors [--frames 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.common import THREADS, checked, input_file, run_checked, summary, write_result
from rtseg.data.synthetic import CLASSES, LEAST, MOST, TEST_SEED, SyntheticScene
from rtseg.engines import load
from rtseg.eval.superpixels import instances_to_segmentation, superpixel_metrics

NAMES = ["background", *CLASSES]


def staged(engine: Any, frames: list[np.ndarray]) -> tuple[list[Any], dict[str, Any]]:
    """Run ``engine`` frame by frame through its preprocess/forward/postprocess, timing each stage (ms)."""
    times: dict[str, list[float]] = {"preprocess": [], "network": [], "postprocess": [], "total": []}
    preds, stamps = [], []
    for img in frames:
        t0 = time.perf_counter()
        x = engine.preprocess([img])
        t1 = time.perf_counter()
        raw = engine.forward(x)
        t2 = time.perf_counter()
        pred = engine.postprocess(raw, [img.shape[:2]])[0]
        if hasattr(pred, "masks"):
            _ = pred.masks  # materialise lazy masks: part of the cost of a drawn frame
        t3 = time.perf_counter()
        for k, a, b in (("preprocess", t0, t1), ("network", t1, t2), ("postprocess", t2, t3), ("total", t0, t3)):
            times[k].append((b - a) * 1e3)
        preds.append(pred)
        stamps.append(t3)
    return preds, _timing(times, stamps)


def whole(fn: Callable[[np.ndarray], Any], frames: list[np.ndarray]) -> tuple[list[Any], dict[str, Any]]:
    """Run an engine without a stage split (SLIC, panoptic) and time each call."""
    preds, times, stamps = [], [], []
    for img in frames:
        t0 = time.perf_counter()
        preds.append(fn(img))
        stamps.append(time.perf_counter())
        times.append((stamps[-1] - t0) * 1e3)
    return preds, _timing({"total": times}, stamps)


def _timing(times: dict[str, list[float]], stamps: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {k: summary(v) for k, v in times.items()}
    out["fps"] = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fcn", type=input_file, default=None)
    ap.add_argument("--msrcnn", type=input_file, default=None)
    ap.add_argument("--yolact", type=input_file, default=None)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    ap.add_argument("--threads", type=int, default=1)
    return checked(ap, ap.parse_args(argv), [("--frames", 2, None, " (the FPS needs 2)"),
                                             ("--size", LEAST["width"], MOST["width"], " pixels"), THREADS])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines.fcn import FcnEngine
    from rtseg.engines.msrcnn import MsrcnnEngine, rescored
    from rtseg.engines.panoptic import PanopticEngine
    from rtseg.engines.yolact import YolactEngine
    from rtseg.eval.coco import evaluate
    from rtseg.eval.panoptic import PanopticEvaluator, panoptic_from_instances
    from rtseg.eval.semantic import SemanticEvaluator, semantic_target
    from rtseg.models.fcn import FcnConfig
    from rtseg.models.msrcnn import MsrcnnConfig
    from rtseg.models.yolact import YolactConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w, h = args.size
    scene = SyntheticScene(TEST_SEED, width=w, height=h, num_frames=args.frames)
    clip = [scene.frame(i) for i in range(args.frames)]
    frames = [img for img, _ in clip]
    gts = [inst for _, inst in clip]
    trained: dict[str, bool] = {}

    if args.yolact:
        yolact = load("yolact", str(args.yolact), score_threshold=0.05)
    else:
        yolact = YolactEngine.from_config(YolactConfig(backbone="resnet18", num_classes=len(CLASSES), input_size=160,
                                                       fpn_channels=64, num_prototypes=16),
                                          class_names=list(CLASSES), score_threshold=0.05)
    trained["yolact"] = bool(args.yolact)
    msrcnn = (load("msrcnn", str(args.msrcnn), score_threshold=0.05) if args.msrcnn else MsrcnnEngine.from_config(
        MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=h, max_size=w,
                     anchor_sizes=(8, 16, 32, 64, 128), proposals_per_image=200), class_names=list(CLASSES)))
    trained["msrcnn"] = bool(args.msrcnn)
    fcn = load("fcn", str(args.fcn)) if args.fcn else FcnEngine.from_config(
        FcnConfig(num_classes=len(NAMES), width=0.125), class_names=NAMES)
    trained["fcn"] = bool(args.fcn)
    results: dict[str, Any] = {"clip": {"seed": TEST_SEED, "size_wh": [w, h], "frames": args.frames},
                               "trained": trained}

    for name, eng in (("yolact", yolact), ("msrcnn", msrcnn), ("fcn", fcn)):
        eng.warmup()
    for name, eng in (("yolact", yolact), ("msrcnn", msrcnn)):
        preds, timing = staged(eng, frames)
        q = evaluate(preds, gts, list(CLASSES))
        results[name] = {"timing": timing, "mask_AP": q["mask_AP"], "mask_AP50": q["mask_AP50"], "box_AP": q["box_AP"]}
        if name == "msrcnn":
            qm = evaluate([rescored(p) for p in preds], gts, list(CLASSES))
            results[name].update({"mask_AP_by_mask_score": qm["mask_AP"], "mask_AP50_by_mask_score": qm["mask_AP50"]})
        print(name, {k: v for k, v in results[name].items() if k != "timing"}, f"{timing['fps']:.1f} FPS", flush=True)

    sems, timing = staged(fcn, frames)
    ev = SemanticEvaluator(len(NAMES))
    for i, s in enumerate(sems):
        ev.add(s.labels, semantic_target(scene.sample(i)))
    m = ev.summarize(NAMES)
    results["fcn"] = {"timing": timing, "mIoU": m["mIoU"], "pixel_accuracy": m["pixel_accuracy"]}
    print("fcn", m["mIoU"], m["pixel_accuracy"], f"{timing['fps']:.1f} FPS", flush=True)

    for inst_name, inst_eng in (("msrcnn", msrcnn), ("yolact", yolact)):
        pan = PanopticEngine(instances=inst_eng, semantic=fcn)
        preds, timing = whole(pan, frames)
        pev = PanopticEvaluator(len(NAMES), things=range(1, len(NAMES)))
        for p, inst in zip(preds, gts):
            pev.add(p, panoptic_from_instances(inst, (h, w), NAMES))
        pq = pev.summarize(NAMES)
        results[f"panoptic_{inst_name}+fcn"] = {"timing": timing, **{k: pq[k] for k in (
            "PQ", "SQ", "RQ", "PQ_th", "PQ_st")}}
        print(f"panoptic {inst_name}+fcn", {k: round(pq[k], 4) for k in ("PQ", "SQ", "RQ")}, flush=True)

    for backend in ("skimage", "torch"):
        slic = load("slic", backend=backend, n_segments=200)
        slic.warmup()
        preds, timing = whole(slic, frames)
        ms = [superpixel_metrics(p.labels, instances_to_segmentation(inst, (h, w))) for p, inst in zip(preds, gts)]
        results[f"slic_{backend}"] = {"timing": timing, **{k: float(np.mean([x[k] for x in ms])) for k in ms[0]}}
        print(f"slic {backend}", {k: round(v, 4) for k, v in results[f"slic_{backend}"].items() if k != "timing"},
              f"{timing['fps']:.1f} FPS", flush=True)
    print(write_result("engines_compare", results))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
