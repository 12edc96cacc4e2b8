"""Mask Scoring R-CNN's two checks (paper, sections 4.2 and 5): is the predicted MaskIoU right, and does it help AP?

For every detection, the *true* IoU of its mask with the best-overlapping ground
truth of its class is compared with the *predicted* MaskIoU (Pearson correlation;
the paper reports 0.74 on COCO), and COCO mask AP is computed twice: detections
ranked by classification score and ranked by mask score (score × predicted IoU,
:func:`rtseg.engines.msrcnn.rescored`). Used by ``rtseg eval --engine msrcnn``
and by the MS R-CNN trainer's validation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rtseg.data.dataset import Sample
from rtseg.engines.msrcnn import rescored
from rtseg.eval.coco import CocoEvaluator
from rtseg.types import Detections

SCORING_METRICS = ("mask_AP_mask_score", "mask_AP50_mask_score", "mask_AP75_mask_score", "maskiou_pearson",
                   "num_detections", "mean_true_iou", "mean_abs_error")
"""Keys that :meth:`MaskScoringEvaluator.summarize` adds to ``rtseg.eval.coco.METRICS``."""


def true_mask_iou(pred_masks: np.ndarray, pred_classes: np.ndarray, sample: Sample) -> np.ndarray:
    """(N,) float32 IoU of each (N, H, W) bool predicted mask with the best-overlapping ground truth of its class.

    ``pred_classes``: (N,) int64 class ids in the sample's class space. 0 where no ground truth of the class exists.
    """
    out = np.zeros(len(pred_masks), np.float32)
    if len(pred_masks) == 0 or len(sample) == 0:
        return out
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float32)
    g = sample.masks.reshape(len(sample), -1).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[pred_classes[:, None] != sample.class_ids[None]] = 0.0
    return iou.max(1).astype(np.float32)


class MaskScoringEvaluator:
    """Streams (Detections with ``mask_scores``, Sample) pairs; holds only RLE and two floats per detection.

    ``class_names``: the classes that detection and ground-truth class ids index.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.by_class_score = CocoEvaluator(class_names)
        self.by_mask_score = CocoEvaluator(class_names)
        self._pred_iou: list[np.ndarray] = []
        self._true_iou: list[np.ndarray] = []

    def add(self, dets: Detections, sample: Sample) -> None:
        """Add one image. ``dets.mask_scores`` = score × predicted MaskIoU (as the MS R-CNN engine returns)."""
        if dets.mask_scores is None:
            raise ValueError("MaskScoringEvaluator.add: detections carry no mask_scores (not from an MS R-CNN?)")
        self._pred_iou.append(dets.mask_scores / np.maximum(dets.scores, 1e-6))
        self._true_iou.append(true_mask_iou(dets.masks, dets.class_ids, sample))
        self.by_class_score.add(dets, sample)
        self.by_mask_score.add(rescored(dets), sample)

    def summarize(self) -> dict[str, float]:
        """``METRICS`` (ranked by class score) plus ``SCORING_METRICS``.

        maskiou_pearson: NaN with fewer than 3 detections or a constant predicted or true IoU.
        mean_abs_error: mean |predicted − true| IoU. AP values and IoUs are fractions in [0, 1].
        """
        p = np.concatenate(self._pred_iou) if self._pred_iou else np.zeros(0)
        t = np.concatenate(self._true_iou) if self._true_iou else np.zeros(0)
        corr = float(np.corrcoef(p, t)[0, 1]) if len(p) > 2 and p.std() > 0 and t.std() > 0 else float("nan")
        by_mask = self.by_mask_score.summarize()
        return {**self.by_class_score.summarize(),
                "mask_AP_mask_score": by_mask["mask_AP"], "mask_AP50_mask_score": by_mask["mask_AP50"],
                "mask_AP75_mask_score": by_mask["mask_AP75"], "maskiou_pearson": corr,
                "num_detections": float(len(p)), "mean_true_iou": float(t.mean()) if len(t) else 0.0,
                "mean_abs_error": float(np.abs(p - t).mean()) if len(t) else 0.0}


def format_scoring_table(metrics: dict[str, float]) -> str:
    """Text table: mask AP ranked by class score vs by mask score (percent), and the MaskIoU correlation."""
    rows = [("ranked by", "mask_AP", "mask_AP50", "mask_AP75"),
            ("class score", *(f"{100 * metrics[k]:.2f}" for k in ("mask_AP", "mask_AP50", "mask_AP75"))),
            ("mask score", *(f"{100 * metrics[k + '_mask_score']:.2f}" for k in ("mask_AP", "mask_AP50", "mask_AP75")))]
    lines = [f"{r[0]:<12}" + "".join(f"{c:>11}" for c in r[1:]) for r in rows]
    lines.append(f"MaskIoU predicted vs true: Pearson r = {metrics['maskiou_pearson']:.3f} over "
                 f"{int(metrics['num_detections'])} detections (mean true IoU {metrics['mean_true_iou']:.3f}, "
                 f"mean |error| {metrics['mean_abs_error']:.3f})")
    return "\n".join(lines)
