"""Mask Scoring R-CNN (Huang et al., CVPR 2019) on torchvision's Mask R-CNN.

:class:`MaskIoUHead` regresses the IoU of a predicted mask with its ground
truth: the RoIAlign mask features (N, 256, 14, 14) are concatenated with the
predicted mask of the class (N, 1, 28, 28) max-pooled 2x2 to 14x14, then four
3x3 convs (256, the last one stride 2 → 7x7) and three FC layers (1024, 1024,
num_classes) give one IoU per class; the one of the target class (training) or
predicted class (inference) is used.

:class:`MaskScoringRCNN` wraps torchvision's ``MaskRCNN`` unchanged and reads
what the MaskIoU head needs with forward hooks (mask RoI features, mask logits)
and a wrapper around ``select_training_samples`` (positive proposals and their
matched ground truth), so torchvision's losses and post-processing are reused.

Training target (paper, section 3.2): the mask is binarised at 0.5; the ground
truth is projected into the proposal's 28x28 grid, and since the part of the
ground truth outside the box is invisible there, its full area is recovered as
``area_in_box_28 / ratio`` with ratio = (GT pixels inside the box) / (all GT pixels).
MaskIoU = I / (pred area + full GT area - I); L2 loss with weight 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import project_masks_on_boxes

from rtseg.errors import ConfigError
from rtseg.ranges import check_number, number_problem

BACKBONES = ("resnet50", "resnet18")
#: Least and most value of each integer field of :class:`MsrcnnConfig`: the most keep a hand-edited manifest from
#: exhausting memory (min_size 100000 asked numpy for 28 GiB in warm-up, a traceback), as YOLACT's LIMITS do.
LIMITS: dict[str, tuple[int, int]] = {"num_classes": (1, 5000), "min_size": (1, 4096), "max_size": (1, 4096),
                                      "detections_per_img": (1, 10000), "rois_per_image": (1, 10000),
                                      "proposals_per_image": (1, 100000)}
#: The number of FPN levels, so of anchor sizes (P2..P5 and the pool level, as torchvision builds them).
LEVELS = 5


@dataclass(frozen=True)
class MsrcnnConfig:
    """num_classes: foreground classes (torchvision adds background as label 0).
    backbone: "resnet50" (``maskrcnn_resnet50_fpn``) or "resnet18" (same FPN Mask R-CNN, lighter for CPUs).
    min_size / max_size: torchvision's resize of the shorter / longer side.
    anchor_sizes: one anchor size per FPN level (torchvision: 32 .. 512).
    box_score_thresh / detections_per_img: torchvision's inference settings.
    rois_per_image: RoIs sampled per image for the box/mask heads in training (torchvision: 512).
    proposals_per_image: RPN proposals kept after NMS (torchvision: 2000 training, 1000 inference).
    The box head's 12.8M-weight MLP runs on every RoI, so CPU training wants both small.
    """

    num_classes: int = 80
    backbone: str = "resnet50"
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    box_score_thresh: float = 0.05
    detections_per_img: int = 100
    rois_per_image: int = 512
    proposals_per_image: int = 1000

    def __post_init__(self) -> None:
        """ConfigError naming the first field out of range (:data:`LIMITS`), before any layer is built."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"MsrcnnConfig: unknown backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        for name, (least, most) in LIMITS.items():
            check_number(f"MsrcnnConfig: {name}", getattr(self, name), least, most, integer=True)
        check_number("MsrcnnConfig: box_score_thresh", self.box_score_thresh, 0, 1, integer=False)
        sizes = self.anchor_sizes
        if (not isinstance(sizes, (tuple, list)) or len(sizes) != LEVELS
                or any(number_problem(s, 0, integer=True, open_low=True) is not None for s in sizes)):
            raise ConfigError(f"MsrcnnConfig: anchor_sizes must be {LEVELS} positive integers (anchor sides in "
                              f"pixels, one per FPN level), got {sizes!r}")


class MaskIoUHead(nn.Module):
    """(N, C, 14, 14) RoI features + (N, 1, 28, 28) mask probabilities → (N, num_classes) predicted IoU."""

    def __init__(self, *, num_classes: int, in_channels: int = 256, channels: int = 256, fc: int = 1024,
                 resolution: int = 14) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels + 1
        for i in range(4):
            layers += [nn.Conv2d(cin, channels, 3, stride=2 if i == 3 else 1, padding=1), nn.ReLU(inplace=True)]
            cin = channels
        self.convs = nn.Sequential(*layers)
        side = (resolution + 1) // 2
        self.fcs = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, fc), nn.ReLU(inplace=True),
                                 nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Linear(fc, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, F.max_pool2d(mask, 2, 2)], 1)
        return self.fcs(self.convs(x))


def build_maskrcnn(cfg: MsrcnnConfig) -> nn.Module:
    """torchvision MaskRCNN with random weights (COCO weights only when already cached and 80 classes)."""
    from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from rtseg.models.fcn import torch_cache_file

    kw = {"min_size": cfg.min_size, "max_size": cfg.max_size, "box_score_thresh": cfg.box_score_thresh,
          "box_detections_per_img": cfg.detections_per_img, "box_batch_size_per_image": cfg.rois_per_image,
          "rpn_post_nms_top_n_train": cfg.proposals_per_image, "rpn_post_nms_top_n_test": cfg.proposals_per_image,
          "rpn_anchor_generator": AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * LEVELS)}
    if cfg.backbone == "resnet50":
        coco = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
        if cfg.num_classes == 90 and torch_cache_file(coco.url):
            return maskrcnn_resnet50_fpn(weights=coco, **kw)
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=cfg.num_classes + 1, **kw)
    backbone = resnet_fpn_backbone(backbone_name=cfg.backbone, weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=cfg.num_classes + 1, **kw)


