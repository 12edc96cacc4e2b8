"""YOLACT (Bolya et al., ICCV 2019) as nn.Modules, in the official state-dict layout.

The network maps a normalised batch to raw tensors only; decoding, NMS and mask
assembly live in :mod:`rtseg.ops` so the network exports to ONNX/TensorRT.
Layout facts follow github dbolya/yolact (v1.0 configs): FPN P3–P7 (P6/P7 by
stride-2 convs on P5/P6, ReLU after each 3x3 prediction conv), a protonet on P3
(3×conv3x3, bilinear ×2, conv3x3, conv1x1 → k, ReLU), one prediction head shared
by all levels (conv3x3 + ReLU, then box / class / tanh-coefficient 3x3 convs),
3 square anchors per location (the official "use_square_anchors" quirk), and the
training-only semantic segmentation 1x1 conv on P3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models.backbones import build_backbone
from rtseg.ranges import check_number, number_problem
from rtseg.yolact_spec import BACKBONES, LIMITS

#: Official per-channel BGR mean / std (0..255 scale) of the ResNet transform.
MEANS_BGR = (103.94, 116.78, 123.68)
STDS_BGR = (57.38, 57.12, 58.40)
#: Anchor scales in pixels at the reference input size 550.
BASE_SCALES = (24, 48, 96, 192, 384)
#: Inclusive (low, high) of the number of anchor scales (FPN levels; P3..P7 officially) and of aspect ratios.
LEVELS = (3, 8)
RATIOS = (1, 16)


@dataclass(frozen=True)
class YolactConfig:
    """Architecture of one YOLACT model.

    backbone: "resnet101" | "resnet50" | "resnet18" | "darknet53".
    num_classes: foreground classes (background excluded).
    input_size: square network input side in pixels (frames are resized to it, aspect not kept).
    fpn_channels: FPN / head / protonet width (256 in the paper).
    num_prototypes: k, the number of prototype masks (32 in the paper).
    scales: anchor side in pixels per FPN level P3..P7 (official: 24..384 at 550, scaled by
        int(s / 550 * input_size) for other sizes, as the im400/im700 configs do).
    aspect_ratios: anchor aspect ratios per location.
    square_anchors: official v1.0 quirk: anchors are square (h = w); keep True for its checkpoints.

    Construction checks every field (ConfigError naming the first one out of range: :data:`LIMITS`,
    :data:`LEVELS`, :data:`RATIOS`), so a bad manifest or argument fails before any layer is built.
    """

    backbone: str = "resnet101"
    num_classes: int = 80
    input_size: int = 550
    fpn_channels: int = 256
    num_prototypes: int = 32
    scales: tuple[int, ...] = BASE_SCALES
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    square_anchors: bool = True

    def __post_init__(self) -> None:
        _check_config(self)

    @property
    def num_anchors(self) -> int:
        return len(self.aspect_ratios)

    @property
    def normalize(self) -> str:
        """Input normalisation: "meanstd" (ResNets) or "unit" (DarkNet: /255)."""
        return "unit" if self.backbone == "darknet53" else "meanstd"

    def with_input_size(self, size: int) -> "YolactConfig":
        """The same model at another input size, with anchor scales rescaled like the official configs."""
        return replace(self, input_size=size, scales=tuple(int(s / 550 * size) for s in BASE_SCALES))


def _check_config(cfg: YolactConfig) -> None:
    """ConfigError ``"YolactConfig: <field> must be …, got …"`` for the first field of ``cfg`` out of its range
    (:data:`LIMITS`, :data:`LEVELS`, :data:`RATIOS`)."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"YolactConfig: unknown backbone {cfg.backbone!r}; use one of {', '.join(BACKBONES)}")
    for name, (low, high) in LIMITS.items():
        check_number(f"YolactConfig: {name}", getattr(cfg, name), low, high, integer=True)
    for name, (fewest, most), integer, what in (
            ("scales", LEVELS, True, "positive anchor sizes in pixels (one per FPN level)"),
            ("aspect_ratios", RATIOS, False, "positive numbers")):
        values = getattr(cfg, name)
        if (not isinstance(values, (tuple, list)) or not fewest <= len(values) <= most
                or any(number_problem(v, 0, integer=integer, open_low=True) is not None for v in values)):
            raise ConfigError(f"YolactConfig: {name} must be {fewest} to {most} {what}, got {values!r}")
    if not isinstance(cfg.square_anchors, bool):
        raise ConfigError(f"YolactConfig: square_anchors must be true or false, got {cfg.square_anchors!r}")


#: The published v1.0 configurations.
PRESETS: dict[str, YolactConfig] = {
    "yolact_base": YolactConfig(backbone="resnet101"),
    "yolact_resnet50": YolactConfig(backbone="resnet50"),
    "yolact_darknet53": YolactConfig(backbone="darknet53"),
    "yolact_im700": YolactConfig(backbone="resnet101").with_input_size(700),
}


