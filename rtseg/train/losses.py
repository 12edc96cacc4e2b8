"""YOLACT training loss (dbolya/yolact ``MultiBoxLoss`` with the ``yolact_base`` settings).

Four terms, each weighted as the official configuration:

* ``conf`` (1.0): softmax cross-entropy over positives and the hardest
  negatives, 3 negatives per positive (OHEM); neutral priors are ignored.
* ``box`` (1.5): smooth-L1 on the SSD-encoded offsets of positives.
* ``mask`` (6.125): per-pixel BCE of ``sigmoid(proto @ coef)`` against the
  ground-truth mask downsampled to the prototype size and binarised, cropped to
  the ground-truth box and normalised by that box's area in prototype pixels
  (``mask_proto_normalize_emulate_roi_pooling``; each side counted as at least one
  pixel: :func:`box_area_on_grid`); at most ``masks_to_train``
  positives per image, the loss rescaled when sampled.
* ``semantic`` (1.0): sigmoid BCE of the auxiliary per-class segmentation head
  on P3, normalised by its area and by the batch size.

``conf``, ``box`` and ``mask`` are divided by the number of positives in the
batch. The batch is processed as a whole (targets padded into a :class:`TargetBatch`,
matching and mask loss without per-image Python loops, one host synchronisation), so a
GPU step is not bound by kernel launches and syncs; per image the results are the
official per-image ones. Two deliberate deviations: the mask BCE is computed from logits
(numerically safe, autocast-safe) and zeroed outside the box, where the
official code crops the sigmoid and then clamps ``log(0)`` to -100 for the few
ground-truth pixels that fall outside their own box after downsampling; and a box
narrower or shorter than one prototype pixel is normalised as one pixel wide or high
(:func:`box_area_on_grid`: the official divides by its sub-pixel area, which grows the
loss without bound as the box shrinks; at the official 550 px input the discarded box
size, 4/550 of the input, is just over one prototype pixel, at a small one it is far
under it, and tiny objects diverged the training).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rtseg.ops.masks import crop_masks
from rtseg.train.matching import MatchResult, match_batch


@dataclass(frozen=True)
class Target:
    """Ground truth of one training image.

    Attributes:
        boxes: (N, 4) float32, relative xyxy in [0, 1].
        labels: (N,) int64 foreground class ids, 0-based.
        masks: (N, H, W) bool (or float in {0, 1}) at the network input resolution.
        crowd_boxes: (M, 4) float32 relative xyxy crowd regions (never targets), or None.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    crowd_boxes: Tensor | None = None


