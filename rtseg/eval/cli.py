"""``rtseg eval``: COCO mask/box AP of a YOLACT checkpoint on a data set.

    rtseg eval --weights engines/demo.safetensors --data synthetic:test
    rtseg eval --weights yolact_base_54_800000.pth --data coco:instances_val2017.json:val2017 --device cuda

``--data`` is ``synthetic:{train|val|test}``, ``coco:ANNOTATIONS.json:IMAGE_DIR`` or
``labelme:FOLDER``. Classes of the weights and the data set are matched by name
(for the official COCO checkpoints the 80 names equal the COCO category names).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rtseg.data.dataset import InstanceDataset
from rtseg.errors import ConfigError, RtsegError, SinkError
from rtseg.eval.coco import CocoEvaluator, format_table
from rtseg.types import Detections


def open_dataset(spec: str) -> InstanceDataset:
    """The data set named by a ``--data`` spec (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from rtseg.data.synthetic import SyntheticDataset

        return SyntheticDataset.split(rest or "test")
    if kind == "coco":
        ann, _, image_dir = rest.partition(":")
        if not ann or not image_dir:
            raise ConfigError(f"--data {spec}: use coco:ANNOTATIONS.json:IMAGE_DIR")
        from rtseg.data.coco import CocoDataset

        return CocoDataset(ann, image_dir, include_crowd=True)
    if kind == "labelme":
        if not rest:
            raise ConfigError(f"--data {spec}: use labelme:FOLDER")
        from rtseg.data.labelme import LabelmeDataset

        return LabelmeDataset(rest)
    raise ConfigError(f"--data {spec}: unknown kind {kind!r}; use synthetic:test, coco:ANN.json:IMG_DIR or labelme:DIR")


def class_mapping(engine_names: Sequence[str], data_names: Sequence[str]) -> np.ndarray:
    """(C_engine,) int64: data-set class id of each engine class, -1 for classes the data set lacks.

    ``ConfigError`` when a data-set class is unknown to the engine (its AP could only be 0).
    """
    index = {n: i for i, n in enumerate(data_names)}
    missing = [n for n in data_names if n not in set(engine_names)]
    if missing:
        raise ConfigError(f"the weights do not know data-set classes {', '.join(missing[:5])}"
                          f"{' …' if len(missing) > 5 else ''}; evaluate weights trained on these classes")
    return np.array([index.get(n, -1) for n in engine_names], np.int64)


def _remap(dets: Detections, mapping: np.ndarray, data_names: Sequence[str]) -> Detections:
    """Detections with class ids of the data set (detections of other classes dropped)."""
    if np.array_equal(mapping, np.arange(len(mapping))) and len(mapping) == len(data_names):
        return dets
    ids = mapping[dets.class_ids]
    keep = ids >= 0
    return Detections(boxes=dets.boxes[keep], scores=dets.scores[keep], class_ids=ids[keep],
                      image_size=dets.image_size, class_names=tuple(data_names), _masks=dets.masks[keep])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtseg eval", description="COCO mask and box AP of YOLACT weights on a data set.")
    p.add_argument("--weights", required=True, help="official YOLACT .pth or rtseg .safetensors (+ manifest)")
    p.add_argument("--data", default="synthetic:test",
                   help="synthetic:{train|val|test} | coco:ANNOTATIONS.json:IMAGE_DIR | labelme:FOLDER")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--score-threshold", type=float, default=0.05, help="drop detections scoring at most this")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    return p


def run(args: argparse.Namespace) -> dict[str, float]:
    import rtseg

    dataset = open_dataset(args.data)
    n = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    if n < 1:
        raise ConfigError(f"--data {args.data}: no images to evaluate")
    engine = rtseg.load("yolact", weights=args.weights, device=args.device,
                        score_threshold=args.score_threshold, top_k=100)
    mapping = class_mapping(engine.class_names, dataset.class_names)
    evaluator = CocoEvaluator(dataset.class_names)
    start = time.perf_counter()
    for i in range(n):
        sample = dataset[i]
        evaluator.add(_remap(engine(sample.image), mapping, dataset.class_names), sample)
        if (i + 1) % 50 == 0 or i + 1 == n:
            print(f"\r{i + 1}/{n} images", end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    metrics = evaluator.summarize()
    print(f"{args.data}: {n} images, {seconds:.1f} s ({n / seconds:.1f} images/s incl. loading and AP bookkeeping)")
    print(format_table(metrics))
    if args.json is not None:
        record = {"weights": str(args.weights), "data": args.data, "images": n, "device": args.device,
                  "score_threshold": args.score_threshold, "metrics": metrics}
        try:
            args.json.write_text(json.dumps(record, indent=2), encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"--json {args.json}: cannot write ({exc.strerror}); choose another path") from None
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtseg eval``; returns the exit status (0 ok, 2 on a user error, as every rtseg command)."""
    args = _parser().parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        print("rtseg eval: error: --max-images must be at least 1", file=sys.stderr)
        return 2
    try:
        run(args)
    except RtsegError as exc:
        print(f"rtseg eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
