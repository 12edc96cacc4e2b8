"""Non-maximum suppression variants of YOLACT (torch reference implementations).

All functions take candidate boxes (N, 4) point form and per-class scores (C, N)
(foreground classes only) and return ``(index (M,), class_id (M,), score (M,))``
sorted by score descending, where ``index`` points into the N candidates.
"""
from __future__ import annotations

from typing import Callable

import torch

from rtseg.ops.boxes import box_iou


def _top_over_classes(idx: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor,
                      max_detections: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores, order = scores.sort(0, descending=True)
    order, scores = order[:max_detections], scores[:max_detections]
    return idx[order], classes[order], scores


def fast_nms_keep(cand: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Fast NMS's keep decision: (C, K, 4) score-sorted candidates per class → (C, K) bool.

    The IoU upper triangle (diagonal excluded) and its column max: a candidate is dropped when
    some higher-scoring candidate of its class overlaps it by more than ``iou_threshold``.
    """
    iou = box_iou(cand, cand).triu_(diagonal=1)
    return iou.max(dim=1).values <= iou_threshold


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float = 0.5,
             top_k: int = 200, max_detections: int = 100,
             keep_fn: Callable[[torch.Tensor, float], torch.Tensor] = fast_nms_keep, padded: bool = False,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast NMS (YOLACT paper, Sec. 3.3), per class.

    Per class take the ``top_k`` candidates by score, compute their IoU matrix, keep the
    upper triangle (diagonal excluded) and drop a candidate whose column max exceeds
    ``iou_threshold`` — boxes already suppressed still suppress. Then keep the best
    ``max_detections`` over all classes. boxes (N, 4), scores (C, N) → (index (M,),
    class_id (M,), score (M,)), score descending. ``keep_fn`` makes the keep decision
    (:func:`fast_nms_keep`; :func:`rtseg.ops.cupy_ops.fast_nms` passes its CUDA kernel).

    padded: fixed-size outputs computed without waiting for the device: exactly
    min(max_detections, C·min(top_k, N)) rows, score descending, where rows that are not
    detections (suppressed) carry score -1. Negative input scores mark candidates that must not
    be detected (the engine's below-threshold candidates): they sort after every real one, so
    they change nobody's keep decision, and come out with score -1 as well.
    """
    num_classes, n = scores.shape
    if n == 0 or num_classes == 0:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    sorted_scores, idx = scores.topk(min(top_k, n), dim=1)
    idx = idx.contiguous()
    cand = boxes[idx.view(-1)].view(num_classes, -1, 4)
    keep = keep_fn(cand, iou_threshold)
    if padded:
        flat = torch.where(keep & (sorted_scores >= 0), sorted_scores, -1).view(-1)
        best, order = flat.sort(0, descending=True)
        order = order[:max_detections]
        return idx.view(-1)[order], order // idx.shape[1], best[:max_detections]
    classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)
    return _top_over_classes(idx[keep], classes[keep], sorted_scores[keep], max_detections)


def cross_class_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float = 0.5,
                         top_k: int = 200, max_detections: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast NMS over all classes at once: each candidate takes its best class first."""
    if scores.shape[1] == 0 or scores.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    best, classes = scores.max(dim=0)
    _, idx = best.sort(0, descending=True)
    idx = idx[:top_k]
    iou = box_iou(boxes[idx], boxes[idx]).triu_(diagonal=1)
    kept = idx[iou.max(dim=0).values <= iou_threshold]
    return _top_over_classes(kept, classes[kept], best[kept], max_detections)


def traditional_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float = 0.5,
                    score_threshold: float = 0.05, max_detections: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classic sequential NMS per class (a suppressed box suppresses nothing).

    Candidates of a class above ``score_threshold`` are visited in score order; one is kept
    unless it overlaps a kept box of the same class by IoU > ``iou_threshold``.
    """
    idx_all, cls_all, score_all = [], [], []
    for c in range(scores.shape[0]):
        mask = scores[c] > score_threshold
        cand = torch.nonzero(mask).flatten()
        if cand.numel() == 0:
            continue
        s, order = scores[c, cand].sort(descending=True)
        cand = cand[order]
        iou = box_iou(boxes[cand], boxes[cand])
        keep = torch.ones(len(cand), dtype=torch.bool, device=boxes.device)
        for i in range(len(cand)):
            if keep[i]:
                later = iou[i, i + 1:] > iou_threshold
                keep[i + 1:] &= ~later
        idx_all.append(cand[keep])
        cls_all.append(torch.full((int(keep.sum()),), c, dtype=torch.long, device=boxes.device))
        score_all.append(s[keep])
    if not idx_all:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    return _top_over_classes(torch.cat(idx_all), torch.cat(cls_all), torch.cat(score_all), max_detections)
