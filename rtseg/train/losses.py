"""YOLACT training loss (dbolya/yolact ``MultiBoxLoss`` with the ``yolact_base`` settings).

Four terms, each weighted as the official configuration:

* ``conf`` (1.0): softmax cross-entropy over positives and the hardest
  negatives, 3 negatives per positive (OHEM); neutral priors are ignored.
* ``box`` (1.5): smooth-L1 on the SSD-encoded offsets of positives.
* ``mask`` (6.125): per-pixel BCE of ``sigmoid(proto @ coef)`` against the
  ground-truth mask downsampled to the prototype size and binarised, cropped to
  the ground-truth box and normalised by that box's area in prototype pixels
  (``mask_proto_normalize_emulate_roi_pooling``); at most ``masks_to_train``
  positives per image, the loss rescaled when sampled.
* ``semantic`` (1.0): sigmoid BCE of the auxiliary per-class segmentation head
  on P3, normalised by its area and by the batch size.

``conf``, ``box`` and ``mask`` are divided by the number of positives in the
batch. One deliberate deviation: the mask BCE is computed from logits
(numerically safe, autocast-safe) and zeroed outside the box, where the
official code crops the sigmoid and then clamps ``log(0)`` to -100 for the few
ground-truth pixels that fall outside their own box after downsampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rtseg.ops.masks import crop_masks
from rtseg.train.matching import MatchResult, match


@dataclass(frozen=True)
class Target:
    """Ground truth of one training image.

    Attributes:
        boxes: (N, 4) float32, relative xyxy in [0, 1].
        labels: (N,) int64 foreground class ids, 0-based.
        masks: (N, H, W) float32 in {0, 1} at the network input resolution.
        crowd_boxes: (M, 4) float32 relative xyxy crowd regions (never targets), or None.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    crowd_boxes: Tensor | None = None

    def to(self, device: torch.device | str) -> "Target":
        """This target with every tensor moved to ``device``."""
        return Target(
            boxes=self.boxes.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            masks=self.masks.to(device, non_blocking=True),
            crowd_boxes=None if self.crowd_boxes is None else self.crowd_boxes.to(device, non_blocking=True),
        )


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and sampling, defaults from the official ``yolact_base_config``."""

    conf_weight: float = 1.0
    box_weight: float = 1.5
    mask_weight: float = 6.125
    semantic_weight: float = 1.0
    negpos_ratio: int = 3
    masks_to_train: int = 100
    pos_threshold: float = 0.5
    neg_threshold: float = 0.4
    crowd_threshold: float = 0.7


def ohem_negatives(conf: Tensor, conf_t: Tensor, negpos_ratio: int = 3) -> Tensor:
    """Pick the hardest background priors, ``negpos_ratio`` per positive, per image.

    Args:
        conf: (B, A, C + 1) class logits, class 0 = background.
        conf_t: (B, A) int64 targets (-1 neutral, 0 background, > 0 foreground).
        negpos_ratio: negatives kept per positive.

    Returns:
        (B, A) bool, True for the chosen negatives (never a positive or a neutral).
    """
    with torch.no_grad():
        hardness = torch.logsumexp(conf.float(), dim=-1) - conf[..., 0].float()  # -log p(bg)
        candidate = conf_t == 0
        hardness = hardness.masked_fill(~candidate, float("-inf"))
        order = hardness.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        num_pos = (conf_t > 0).sum(dim=1, keepdim=True)
        num_neg = (negpos_ratio * num_pos).clamp(max=conf_t.shape[1] - 1)
        return (rank < num_neg) & candidate


def _downsample(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) {0,1} masks -> (N, h, w) float {0,1}: bilinear, then > 0.5."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    small = F.interpolate(masks[None].float(), size, mode="bilinear", align_corners=False)[0]
    return small.gt(0.5).float()


def _mask_loss(
    proto: Tensor, coef: Tensor, matches: list[MatchResult], targets: list[Target], masks_to_train: int
) -> Tensor:
    """Sum over images of the box-normalised, cropped mask BCE of the positives."""
    hp, wp = proto.shape[1:3]
    total = proto.new_zeros((), dtype=torch.float32)
    for b, (m, t) in enumerate(zip(matches, targets)):
        pos = m.conf_t > 0
        gt_idx = m.idx_t[pos]
        num_pos = int(gt_idx.numel())
        if num_pos == 0:
            continue
        pos_coef = coef[b, pos]
        pos_boxes = m.boxes_t[pos]
        scale = 1.0
        if num_pos > masks_to_train:
            keep = torch.randperm(num_pos, device=coef.device)[:masks_to_train]
            pos_coef, pos_boxes, gt_idx = pos_coef[keep], pos_boxes[keep], gt_idx[keep]
            scale = num_pos / masks_to_train
        with torch.no_grad():
            mask_t = _downsample(t.masks, (hp, wp))[gt_idx].permute(1, 2, 0)  # (hp, wp, P)
        logits = proto[b].float() @ pos_coef.float().t()  # (hp, wp, P)
        bce = F.binary_cross_entropy_with_logits(logits, mask_t, reduction="none")
        bce = crop_masks(bce, pos_boxes)
        box_area = ((pos_boxes[:, 2] - pos_boxes[:, 0]) * wp) * ((pos_boxes[:, 3] - pos_boxes[:, 1]) * hp)
        total = total + (bce.sum(dim=(0, 1)) / box_area.clamp(min=1e-4)).sum() * scale
    return total


def _semantic_loss(segm: Tensor, targets: list[Target]) -> Tensor:
    """Sum over images of the per-class sigmoid BCE, normalised by the map area."""
    num_classes, h, w = segm.shape[1:]
    total = segm.new_zeros((), dtype=torch.float32)
    for b, t in enumerate(targets):
        with torch.no_grad():
            small = _downsample(t.masks, (h, w))
            segment_t = segm.new_zeros((num_classes, h, w), dtype=torch.float32)
            segment_t.index_add_(0, t.labels, small).clamp_(max=1.0)  # per-class union of {0,1} masks
        bce = F.binary_cross_entropy_with_logits(segm[b].float(), segment_t, reduction="sum")
        total = total + bce / (h * w)
    return total


def yolact_loss(
    outputs: dict[str, Tensor], targets: list[Target], priors: Tensor, config: LossConfig = LossConfig()
) -> dict[str, Tensor]:
    """Weighted YOLACT loss terms of one batch.

    Args:
        outputs: the training-mode model outputs ``loc (B,A,4)``, ``conf (B,A,C+1)``
            logits, ``coef (B,A,k)``, ``proto (B,Hp,Wp,k)`` and ``segm (B,C,H3,W3)`` logits.
        targets: one :class:`Target` per image, on the outputs' device.
        priors: (A, 4) relative cx, cy, w, h.
        config: weights and sampling.

    Returns:
        Scalar float32 tensors ``box``, ``conf``, ``mask``, ``semantic`` (weighted)
        and their sum ``total``.
    """
    loc, conf = outputs["loc"], outputs["conf"]
    batch = loc.shape[0]
    matches = [
        match(t.boxes, t.labels, priors, pos_threshold=config.pos_threshold, neg_threshold=config.neg_threshold,
              crowd_boxes=t.crowd_boxes, crowd_threshold=config.crowd_threshold)
        for t in targets
    ]
    conf_t = torch.stack([m.conf_t for m in matches])
    loc_t = torch.stack([m.loc_t for m in matches])
    pos = conf_t > 0
    num_pos = pos.sum().clamp(min=1).float()

    box = F.smooth_l1_loss(loc[pos].float(), loc_t[pos], reduction="sum") * config.box_weight

    neg = ohem_negatives(conf, conf_t, config.negpos_ratio)
    keep = pos | neg
    conf_loss = F.cross_entropy(conf[keep].float(), conf_t[keep], reduction="sum") * config.conf_weight

    mask = _mask_loss(outputs["proto"], outputs["coef"], matches, targets, config.masks_to_train)
    mask = mask * config.mask_weight
    semantic = _semantic_loss(outputs["segm"], targets) * config.semantic_weight

    losses = {
        "box": box / num_pos,
        "conf": conf_loss / num_pos,
        "mask": mask / num_pos,
        "semantic": semantic / batch,
    }
    losses["total"] = losses["box"] + losses["conf"] + losses["mask"] + losses["semantic"]
    return losses
