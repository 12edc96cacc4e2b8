"""CPU cost of materialising full-resolution YOLACT masks: the full-frame ``F.interpolate`` of every mask (the
official order, what ``assemble_masks`` did before) against ``assemble_masks`` (box footprints only), same
inputs, alternated in one process; the pixels where they differ are counted (only where the upsampled
probability is within ~1e-5 of the threshold: tests/test_ops_masks.py).

Both run in chunks of 8 masks, as ``YolactEngine`` does. Loads: the 100 candidates of the random ``busy_model``
(``benchmarks.yolact_cpu_stages``'s load: small boxes), 100 smooth synthetic masks with boxes from 5% to 60% of
the frame side, and a worst case of per-cell noise prototypes with every box the whole frame. Usage:

    python -m benchmarks.mask_assembly_cpu [--iters 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from benchmarks.common import busy_model, checked, run_checked, write_result

if TYPE_CHECKING:
    import torch

SIZES = {"640x480": (480, 640), "1920x1080": (1080, 1920)}

Load = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]


def full_frame(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The previous ``assemble_masks``: crop(sigmoid(proto @ coef.T)) upsampled over the whole frame, > 0.5."""
    import torch.nn.functional as F

    from rtseg.ops.masks import mask_probabilities

    soft = mask_probabilities(proto, coef, boxes)
    return F.interpolate(soft[None], size, mode="bilinear", align_corners=False)[0] > 0.5


def busy_load() -> Load:
    """(proto (138, 138, 32), coef (100, 32), boxes (100, 4)) of the busy yolact_resnet50 on a random 640x480 frame."""
    import torch

    from rtseg.engines.yolact import YolactEngine

    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    eng = YolactEngine(model=busy_model("yolact_resnet50"), score_threshold=0.0, top_k=100)
    with torch.inference_mode():
        cand = eng.detection_head(eng.network(eng.preprocess([frame])))[0]
    return cand.proto, cand.coef[:100], cand.rows[:100, :4]


def synthetic_load(*, smooth: bool, seed: int = 0) -> Load:
    """Smooth prototypes (6x6 noise upsampled) with boxes of 5-60% of the frame side, or per-cell noise with every
    box the whole frame."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(100, 32, generator=g) * 0.5
    if not smooth:
        return torch.randn(138, 138, 32, generator=g), coef, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(100, 1)
    proto = F.interpolate(torch.randn(1, 32, 6, 6, generator=g), (138, 138), mode="bilinear", align_corners=False)
    side = torch.rand(100, 2, generator=g) * 0.55 + 0.05
    centre = side / 2 + torch.rand(100, 2, generator=g) * (1 - side)
    return proto[0].permute(1, 2, 0).contiguous() * 2, coef, torch.cat([centre - side / 2, centre + side / 2], 1)


def chunked(fn: Callable[..., torch.Tensor], load: Load, size: tuple[int, int]) -> list[torch.Tensor]:
    from rtseg.engines.yolact import MASK_CHUNK

    proto, coef, boxes = load
    return [fn(proto, coef[i:i + MASK_CHUNK], boxes[i:i + MASK_CHUNK], size) for i in range(0, len(coef), MASK_CHUNK)]


def compare(load: Load, size: tuple[int, int], iters: int) -> dict:
    """Median ms for all masks, old and new alternated ``iters`` times after a warm-up, and their ratio."""
    from rtseg.ops.masks import assemble_masks

    old, new = (lambda: chunked(full_frame, load, size)), (lambda: chunked(assemble_masks, load, size))
    differing = sum(int((a != b).sum()) for a, b in zip(old(), new()))
    times: dict[str, list[float]] = {"full_frame": [], "footprints": []}
    for _ in range(iters):
        for name, fn in (("full_frame", old), ("footprints", new)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"masks": len(load[1]), "full_frame_p50_ms": med["full_frame"], "footprints_p50_ms": med["footprints"],
            "speedup": med["full_frame"] / med["footprints"], "iters": iters, "differing_pixels": differing,
            "pixels": len(load[1]) * size[0] * size[1]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__)
    ap.add_argument("--iters", type=int, default=15)
    return checked(ap, ap.parse_args(argv), [("--iters", 1, None, "")])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines.yolact import MASK_CHUNK

    loads = {"busy_model_100": busy_load(), "smooth_5-60pct_boxes": synthetic_load(smooth=True),
             "worst_noise_full_frame_boxes": synthetic_load(smooth=False)}
    results = {}
    with torch.inference_mode():
        for lname, load in loads.items():
            for sname, size in SIZES.items():
                iters = args.iters if size[0] < 1000 else max(3, args.iters // 3)
                r = results[f"{lname}@{sname}"] = compare(load, size, iters)
                print(f"{lname}@{sname}: full frame {r['full_frame_p50_ms']:.1f} ms, footprints "
                      f"{r['footprints_p50_ms']:.1f} ms, x{r['speedup']:.2f}, {r['differing_pixels']} pixels differ")
    print(write_result("mask_assembly_cpu", {"chunk": MASK_CHUNK, "results": results,
                                             "load_average_1_5_15": os.getloadavg()}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
