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

from rtseg.ops.boxes import VARIANCES, box_iou, center_size, point_form

#: ``conf_t`` value of a neutral prior (neither positive nor background).
NEUTRAL = -1


@dataclass(frozen=True)
class MatchResult:
    """Training targets of one image (shapes ``(A, ...)``) or of a batch (``(B, A, ...)``).

    Attributes:
        conf_t: (..., A) int64; -1 neutral, 0 background, c + 1 for foreground class c.
        loc_t: (..., A, 4) float; encoded offsets of the matched box (meaningful for positives).
        idx_t: (..., A) int64; index of the matched ground-truth box (0 where there is none).
        boxes_t: (..., A, 4) float; matched ground-truth box, relative xyxy (meaningful for positives).
    """

    conf_t: Tensor
    loc_t: Tensor
    idx_t: Tensor
    boxes_t: Tensor


def encode(matched: Tensor, priors: Tensor) -> Tensor:
    """Encode boxes as SSD offsets from priors; ``decode(encode(b, p), p) == b``.

    Args:
        matched: (..., A, 4) float boxes, relative xyxy.
        priors: (A, 4) float priors, relative cx, cy, w, h.

    Returns:
        (..., A, 4) float offsets ``((cx - pcx) / (0.1 pw), (cy - pcy) / (0.1 ph),
        log(w / pw) / 0.2, log(h / ph) / 0.2)``.
    """
    form = center_size(matched)
    centre = (form[..., :2] - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    size = torch.log((form[..., 2:] / priors[:, 2:]).clamp(min=1e-6)) / VARIANCES[1]
    return torch.cat([centre, size], dim=-1)


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
    """Assign every prior to a ground-truth box, background or neutral (one image).

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
        The :class:`MatchResult` of the image (:func:`match_batch` with a batch of one).
    """
    crowd = None if crowd_boxes is None else crowd_boxes[None]
    m = match_batch(gt_boxes[None], gt_labels[None], torch.ones_like(gt_labels[None], dtype=torch.bool), priors,
                    pos_threshold=pos_threshold, neg_threshold=neg_threshold, crowd_boxes=crowd,
                    crowd_valid=None if crowd is None else torch.ones(crowd.shape[:2], dtype=torch.bool, device=crowd.device),
                    crowd_threshold=crowd_threshold)
    return MatchResult(conf_t=m.conf_t[0], loc_t=m.loc_t[0], idx_t=m.idx_t[0], boxes_t=m.boxes_t[0])


def match_batch(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    valid: Tensor,
    priors: Tensor,
    *,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.4,
    crowd_boxes: Tensor | None = None,
    crowd_valid: Tensor | None = None,
    crowd_threshold: float = 0.7,
) -> MatchResult:
    """:func:`match` for a padded batch, without a host synchronisation.

    Args:
        gt_boxes: (B, N, 4) float, relative xyxy, padded to the image with the most boxes.
        gt_labels: (B, N) int64 foreground class ids, 0-based.
        valid: (B, N) bool, True for real boxes; they come first in every row.
        priors: (A, 4) float, relative cx, cy, w, h.
        crowd_boxes / crowd_valid: (B, M, 4) relative xyxy crowd regions and (B, M) bool, or None.
        pos_threshold / neg_threshold / crowd_threshold: as :func:`match`.

    Returns:
        A :class:`MatchResult` with (B, A) fields. Per image it equals :func:`match` of its real
        boxes: padding rows are IoU -1, below every real box, and the forced-match rounds of an
        image with fewer boxes than N change nothing once its own boxes are placed.
    """
    batch, num_boxes = gt_labels.shape
    num_priors = priors.shape[0]
    prior_boxes = point_form(priors)
    if num_boxes == 0:
        conf_t = torch.zeros(batch, num_priors, dtype=torch.int64, device=priors.device)
        zeros = torch.zeros(batch, num_priors, 4, dtype=priors.dtype, device=priors.device)
        _neutralise_crowd(conf_t, prior_boxes, crowd_boxes, crowd_valid, crowd_threshold)
        return MatchResult(conf_t=conf_t, loc_t=zeros, idx_t=torch.zeros_like(conf_t), boxes_t=zeros.clone())
    overlaps = box_iou(gt_boxes, prior_boxes).masked_fill(~valid[..., None], -1.0)  # (B, N, A)
    best_truth_overlap, best_truth_idx = overlaps.max(dim=1)  # (B, A)
    # Each box, highest overlap first, claims its best prior; neither is reused.
    remaining = valid.sum(dim=1)
    for round_ in range(num_boxes):
        active = (remaining > round_)[:, None]  # (B, 1): this image still has a box to place
        best_prior_overlap, best_prior_idx = overlaps.max(dim=2)  # (B, N)
        j = best_prior_overlap.argmax(dim=1, keepdim=True)  # (B, 1) box
        i = best_prior_idx.gather(1, j)  # (B, 1) its prior
        col = (torch.arange(num_priors, device=priors.device) == i) & active  # (B, A)
        row = (torch.arange(num_boxes, device=priors.device) == j) & active  # (B, N)
        overlaps.masked_fill_(col[:, None, :] | row[:, :, None], -1.0)
        best_truth_overlap.masked_fill_(col, 2.0)
        best_truth_idx = torch.where(col, j, best_truth_idx)
    boxes_t = gt_boxes.gather(1, best_truth_idx[..., None].expand(-1, -1, 4))
    conf_t = gt_labels.gather(1, best_truth_idx).to(torch.int64) + 1
    conf_t[best_truth_overlap < pos_threshold] = NEUTRAL
    conf_t[best_truth_overlap < neg_threshold] = 0
    _neutralise_crowd(conf_t, prior_boxes, crowd_boxes, crowd_valid, crowd_threshold)
    return MatchResult(conf_t=conf_t, loc_t=encode(boxes_t, priors), idx_t=best_truth_idx, boxes_t=boxes_t)


def _neutralise_crowd(conf_t: Tensor, prior_boxes: Tensor, crowd_boxes: Tensor | None, crowd_valid: Tensor | None,
                      threshold: float) -> None:
    """In place on (B, A) ``conf_t``: non-positive priors covered by a crowd box beyond ``threshold``
    of their area → neutral. crowd_boxes (B, M, 4), crowd_valid (B, M) bool (padding False)."""
    if crowd_boxes is None or crowd_boxes.shape[1] == 0 or threshold >= 1:
        return
    lt = torch.maximum(prior_boxes[None, :, None, :2], crowd_boxes[:, None, :, :2])
    rb = torch.minimum(prior_boxes[None, :, None, 2:], crowd_boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (B, A, M)
    area = ((prior_boxes[:, 2] - prior_boxes[:, 0]) * (prior_boxes[:, 3] - prior_boxes[:, 1]))[None, :, None]
    covered = (inter / area).masked_fill(~crowd_valid[:, None, :], 0.0).max(dim=2).values
    conf_t[(conf_t <= 0) & (covered > threshold)] = NEUTRAL
