"""Semantic segmentation metrics: confusion matrix, mIoU, pixel accuracy (FCN paper, section 5).

With n_ij the pixels of class i predicted as j and t_i = sum_j n_ij:
pixel accuracy = sum_i n_ii / sum_i t_i; mean accuracy = mean_i n_ii / t_i;
IoU_i = n_ii / (t_i + sum_j n_ji - n_ii); mIoU = mean over classes that occur
in the ground truth or the prediction (absent classes are not counted).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rtseg.data.dataset import Sample


def semantic_target(sample: Sample) -> np.ndarray:
    """(H, W) int64 class map of an instance sample: 0 = background, class_id + 1 inside each mask.

    Later instances win where masks overlap (synthetic masks never overlap).
    """
    target = np.zeros(sample.image_size, np.int64)
    for m, c in zip(sample.masks, sample.class_ids.tolist()):
        target[m] = c + 1
    return target


class SemanticEvaluator:
    """Accumulates a confusion matrix over frames.

    ``add(pred, target)``: (H, W) integer maps of equal size, labels in [0, num_classes);
    target pixels equal to ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"SemanticEvaluator.add: prediction {pred.shape} and target {target.shape} differ")
        keep = target != self.ignore_index
        p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
        k = self.num_classes
        if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= k):
            raise ValueError(f"SemanticEvaluator.add: labels must be in [0, {k})")
        self.confusion += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def summarize(self, class_names: Sequence[str] = ()) -> dict[str, float]:
        """{"mIoU", "pixel_accuracy", "mean_accuracy", "IoU/<name>"...}; fractions in [0, 1]."""
        c = self.confusion.astype(np.float64)
        tp, gt, pr = np.diag(c), c.sum(1), c.sum(0)
        union = gt + pr - tp
        present = union > 0
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
        acc = np.divide(tp, gt, out=np.zeros_like(tp), where=gt > 0)
        out = {"mIoU": float(iou[present].mean()) if present.any() else 0.0,
               "pixel_accuracy": float(tp.sum() / max(c.sum(), 1)),
               "mean_accuracy": float(acc[gt > 0].mean()) if (gt > 0).any() else 0.0}
        names = list(class_names) or [str(i) for i in range(self.num_classes)]
        out.update({f"IoU/{names[i]}": float(iou[i]) for i in np.flatnonzero(present)})
        return out


def evaluate_semantic(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray], num_classes: int,
                      class_names: Sequence[str] = ()) -> dict[str, float]:
    """mIoU / pixel accuracy of paired (H, W) label maps."""
    ev = SemanticEvaluator(num_classes)
    for p, t in zip(preds, targets):
        ev.add(p, t)
    return ev.summarize(class_names)