class FPN(nn.Module):
    """Feature pyramid: lateral 1x1 + top-down bilinear, 3x3 + ReLU, extra stride-2 levels.

    Official quirk kept for the layout: ``lat_layers`` and ``pred_layers`` are stored
    coarsest first (index 0 belongs to C5/P5).
    """

    def __init__(self, in_channels: tuple[int, ...], channels: int, num_downsample: int = 2) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in reversed(in_channels)])
        self.pred_layers = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels])
        self.downsample_layers = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=1, stride=2) for _ in range(num_downsample)]
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """feats: C3..C5 → [P3, P4, P5, P6, P7], each (B, channels, h, w)."""
        n = len(feats)
        outs: list[torch.Tensor] = [feats[0]] * n
        x: torch.Tensor | None = None
        for i, lat in enumerate(self.lat_layers):
            j = n - 1 - i
            y = lat(feats[j])
            if x is not None:
                y = y + F.interpolate(x, size=feats[j].shape[-2:], mode="bilinear", align_corners=False)
            x = y
            outs[j] = y
        for i, pred in enumerate(self.pred_layers):
            j = n - 1 - i
            outs[j] = F.relu(pred(outs[j]))
        for down in self.downsample_layers:
            outs.append(down(outs[-1]))
        return outs


class PredictionHead(nn.Module):
    """Shared head: conv3x3+ReLU, then box (4), class (C+1) and coefficient (k, tanh) convs per anchor."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_prototypes: int) -> None:
        super().__init__()
        self.num_classes = num_classes + 1
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_anchors * self.num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, ch, h, w) → loc (B, h*w*a, 4), conf logits (B, h*w*a, C+1), coef (B, h*w*a, k)."""
        x = self.upfeature(x)
        b = x.shape[0]
        loc = self.bbox_layer(x).permute(0, 2, 3, 1).reshape(b, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        coef = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_prototypes))
        return loc, conf, coef


def _protonet(channels: int, k: int) -> nn.Sequential:
    """Official layout: indices 0,2,4 conv3x3; 6 bilinear x2; 8 conv3x3; 10 conv1x1 → k (ReLU between)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(channels, k, 1),
    )


class Yolact(nn.Module):
    """The YOLACT network (no post-processing).

    ``forward(x)`` with x (B, 3, S, S) float32 normalised RGB returns a dict:
    loc (B, A, 4) SSD offsets, conf (B, A, C+1) logits (class 0 = background),
    coef (B, A, k) in [-1, 1], proto (B, S/4, S/4, k) >= 0, and in training mode
    also segm (B, C, S/8, S/8) semantic logits. A = anchors over P3..P7.
    """

    def __init__(self, cfg: YolactConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone, self.selected = build_backbone(cfg.backbone)
        in_ch = tuple(self.backbone.channels[i] for i in self.selected)
        self.fpn = FPN(in_ch, cfg.fpn_channels, num_downsample=len(cfg.scales) - len(in_ch))
        self.proto_net = _protonet(cfg.fpn_channels, cfg.num_prototypes)
        self.prediction_layers = nn.ModuleList(
            [PredictionHead(cfg.fpn_channels, cfg.num_anchors, cfg.num_classes, cfg.num_prototypes)]
        )
        self.semantic_seg_conv = nn.Conv2d(cfg.fpn_channels, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        pyramid = self.fpn([feats[i] for i in self.selected])
        proto = F.relu(self.proto_net(pyramid[0])).permute(0, 2, 3, 1).contiguous()
        head = self.prediction_layers[0]
        locs, confs, coefs = zip(*(head(p) for p in pyramid))
        out = {"loc": torch.cat(locs, 1), "conf": torch.cat(confs, 1), "coef": torch.cat(coefs, 1), "proto": proto}
        if self.training:
            out["segm"] = self.semantic_seg_conv(pyramid[0])
        return out


def level_sizes(cfg: YolactConfig) -> list[tuple[int, int]]:
    """(h, w) of P3..P7 for a square input of ``cfg.input_size`` (conv arithmetic of the backbone)."""
    def down(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1

    n = cfg.input_size
    if cfg.backbone == "darknet53":
        sizes = [n]
        for _ in range(5):
            sizes.append(down(sizes[-1], 3, 2, 1))
        c = sizes[3:6]  # strides 8, 16, 32
    else:
        n = down(down(n, 7, 2, 3), 3, 2, 1)  # stem conv + maxpool
        c = [down(n, 3, 2, 1)]
        c += [down(c[-1], 3, 2, 1), down(down(c[-1], 3, 2, 1), 3, 2, 1)]
    while len(c) < len(cfg.scales):
        c.append(down(c[-1], 3, 2, 1))
    return [(s, s) for s in c]


def make_priors(cfg: YolactConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors (A, 4) as (cx, cy, w, h) relative to the input, in the head's output order.

    Per level, row-major over locations, then aspect ratios; w = scale * sqrt(ar) / input_size,
    h = scale / sqrt(ar) / input_size (h = w with ``square_anchors``), exactly as the official code.
    """
    rows = []
    for (h, w), scale in zip(level_sizes(cfg), cfg.scales):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
        cx = ((xs + 0.5) / w).reshape(-1, 1)
        cy = ((ys + 0.5) / h).reshape(-1, 1)
        ars = torch.tensor([math.sqrt(a) for a in cfg.aspect_ratios], dtype=torch.float64)
        pw = (scale * ars / cfg.input_size).expand(cx.shape[0], -1)
        ph = pw if cfg.square_anchors else (scale / ars / cfg.input_size).expand(cx.shape[0], -1)
        level = torch.stack([cx.expand_as(pw), cy.expand_as(pw), pw, ph], dim=-1)
        rows.append(level.reshape(-1, 4))
    return torch.cat(rows).to(device=device, dtype=torch.float32)