def maskiou_targets(mask_logits: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, gt_masks: torch.Tensor,
                    matched: torch.Tensor) -> torch.Tensor:
    """MaskIoU regression targets of positive proposals (paper's area-ratio correction).

    mask_logits: (N, C, M, M); labels: (N,) int64 target class; boxes: (N, 4) xyxy proposals in the
    (resized) image; gt_masks: (G, H, W) of that image; matched: (N,) index into gt_masks.
    Returns (N,) float32 IoU in [0, 1].
    """
    m = mask_logits.shape[-1]
    pred = mask_logits[torch.arange(len(labels), device=labels.device), labels] > 0  # sigmoid > 0.5
    target = project_masks_on_boxes(gt_masks, boxes, matched, m) >= 0.5
    # GT pixels inside each box, from an integral image of the GT masks
    gm = gt_masks.float()
    integral = F.pad(gm.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (G, H+1, W+1)
    h, w = gm.shape[1:]
    x0 = boxes[:, 0].floor().clamp(0, w).long()
    y0 = boxes[:, 1].floor().clamp(0, h).long()
    x1 = boxes[:, 2].ceil().clamp(0, w).long()
    y1 = boxes[:, 3].ceil().clamp(0, h).long()
    ii = integral[matched]
    n = torch.arange(len(boxes), device=boxes.device)
    inside = ii[n, y1, x1] - ii[n, y0, x1] - ii[n, y1, x0] + ii[n, y0, x0]
    total = gm.sum((1, 2))[matched]
    ratio = (inside / total.clamp_min(1.0)).clamp(1e-3, 1.0)
    inter = (pred & target).sum((1, 2)).float()
    full_gt = target.sum((1, 2)).float() / ratio
    union = pred.sum((1, 2)).float() + full_gt - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-6), torch.zeros_like(union)).clamp(0, 1)


class MaskScoringRCNN(nn.Module):
    """torchvision Mask R-CNN + MaskIoU head.

    forward(images, targets=None): images is a list of (3, H, W) float RGB in [0, 1]; targets as torchvision
    (boxes xyxy, labels 1..C, masks (G, H, W) uint8). Training returns torchvision's loss dict plus
    ``loss_maskiou``; inference returns torchvision's per-image dicts plus ``mask_iou`` (N,) — the predicted
    IoU of the predicted class.
    """

    def __init__(self, cfg: MsrcnnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rcnn = build_maskrcnn(cfg)
        self.maskiou_head = MaskIoUHead(num_classes=cfg.num_classes + 1)
        heads = self.rcnn.roi_heads
        self._seen: dict[str, object] = {}
        heads.mask_roi_pool.register_forward_hook(lambda mod, inp, out: self._seen.__setitem__("features", out))
        heads.mask_predictor.register_forward_hook(lambda mod, inp, out: self._seen.__setitem__("logits", out))
        select = heads.select_training_samples

        def select_and_remember(proposals, targets):
            out = select(proposals, targets)
            self._seen["samples"], self._seen["targets"] = out, targets
            return out

        heads.select_training_samples = select_and_remember

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        self._seen.clear()
        out = self.rcnn(images, targets)
        feats, logits = self._seen["features"], self._seen["logits"]
        if self.training:
            proposals, matched, labels, _ = self._seen["samples"]
            tgts = self._seen["targets"]
            ious, pos_labels = [], []
            for i in range(len(proposals)):
                pos = torch.where(labels[i] > 0)[0]
                pos_labels.append(labels[i][pos])
                ious.append((proposals[i][pos], matched[i][pos], tgts[i]["masks"]))
            lab = torch.cat(pos_labels)
            if len(lab) == 0:
                out["loss_maskiou"] = sum(p.sum() * 0 for p in self.maskiou_head.parameters())
                return out
            with torch.no_grad():
                chunks, start = [], 0
                for (boxes, idx, gt), lb in zip(ious, pos_labels):
                    chunks.append(maskiou_targets(logits[start:start + len(lb)], lb, boxes, gt, idx))
                    start += len(lb)
                target = torch.cat(chunks)
            pred = self._predict(feats, logits, lab)
            out["loss_maskiou"] = F.mse_loss(pred, target)
            return out
        lab = torch.cat([r["labels"] for r in out]) if out else torch.zeros(0, dtype=torch.int64)
        pred = self._predict(feats, logits, lab).clamp(0, 1)
        start = 0
        for r in out:
            r["mask_iou"] = pred[start:start + len(r["labels"])]
            start += len(r["labels"])
        return out

    def _predict(self, feats: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) predicted IoU of class ``labels`` (mask input detached, as a fixed input of the head)."""
        if len(labels) == 0:
            return torch.zeros(0, device=feats.device)
        n = torch.arange(len(labels), device=labels.device)
        mask = logits[n, labels].sigmoid()[:, None].detach()
        return self.maskiou_head(feats, mask)[n, labels]
