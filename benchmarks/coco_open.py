"""Opening a COCO annotation file: ``rtseg.data.coco.CocoDataset`` (parses and checks every image and annotation,
so that a malformed one is one line naming it) against pycocotools' ``COCO()`` (parses and indexes, checks
nothing), on a generated file of polygon instances whose images all exist (empty files: nothing is decoded).
Writes benchmarks/results/coco_open.json. Usage:

    python -m benchmarks.coco_open [--images 5000] [--per-image 7] [--iters 3]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import tempfile
from pathlib import Path

from pycocotools.coco import COCO

from benchmarks.common import summary, time_it, write_result
from rtseg.data.coco import CocoDataset


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ann = write_coco(Path(tmp), args.images, args.per_image)

        def pycocotools_open() -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
                COCO(str(ann))

        rtseg_ms = summary(time_it(lambda: CocoDataset(ann, tmp), iters=args.iters, warmup=1))
        coco_ms = summary(time_it(pycocotools_open, iters=args.iters, warmup=1))
        size_mb = ann.stat().st_size / 1e6
    result = {"images": args.images, "annotations": args.images * args.per_image, "file_mb": size_mb,
              "rtseg_CocoDataset": rtseg_ms, "pycocotools_COCO": coco_ms,
              "rtseg_over_pycocotools_p50": rtseg_ms["p50_ms"] / coco_ms["p50_ms"], "load_avg_1_5_15": os.getloadavg()}
    print(f"{args.images} images, {args.images * args.per_image} polygons ({size_mb:.0f} MB): rtseg "
          f"{rtseg_ms['p50_ms'] / 1000:.2f} s, pycocotools {coco_ms['p50_ms'] / 1000:.2f} s (p50)")
    print(write_result("coco_open", result))


if __name__ == "__main__":
    main()
