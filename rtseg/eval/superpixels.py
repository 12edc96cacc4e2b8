"""Standard superpixel metrics against a ground-truth segmentation.

* boundary recall (BR): fraction of ground-truth boundary pixels with a
  superpixel boundary within ``tolerance`` pixels (Chebyshev distance);
* undersegmentation error (UE, Neubert & Protzel 2012 "corrected" form):
  ``1/N * sum_g sum_{s meets g} min(|s ∩ g|, |s \\ g|)`` — the leak of each
  superpixel over each ground-truth segment, the smaller side counted;
* achievable segmentation accuracy (ASA): ``1/N * sum_s max_g |s ∩ g|`` — the
  pixel accuracy of the best labelling of superpixels with ground-truth segments.

All take (H, W) integer label maps; ids need not be contiguous.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from rtseg.data.synthetic import Instance
from rtseg.ops.overlay import boundaries


def instances_to_segmentation(instances: Sequence[Instance], size: tuple[int, int]) -> np.ndarray:
    """(H, W) int64 ground-truth segmentation: 0 = background, i + 1 = ``instances[i]`` (masks don't overlap)."""
    return masks_to_segmentation(np.array([inst.mask for inst in instances], bool).reshape(-1, *size))


def masks_to_segmentation(masks: np.ndarray) -> np.ndarray:
    """(H, W) int64 ground-truth segmentation of (N, H, W) bool masks: 0 = background, i + 1 = ``masks[i]``
    (later masks win where they overlap)."""
    seg = np.zeros(masks.shape[1:], np.int64)
    for i, mask in enumerate(masks):
        seg[mask] = i + 1
    return seg


def _contingency(sp: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(S, G) int64 counts of pixels per (superpixel, ground-truth segment) pair (ids compacted)."""
    if sp.shape != gt.shape:
        raise ValueError(f"superpixel metrics: labels {sp.shape} and ground truth {gt.shape} differ in size")
    s = np.unique(sp.reshape(-1), return_inverse=True)[1]
    g = np.unique(gt.reshape(-1), return_inverse=True)[1]
    ng = int(g.max()) + 1
    return np.bincount(s * ng + g, minlength=(int(s.max()) + 1) * ng).reshape(-1, ng)


def boundary_recall(sp: np.ndarray, gt: np.ndarray, *, tolerance: int = 2) -> float:
    """Fraction of ground-truth boundary pixels within ``tolerance`` px of a superpixel boundary (1.0 if none)."""
    gt_edge = boundaries(gt)
    if not gt_edge.any():
        return 1.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near = cv2.dilate(boundaries(sp).astype(np.uint8), kernel).astype(bool)
    return float((near & gt_edge).sum() / gt_edge.sum())


def undersegmentation_error(sp: np.ndarray, gt: np.ndarray) -> float:
    """Corrected undersegmentation error in [0, 1) (lower is better)."""
    c = _contingency(sp, gt)
    outside = c.sum(1, keepdims=True) - c
    return float(np.minimum(c, outside)[c > 0].sum() / c.sum())


def achievable_segmentation_accuracy(sp: np.ndarray, gt: np.ndarray) -> float:
    """ASA in (0, 1] (higher is better)."""
    c = _contingency(sp, gt)
    return float(c.max(1).sum() / c.sum())


def superpixel_metrics(sp: np.ndarray, gt: np.ndarray, *, tolerance: int = 2) -> dict[str, float]:
    """{"boundary_recall", "undersegmentation_error", "asa", "num_segments"} of one frame."""
    return {"boundary_recall": boundary_recall(sp, gt, tolerance=tolerance),
            "undersegmentation_error": undersegmentation_error(sp, gt),
            "asa": achievable_segmentation_accuracy(sp, gt),
            "num_segments": float(len(np.unique(sp)))}