@dataclass(frozen=True)
class TargetBatch:
    """Ground truth of a batch, padded to the image with the most objects (``B`` images).

    Attributes:
        boxes: (B, N, 4) float32, relative xyxy (padding rows 0).
        labels: (B, N) int64 foreground class ids, 0-based (padding 0).
        valid: (B, N) bool, True for real objects; they come first in every row.
        masks: (G, H, W) bool at the network input resolution, the G real objects of all images
            in order (not padded: a batch with one crowded image stays small).
        mask_index: (B, N) int64, the row of ``masks`` of each object (G for padding).
        crowd_boxes: (B, M, 4) float32 relative xyxy crowd regions; crowd_valid: (B, M) bool.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    masks: Tensor
    mask_index: Tensor
    crowd_boxes: Tensor
    crowd_valid: Tensor

    @classmethod
    def stack(cls, targets: Sequence[Target]) -> "TargetBatch":
        """Pad per-image :class:`Target` records (all masks of one H×W) into one batch."""
        if not targets:
            raise ValueError("TargetBatch.stack: no targets")
        n = max(len(t.labels) for t in targets)
        m = max(0 if t.crowd_boxes is None else len(t.crowd_boxes) for t in targets)
        h, w = targets[0].masks.shape[-2:]
        counts = [len(t.labels) for t in targets]
        batch = cls(boxes=torch.zeros(len(targets), n, 4), labels=torch.zeros(len(targets), n, dtype=torch.int64),
                    valid=torch.zeros(len(targets), n, dtype=torch.bool),
                    masks=torch.cat([t.masks.reshape(-1, h, w) > 0.5 for t in targets]),
                    mask_index=torch.full((len(targets), n), sum(counts), dtype=torch.int64),
                    crowd_boxes=torch.zeros(len(targets), m, 4), crowd_valid=torch.zeros(len(targets), m, dtype=torch.bool))
        for b, t in enumerate(targets):
            k = counts[b]
            batch.boxes[b, :k], batch.labels[b, :k], batch.valid[b, :k] = t.boxes, t.labels, True
            batch.mask_index[b, :k] = torch.arange(sum(counts[:b]), sum(counts[:b]) + k)
            if t.crowd_boxes is not None:
                batch.crowd_boxes[b, :len(t.crowd_boxes)] = t.crowd_boxes
                batch.crowd_valid[b, :len(t.crowd_boxes)] = True
        return batch

    def _map(self, fn) -> "TargetBatch":
        return TargetBatch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> "TargetBatch":
        """This batch with every tensor moved to ``device`` (non-blocking from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "TargetBatch":
        """Page-locked copy (``DataLoader(pin_memory=True)`` calls this)."""
        return self._map(lambda t: t.pin_memory())


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


def padded_masks(masks: Tensor, mask_index: Tensor, size: tuple[int, int]) -> Tensor:
    """The ground-truth masks at ``size`` (h, w), per image: (B, N, h, w) float {0,1} (padding 0).

    masks: (G, H, W) float {0,1} (``TargetBatch.masks`` as float); mask_index: (B, N) its rows.
    Each mask is resized bilinearly, then thresholded at 0.5 (official ``F.interpolate`` + ``gt``).
    """
    if len(masks):
        masks = F.interpolate(masks[None], size, mode="bilinear", align_corners=False)[0].gt(0.5).float()
    else:
        masks = masks.new_zeros((0, *size))
    return torch.cat([masks, masks.new_zeros((1, *size))])[mask_index]


def sample_positives(pos: Tensor, limit: int) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``limit`` positives per image, drawn uniformly at random (official ``masks_to_train``).

    pos: (B, A) bool. Returns ``(prior_idx (B, K) int64, slot_valid (B, K) bool, scale (B,) float)``
    with K = min(limit, A, most positives in one image): the chosen priors of each image (slots
    beyond its count are padding), and num_pos / kept per image (1 when nothing was dropped).
    One host synchronisation (for K).
    """
    num_pos = pos.sum(dim=1)
    k = min(limit, pos.shape[1], int(num_pos.max()))
    order = torch.rand(pos.shape, device=pos.device).masked_fill(~pos, 2.0).argsort(dim=1)[:, :k]
    kept = num_pos.clamp(max=limit)
    slot_valid = torch.arange(k, device=pos.device) < kept[:, None]
    return order, slot_valid, num_pos.clamp(min=1) / kept.clamp(min=1)


def _mask_loss(proto: Tensor, coef: Tensor, match: MatchResult, gt_masks: Tensor, masks_to_train: int) -> Tensor:
    """Sum over images of the box-normalised, cropped mask BCE of (sampled) positives.

    proto (B, hp, wp, k), coef (B, A, k), match with (B, A) fields, gt_masks (B, N, hp, wp) float {0,1}.
    """
    batch, hp, wp, num_protos = proto.shape
    prior_idx, slot_valid, scale = sample_positives(match.conf_t > 0, masks_to_train)
    k = prior_idx.shape[1]
    if k == 0:
        return proto.new_zeros((), dtype=torch.float32)
    pos_coef = coef.gather(1, prior_idx[..., None].expand(-1, -1, num_protos))  # (B, K, k)
    pos_boxes = match.boxes_t.gather(1, prior_idx[..., None].expand(-1, -1, 4))  # (B, K, 4)
    gt_idx = match.idx_t.gather(1, prior_idx)  # (B, K)
    mask_t = gt_masks.gather(1, gt_idx[..., None, None].expand(-1, -1, hp, wp))  # (B, K, hp, wp)
    logits = torch.bmm(proto.float().reshape(batch, hp * wp, num_protos), pos_coef.float().transpose(1, 2))
    bce = F.binary_cross_entropy_with_logits(logits, mask_t.flatten(2).transpose(1, 2), reduction="none")
    bce = bce.view(batch, hp, wp, k).permute(1, 2, 0, 3).reshape(hp, wp, batch * k)
    flat_boxes = pos_boxes.reshape(batch * k, 4)
    bce = crop_masks(bce, flat_boxes)
    per_mask = (bce.sum(dim=(0, 1)) / box_area_on_grid(flat_boxes, hp, wp)).view(batch, k)
    return torch.where(slot_valid, per_mask * scale[:, None], 0.0).sum()


def box_area_on_grid(boxes: Tensor, h: int, w: int) -> Tensor:
    """The area the mask loss of each box is divided by: its width × height in cells of an ``h`` × ``w`` grid (the
    prototypes'), each side at least one cell.

    boxes: (n, 4) float relative xyxy. Returns (n,) float, >= 1.

    The official (``mask_proto_normalize_emulate_roi_pooling``) divides by width × height as they are, and so does
    this for every box of at least one cell a side; that is every box at the official 550 px input, whose
    augmentation discards boxes under 4/550 of the input (:data:`rtseg.train.augment.MIN_BOX_FRACTION`), 1.004
    prototype cells there. At a smaller input that size is under one cell (0.17 at 96 px), and such a box still has
    the BCE of the 2 to 3 cells a side its crop keeps (:func:`~rtseg.ops.masks.crop_masks` pads by one cell), so its
    loss grew without bound as it shrank (a quarter-cell box weighed 16 times a one-cell box at the same place) and
    tiny objects at ``--input-size 96`` diverged the training at the default learning rate. The one deviation:
    each side counts as at least one cell, so such a box weighs as a one-cell box.
    """
    return ((boxes[:, 2] - boxes[:, 0]) * w).clamp(min=1.0) * ((boxes[:, 3] - boxes[:, 1]) * h).clamp(min=1.0)


def _semantic_loss(segm: Tensor, labels: Tensor, valid: Tensor, gt_masks: Tensor) -> Tensor:
    """Sum over images of the per-class sigmoid BCE, normalised by the map area.

    segm (B, C, h, w) logits; labels / valid (B, N); gt_masks (B, N, h, w) float {0,1}.
    """
    num_classes, h, w = segm.shape[1:]
    with torch.no_grad():
        onehot = F.one_hot(labels, num_classes).float() * valid[..., None]  # (B, N, C)
        segment_t = torch.einsum("bnc,bnhw->bchw", onehot, gt_masks).clamp_(max=1.0)  # per-class union
    return F.binary_cross_entropy_with_logits(segm.float(), segment_t, reduction="sum") / (h * w)


def yolact_loss(
    outputs: dict[str, Tensor], targets: TargetBatch | Sequence[Target], priors: Tensor,
    config: LossConfig = LossConfig()
) -> dict[str, Tensor]:
    """Weighted YOLACT loss terms of one batch.

    Args:
        outputs: the training-mode model outputs ``loc (B,A,4)``, ``conf (B,A,C+1)``
            logits, ``coef (B,A,k)``, ``proto (B,Hp,Wp,k)`` and ``segm (B,C,H3,W3)`` logits.
        targets: a :class:`TargetBatch` (or one :class:`Target` per image), on the outputs' device.
        priors: (A, 4) relative cx, cy, w, h.
        config: weights and sampling.

    Returns:
        Scalar float32 tensors ``box``, ``conf``, ``mask``, ``semantic`` (weighted)
        and their sum ``total``.
    """
    if not isinstance(targets, TargetBatch):
        targets = TargetBatch.stack(targets)
    loc, conf = outputs["loc"], outputs["conf"]
    batch = loc.shape[0]
    matches = match_batch(targets.boxes, targets.labels, targets.valid, priors, pos_threshold=config.pos_threshold,
                          neg_threshold=config.neg_threshold, crowd_boxes=targets.crowd_boxes,
                          crowd_valid=targets.crowd_valid, crowd_threshold=config.crowd_threshold)
    conf_t, loc_t = matches.conf_t, matches.loc_t
    pos = conf_t > 0
    num_pos = pos.sum().clamp(min=1).float()

    box = F.smooth_l1_loss(loc[pos].float(), loc_t[pos], reduction="sum") * config.box_weight

    neg = ohem_negatives(conf, conf_t, config.negpos_ratio)
    keep = pos | neg
    conf_loss = F.cross_entropy(conf[keep].float(), conf_t[keep], reduction="sum") * config.conf_weight

    with torch.no_grad():  # ground-truth masks at the prototype and the semantic map sizes
        gt = targets.masks.float()
        proto_masks = padded_masks(gt, targets.mask_index, tuple(outputs["proto"].shape[1:3]))
        segm_masks = padded_masks(gt, targets.mask_index, tuple(outputs["segm"].shape[2:]))
    mask = _mask_loss(outputs["proto"], outputs["coef"], matches, proto_masks, config.masks_to_train)
    mask = mask * config.mask_weight
    semantic = _semantic_loss(outputs["segm"], targets.labels, targets.valid, segm_masks) * config.semantic_weight

    losses = {
        "box": box / num_pos,
        "conf": conf_loss / num_pos,
        "mask": mask / num_pos,
        "semantic": semantic / batch,
    }
    losses["total"] = losses["box"] + losses["conf"] + losses["mask"] + losses["semantic"]
    return losses
