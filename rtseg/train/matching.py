"""Anchor matching and SSD box encoding, as YOLACT trains them.

A prior (anchor) whose best IoU with a ground-truth box is at least
``pos_threshold`` becomes a positive for that box; below ``neg_threshold`` it is
background; in between it is neutral (ignored by the class loss). Every
ground-truth box additionally claims its single best prior, whatever the IoU,
so that no object goes untrained (dbolya/yolact ``layers/box_utils.match``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rtseg.ops.boxes import box_iou, point_form

#: SSD variances for the centre offset and the log size ratio.
VARIANCES: tuple[float, float] = (0.1, 0.2)

#: ``conf_t`` value of a neutral prior (neither positive nor background).
NEUTRAL = -1


@dataclass(frozen=True)
class MatchResult:
    """Training targets of one image.

    Attributes:
        conf_t: (A,) int64; -1 neutral, 0 background, c + 1 for foreground class c.
        loc_t: (A, 4) float; encoded offsets of the matched box (meaningful for positives).
        idx_t: (A,) int64; index of the matched ground-truth box (0 where there is none).
        boxes_t: (A, 4) float; matched ground-truth box, relative xyxy.
    """

    conf_t: Tensor
    loc_t: Tensor
    idx_t: Tensor
    boxes_t: Tensor


def encode(matched: Tensor, priors: Tensor) -> Tensor:
    """Encode boxes as SSD offsets from priors; ``decode(encode(b, p), p) == b``.

    Args:
        matched: (A, 4) float boxes, relative xyxy.
        priors: (A, 4) float priors, relative cx, cy, w, h.

    Returns:
        (A, 4) float offsets ``((cx - pcx) / (0.1 pw), (cy - pcy) / (0.1 ph),
        log(w / pw) / 0.2, log(h / ph) / 0.2)``.
    """
    centre = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    centre = centre / (VARIANCES[0] * priors[:, 2:])
    size = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    size = torch.log(size.clamp(min=1e-6)) / VARIANCES[1]
    return torch.cat([centre, size], dim=1)


def match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    *,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.4,
    crowd_boxes: Tensor | None = None,
    crowd_threshold: float = 0.7,
) -> MatchResult:
    """Assign every prior to a ground-truth box, background or neutral.

    Args:
        gt_boxes: (N, 4) float, relative xyxy; N may be 0.
        gt_labels: (N,) int64 foreground class ids, 0-based.
        priors: (A, 4) float, relative cx, cy, w, h.
        pos_threshold: IoU at or above which a prior is positive.
        neg_threshold: IoU below which a prior is background.
        crowd_boxes: (M, 4) relative xyxy crowd regions (COCO ``iscrowd``), or None.
        crowd_threshold: a non-positive prior covered by a crowd region by more than this
            fraction of its own area becomes neutral (official ``crowd_iou_threshold``).

    Returns:
        The :class:`MatchResult` of the image.
    """
    num_priors = priors.shape[0]
    device = priors.device
    prior_boxes = point_form(priors)
    if gt_boxes.shape[0] == 0:
        result = MatchResult(
            conf_t=torch.zeros(num_priors, dtype=torch.int64, device=device),
            loc_t=torch.zeros(num_priors, 4, dtype=priors.dtype, device=device),
            idx_t=torch.zeros(num_priors, dtype=torch.int64, device=device),
            boxes_t=torch.zeros(num_priors, 4, dtype=priors.dtype, device=device),
        )
        _neutralise_crowd(result.conf_t, prior_boxes, crowd_boxes, crowd_threshold)
        return result
    overlaps = box_iou(gt_boxes, prior_boxes)  # (N, A)
    best_truth_overlap, best_truth_idx = overlaps.max(dim=0)
    # Each box, highest overlap first, claims its best prior; neither is reused.
    for _ in range(gt_boxes.shape[0]):
        best_prior_overlap, best_prior_idx = overlaps.max(dim=1)
        j = best_prior_overlap.argmax()
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2.0
        best_truth_idx[i] = j
    boxes_t = gt_boxes[best_truth_idx]
    conf_t = gt_labels[best_truth_idx].to(torch.int64) + 1
    conf_t[best_truth_overlap < pos_threshold] = NEUTRAL
    conf_t[best_truth_overlap < neg_threshold] = 0
    _neutralise_crowd(conf_t, prior_boxes, crowd_boxes, crowd_threshold)
    return MatchResult(
        conf_t=conf_t, loc_t=encode(boxes_t, priors), idx_t=best_truth_idx, boxes_t=boxes_t
    )


def _neutralise_crowd(conf_t: Tensor, prior_boxes: Tensor, crowd_boxes: Tensor | None, threshold: float) -> None:
    """In place: non-positive priors covered by a crowd box beyond ``threshold`` of their area → neutral."""
    if crowd_boxes is None or crowd_boxes.shape[0] == 0 or threshold >= 1:
        return
    lt = torch.maximum(prior_boxes[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(prior_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (A, M)
    area = ((prior_boxes[:, 2] - prior_boxes[:, 0]) * (prior_boxes[:, 3] - prior_boxes[:, 1]))[:, None]
    covered = (inter / area).max(dim=1).values
    conf_t[(conf_t <= 0) & (covered > threshold)] = NEUTRAL
