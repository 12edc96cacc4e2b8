"""CPU time and quality of the torch SLIC (``rtseg.engines.slic.slic_torch``) against its version at a git
revision (default 0151cf4: the per-pixel gather of candidate centres, connected components by pixel
min-propagation, fragment growth over the whole frame per ring), in one process on the same frames.

Frames: the synthetic test clip (``TEST_SEED``) at each ``--sizes``; n_segments 200, compactness 10, 10
iterations. Times are wall-clock milliseconds per frame, the two versions alternated frame by frame for
``--rounds`` rounds after one warm-up frame each; ``speedup`` is the baseline's p50 over the current p50.
Quality (rtseg.eval.superpixels, mean over the frames): boundary recall, undersegmentation error, ASA, number
of segments. Noise: number of segments (and seconds) on a uniform random 640x480 frame with 50 segments asked.
Thin: the same on uniform random frames thinner than the grid step (``THIN``) with 100 segments asked, p50 of
``--rounds`` runs, the versions alternated. The 1-, 5- and 15-minute load averages are recorded before and after.
Usage:

    python -m benchmarks.slic_cpu [--sizes 640x480 160x120] [--frames 6] [--rounds 3] [--threads 1] [--baseline REV]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from benchmarks.common import (
    THREADS,
    check_revision,
    checked,
    frame_size,
    module_at,
    run_checked,
    summary,
    write_result,
)
from rtseg.data.synthetic import TEST_SEED, SyntheticScene
from rtseg.eval.superpixels import instances_to_segmentation, superpixel_metrics

if TYPE_CHECKING:
    import torch

SOURCE = "rtseg/engines/slic.py"

Slic = Callable[..., "torch.Tensor"]

THIN = [(2, 20000), (20000, 2), (1, 5000), (3, 3000)]
"""H x W of the thin frames: grid step S = sqrt(H*W / 100) from 7 to 20 pixels, wider than the short side."""


def compare(versions: dict[str, Slic], size: tuple[int, int], frames: int, rounds: int) -> dict[str, Any]:
    """Per version: ms per frame (alternated frame by frame) and mean superpixel metrics; ``speedup``."""
    import torch

    w, h = size
    scene = SyntheticScene(TEST_SEED, width=w, height=h, num_frames=frames)
    clip = [scene.frame(i) for i in range(frames)]
    images = [torch.from_numpy(img) for img, _ in clip]
    truths = [instances_to_segmentation(inst, (h, w)) for _, inst in clip]
    for fn in versions.values():
        fn(images[0], n_segments=200)
    times: dict[str, list[float]] = {name: [] for name in versions}
    labels: dict[str, list[np.ndarray]] = {name: [] for name in versions}
    for r in range(rounds):
        for img in images:
            for name, fn in versions.items():
                t = time.perf_counter()
                out = fn(img, n_segments=200)
                times[name].append((time.perf_counter() - t) * 1e3)
                if r == 0:
                    labels[name].append(out.numpy())
    out: dict[str, Any] = {}
    for name in versions:
        ms = [superpixel_metrics(sp, gt) for sp, gt in zip(labels[name], truths)]
        out[name] = {"timing": summary(times[name]), **{k: float(np.mean([m[k] for m in ms])) for k in ms[0]}}
    out["speedup"] = out["baseline"]["timing"]["p50_ms"] / out["current"]["timing"]["p50_ms"]
    return out


def on_noise(versions: dict[str, Slic]) -> dict[str, Any]:
    """Segments and seconds of each version on a uniform random 640x480 frame, 50 segments asked."""
    import torch

    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    out = {}
    for name, fn in versions.items():
        t = time.perf_counter()
        labels = fn(img, n_segments=50)
        out[name] = {"segments": len(torch.unique(labels)), "s": time.perf_counter() - t}
    return out


def on_thin(versions: dict[str, Slic], rounds: int) -> dict[str, Any]:
    """Per ``THIN`` frame (uniform random), per version: segments and seconds (p50 of ``rounds`` runs, alternated),
    100 segments asked."""
    import torch

    out: dict[str, Any] = {}
    for h, w in THIN:
        img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
        seconds: dict[str, list[float]] = {name: [] for name in versions}
        segments = {}
        for _ in range(rounds):
            for name, fn in versions.items():
                t = time.perf_counter()
                labels = fn(img, n_segments=100)
                seconds[name].append(time.perf_counter() - t)
                segments[name] = len(torch.unique(labels))
        out[f"{h}x{w}"] = {name: {"segments": segments[name], "s": float(np.median(seconds[name]))} for name in versions}
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=frame_size("WxH"), default=[(640, 480), (160, 120)],
                    help="frame sizes, WxH")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", default="0151cf4", help="git revision of the version to compare with")
    args = checked(ap, ap.parse_args(argv), [("--frames", 1, None, ""), ("--rounds", 1, None, ""), THREADS])
    check_revision(ap, args.baseline, SOURCE)
    return args


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines import slic

    torch.set_num_threads(args.threads)
    versions = {"baseline": module_at(args.baseline, SOURCE).slic_torch, "current": slic.slic_torch}
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for w, h in args.sizes:
        spec = f"{w}x{h}"
        r = results[spec] = compare(versions, (w, h), args.frames, args.rounds)
        print(spec, {name: (round(r[name]["timing"]["p50_ms"], 1), round(r[name]["boundary_recall"], 4),
                            round(r[name]["asa"], 4), r[name]["num_segments"]) for name in versions},
              f"x{r['speedup']:.2f}", flush=True)
    results["noise_640x480_50_segments"] = noise = on_noise(versions)
    print("noise", noise)
    results["thin_100_segments"] = thin = on_thin(versions, args.rounds)
    print("thin", thin)
    print(write_result("slic_cpu", {"baseline": args.baseline, "frames": args.frames, "rounds": args.rounds,
                                    "n_segments": 200, "results": results, "load_average_1_5_15_before": load_before,
                                    "load_average_1_5_15_after": os.getloadavg()}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
