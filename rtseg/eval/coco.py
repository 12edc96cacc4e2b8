"""COCO mask and box AP of instance predictions (pycocotools ``COCOeval``).

Ground truth and predictions are turned into COCO records as they arrive (masks
become RLE at once), so a long evaluation holds only compact RLE in memory.
Category ids in the in-memory COCO objects are the 0-based class ids.
"""
from __future__ import annotations

import contextlib
import io
import itertools
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.data.synthetic import Instance
from rtseg.ops.rle import encode_rle
from rtseg.serialize import detections_to_coco
from rtseg.types import Detections

METRICS = ("mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "box_AP75")
"""Keys of the dict that :func:`evaluate` returns (AP over IoU 0.50:0.95, at 0.50, at 0.75)."""


class CocoEvaluator:
    """Collects (prediction, ground truth) pairs image by image, then runs COCOeval.

    ``class_names``: the classes that prediction and ground-truth class ids index.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self._images: list[dict] = []
        self._gt: list[dict] = []
        self._dt: list[dict] = []

    def __len__(self) -> int:
        return len(self._images)

    def add(self, prediction: Detections, ground_truth: Sample | Sequence[Instance]) -> None:
        """Add one image: its predicted ``Detections`` and its ``Sample`` (or list of ``Instance``)."""
        masks, boxes, class_ids, crowd = _ground_truth_arrays(ground_truth, prediction.image_size)
        h, w = masks.shape[1:] if len(masks) else prediction.image_size
        if (h, w) != tuple(prediction.image_size):
            raise ValueError(f"CocoEvaluator.add: prediction is for a {prediction.image_size} image, "
                             f"ground truth is {(h, w)}")
        if len(prediction) and int(prediction.class_ids.max()) >= len(self.class_names):
            raise ValueError(f"CocoEvaluator.add: class id {int(prediction.class_ids.max())} "
                             f"but only {len(self.class_names)} classes")
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "height": int(h), "width": int(w)})
        for rle, box, cls, is_crowd, area in zip(encode_rle(masks), boxes.tolist(), class_ids.tolist(),
                                                 crowd.tolist(), masks.sum(axis=(1, 2)).tolist()):
            x1, y1, x2, y2 = box
            self._gt.append({"id": len(self._gt) + 1, "image_id": image_id, "category_id": int(cls),
                             "segmentation": rle, "area": float(area), "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "iscrowd": int(is_crowd)})
        self._dt.extend(detections_to_coco(prediction, image_id))

    def summarize(self) -> dict[str, float]:
        """AP values in [0, 1] for ``METRICS`` (0.0 when nothing was predicted, NaN without ground truth)."""
        if not any(not a["iscrowd"] for a in self._gt):
            return {k: float("nan") for k in METRICS}
        if not self._dt:
            return {k: 0.0 for k in METRICS}
        segm, bbox = self._coco_eval("segm").stats, self._coco_eval("bbox").stats
        return {"mask_AP": segm[0], "mask_AP50": segm[1], "mask_AP75": segm[2],
                "box_AP": bbox[0], "box_AP50": bbox[1], "box_AP75": bbox[2]}

    def mask_breakdown(self, area_edges: Sequence[float] = (0, 300, 1024, 3000)) -> dict[str, Any]:
        """Where mask AP is lost: per class and by object size.

        Returns ``{"mask_AP_per_class": {name: AP 0.50:0.95}, "recall50_by_area": [{"area": [lo, hi],
        "objects": n, "recall": r}]}``: r is the fraction of the (non-crowd) ground-truth masks with
        visible area in [lo, hi) pixels that a detection of their class matches at mask IoU >= 0.5
        (COCOeval's greedy matching, top 100 detections per image); the last bucket is open-ended.
        """
        if not self._dt:
            raise ValueError("CocoEvaluator.mask_breakdown: no detections were added")
        ev = self._coco_eval("segm", summarize=False)
        precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) over all areas, maxDets 100
        per_class = {}
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k]
            per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        ranges = [[float(lo), float(hi)] for lo, hi in zip(area_edges, [*area_edges[1:], 1e10])]
        ev = self._coco_eval("segm", summarize=False, area_ranges=ranges, accumulate=False)
        buckets = []
        for rng in ranges:
            found = total = 0
            for e in ev.evalImgs:
                if e is None or e["aRng"] != rng:
                    continue
                real = ~np.asarray(e["gtIgnore"], bool)
                total += int(real.sum())
                found += int((np.asarray(e["gtMatches"])[0][real] > 0).sum())
            buckets.append({"area": rng, "objects": total, "recall": found / total if total else float("nan")})
        return {"mask_AP_per_class": per_class, "recall50_by_area": buckets}

    def _coco_eval(self, iou_type: str, *, summarize: bool = True, area_ranges: list[list[float]] | None = None,
                   accumulate: bool = True) -> COCOeval:
        """COCOeval of the collected records (``stats``: 12 numbers, -1 -> 0 for absent classes/areas)."""
        gt = COCO()
        gt.dataset = {"images": self._images, "annotations": self._gt,
                      "categories": [{"id": i, "name": n} for i, n in enumerate(self.class_names)]}
        drop = "bbox" if iou_type == "segm" else "segmentation"
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in self._dt]), iou_type)
            if area_ranges is not None:
                ev.params.areaRng = area_ranges
                ev.params.areaRngLbl = [f"{lo:g}-{hi:g}" for lo, hi in area_ranges]
            ev.evaluate()
            if accumulate:
                ev.accumulate()
            if summarize:
                ev.summarize()
                ev.stats = [max(float(v), 0.0) for v in ev.stats]
        return ev


def _ground_truth_arrays(gt: Sample | Sequence[Instance], size: tuple[int, int]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, H, W) bool masks, (N, 4) float32 xyxy boxes, (N,) int64 class ids, (N,) bool crowd flags.

    The boxes of a ``Sample`` are its own (a COCO annotation's bbox, as pycocotools' box AP takes it, need not be
    the tight box of its mask); those of ``Instance`` are the tight boxes of their masks."""
    if isinstance(gt, Sample):
        crowd = np.zeros(len(gt), bool) if gt.iscrowd is None else gt.iscrowd
        return gt.masks, gt.boxes, gt.class_ids, crowd
    masks = np.array([inst.mask for inst in gt], dtype=bool).reshape(-1, *size)
    return masks, masks_to_boxes(masks), np.array([inst.class_id for inst in gt], np.int64), np.zeros(len(gt), bool)


def evaluate(predictions: Iterable[Detections], ground_truth: Iterable[Sample | Sequence[Instance]],
             class_names: Sequence[str]) -> dict[str, float]:
    """COCO AP of ``predictions`` against ``ground_truth`` (same order, one per image).

    Returns ``{"mask_AP", "mask_AP50", "mask_AP75", "box_AP", "box_AP50", "box_AP75"}``,
    each in [0, 1]. Ground truth: ``Sample`` (crowd regions are ignore areas) or a
    list of synthetic ``Instance``. Both may be generators: each pair is reduced to
    RLE as it comes, so a streamed evaluation never holds more than one image's masks
    (a list of ``Detections`` keeps every materialised mask alive in the caller).
    """
    ev = CocoEvaluator(class_names)
    missing = object()
    for dets, gt in itertools.zip_longest(predictions, ground_truth, fillvalue=missing):
        if dets is missing or gt is missing:
            raise ValueError(f"evaluate: predictions and ground truth differ in length "
                             f"(ran out of {'predictions' if dets is missing else 'ground truth'} "
                             f"after {len(ev)} images)")
        ev.add(dets, gt)
    return ev.summarize()


def format_table(metrics: dict[str, float]) -> str:
    """Two-line text table of ``metrics`` (values in percent)."""
    keys = [k for k in METRICS if k in metrics]
    return "  ".join(f"{k:>9}" for k in keys) + "\n" + "  ".join(f"{100 * metrics[k]:9.2f}" for k in keys)
