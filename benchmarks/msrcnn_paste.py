"""MS R-CNN mask paste (``Detections.masks``): box windows vs torchvision's full-frame paste (CPU).

100 detections of random 28x28 probabilities in boxes 2-40 % of the frame a side (centres uniform,
clipped to the frame as the detector's are), at 4000x3000 and 1920x1080. "before" is the engine's
paste until this change (torchvision's ``paste_masks_in_image``, 2^25 float pixels at a time, > 0.5),
"after" is ``rtseg.engines.msrcnn.paste_masks``; both are checked equal. Calls alternate, wall-clock
seconds, p50 over the repeats after one discarded call each (the equality check), with 1 and 2 torch
threads (on a shared, oversubscribed machine 1 is often faster). The load average is recorded.

    python -m benchmarks.msrcnn_paste [--repeats 5] [--threads 1,2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from benchmarks.common import THREADS, checked, run_checked, write_result

if TYPE_CHECKING:
    import torch


def before(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], budget: int = 1 << 25) -> np.ndarray:
    """The engine's paste before this change: full-frame float maps, a few at a time."""
    from torchvision.models.detection.transform import paste_masks_in_image

    h, w = size
    out = np.zeros((len(probs), h, w), bool)
    step = max(budget // (h * w), 1)
    for i in range(0, len(probs), step):
        out[i:i + step] = (paste_masks_in_image(probs[i:i + step], boxes[i:i + step], (h, w))[:, 0] > 0.5).numpy()
    return out


def detections(n: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 28, 28) float32 probabilities and (n, 4) float32 xyxy boxes inside an (H, W) frame."""
    import torch

    h, w = size
    g = torch.Generator().manual_seed(seed)
    side = (torch.rand(n, 2, generator=g) * 0.38 + 0.02) * torch.tensor([w, h])
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    boxes = torch.minimum(boxes.clamp_min(0), torch.tensor([w, h, w, h], dtype=torch.float32))
    return torch.rand(n, 1, 28, 28, generator=g), boxes


def thread_counts(text: str) -> list[int]:
    """An argparse type: ``"1,2"`` → ``[1, 2]`` (each checked against :data:`THREADS` with the other options)."""
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas, e.g. 1,2") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=thread_counts, default="1,2",
                    help="torch intra-op thread counts to run, comma-separated")
    return checked(ap, ap.parse_args(argv), [("--repeats", 1, None, ""), THREADS])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines.msrcnn import paste_masks

    load_before, results = os.getloadavg()[0], {}
    for threads, size in [(t, s) for t in args.threads for s in [(3000, 4000), (1080, 1920)]]:
        torch.set_num_threads(threads)
        probs, boxes = detections(100, size)
        assert np.array_equal(before(probs, boxes, size), paste_masks(probs, boxes, size))
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            for name, fn in (("before", before), ("after", paste_masks)):
                t = time.perf_counter()
                fn(probs, boxes, size)
                times[name].append(time.perf_counter() - t)
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        results[f"{size[1]}x{size[0]}, {threads} thread(s)"] = {
            "p50_s": p50, "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "speedup": p50["before"] / p50["after"],
            "box_pixels_in_frame_M": float((boxes[:, 2:] - boxes[:, :2]).prod(1).sum()) / 1e6}
        print(f"{size[1]}x{size[0]}, {threads} thread(s): before {p50['before']:.3f} s, after {p50['after']:.3f} s, "
              f"x{p50['before'] / p50['after']:.1f}")
    path = write_result("msrcnn_paste", {
        "benchmark": "MS R-CNN paste of 100 masks (28x28 -> frame), box windows vs full-frame, CPU",
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, "results": results})
    print(path)


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
