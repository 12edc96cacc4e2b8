"""Opening a COCO annotation file: ``rtseg.data.coco.CocoDataset`` (parses and checks every image and annotation,
so that a malformed one is one line naming it) against the same class at a git revision (default 2eb6344: each
annotation checked alone, numpy calls on its own small arrays), pycocotools' ``COCO()`` (parses and indexes, checks
nothing) and the JSON parse alone (``rtseg.data.dataset.read_json``, the floor of all three), on a generated file of
polygon instances whose images all exist (empty files: nothing is decoded).

All four run in one process on the same file, alternated round by round (the order rotated each round) after one
warm-up each, the result of each call freed inside its time (as when a data set is dropped). Times are
milliseconds of one open, wall-clock (``wall_ms``) and this process's CPU time (``cpu_ms``, steadier on a busy
machine). ``speedup`` is the baseline's wall p50 over the current one; ``current_over_pycocotools`` the current wall
p50 over pycocotools'; ``current_checks_ms`` the current wall p50 less the JSON parse's; ``cpu_*`` the same ratios of
CPU p50s. The 1-, 5- and 15-minute load averages are recorded before and after. Writes
benchmarks/results/coco_open.json. Usage:

    python -m benchmarks.coco_open [--images 5000] [--per-image 7] [--rounds 7] [--baseline REV]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.common import check_revision, checked, module_at, run_checked, summary, write_result
from rtseg.data.coco import CocoDataset
from rtseg.data.dataset import read_json

SOURCE = "rtseg/data/coco.py"


def write_coco(folder: Path, images: int, per_image: int, seed: int = 0) -> Path:
    """``folder/ann.json`` with ``images`` 640x480 images (empty files beside it) of ``per_image`` 12-point polygon
    instances each, 80 categories; returns its path."""
    rng = random.Random(seed)
    imgs, anns = [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "file_name": f"{i:06d}.jpg", "height": 480, "width": 640})
        (folder / f"{i:06d}.jpg").touch()
        for _ in range(per_image):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(10, 130), rng.uniform(10, 90)
            poly = [v for _ in range(12) for v in (x + w * rng.random(), y + h * rng.random())]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": rng.randint(1, 80), "segmentation": [poly],
                         "area": w * h, "bbox": [x, y, w, h], "iscrowd": 0})
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns,
                                "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 81)]}))
    return path


def alternated(versions: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per version, ``wall`` and ``cpu`` (this process's CPU time) milliseconds of each call, one call of each
    version per round (the order rotated), after one warm-up each."""
    for fn in versions.values():
        fn()
    names = list(versions)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            versions[name]()
            times[name]["cpu"].append((time.process_time() - cpu) * 1e3)
            times[name]["wall"].append((time.perf_counter() - wall) * 1e3)
    return times


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", default="2eb6344", help="git revision of rtseg/data/coco.py to compare with")
    args = checked(ap, ap.parse_args(argv), [("--images", 1, None, ""), ("--per-image", 1, None, ""),
                                             ("--rounds", 1, None, "")])
    check_revision(ap, args.baseline, SOURCE)
    return args


def run(args: argparse.Namespace) -> None:
    from pycocotools.coco import COCO  # a missing package: one line (run_checked)

    old = module_at(args.baseline, SOURCE)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ann = write_coco(Path(tmp), args.images, args.per_image)

        def pycocotools_open() -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
                COCO(str(ann))

        times = alternated({"current": lambda: CocoDataset(ann, tmp), "baseline": lambda: old.CocoDataset(ann, tmp),
                            "pycocotools": pycocotools_open, "json_parse": lambda: read_json(ann, "annotations")},
                           args.rounds)
        size_mb = ann.stat().st_size / 1e6
    ms = {name: summary(t["wall"]) for name, t in times.items()}
    cpu_ms = {name: summary(t["cpu"]) for name, t in times.items()}
    p50 = {name: s["p50_ms"] for name, s in ms.items()}
    cpu50 = {name: s["p50_ms"] for name, s in cpu_ms.items()}
    result = {"images": args.images, "annotations": args.images * args.per_image, "file_mb": size_mb,
              "rounds": args.rounds, "baseline_revision": args.baseline, "wall_ms": ms, "cpu_ms": cpu_ms,
              "speedup": p50["baseline"] / p50["current"],
              "current_over_pycocotools": p50["current"] / p50["pycocotools"],
              "baseline_over_pycocotools": p50["baseline"] / p50["pycocotools"],
              "current_checks_ms": p50["current"] - p50["json_parse"],
              "cpu_speedup": cpu50["baseline"] / cpu50["current"],
              "cpu_current_over_pycocotools": cpu50["current"] / cpu50["pycocotools"],
              "load_avg_1_5_15_before": load_before, "load_avg_1_5_15_after": os.getloadavg()}
    print(f"{args.images} images, {args.images * args.per_image} polygons ({size_mb:.0f} MB), p50 wall (CPU): "
          + ", ".join(f"{name} {p50[name] / 1000:.2f} s ({cpu50[name] / 1000:.2f} s)" for name in p50)
          + f"; {result['speedup']:.2f}x faster than {args.baseline}, {result['current_over_pycocotools']:.2f}x "
          f"pycocotools (CPU: {result['cpu_speedup']:.2f}x, {result['cpu_current_over_pycocotools']:.2f}x)")
    print(write_result("coco_open", result))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
