"""FCN (Long, Shelhamer & Darrell, CVPR 2015) for semantic segmentation.

:class:`FCN` follows the authors' caffe nets (``voc-fcn{32,16,8}s``):

* VGG16 body; ``conv1_1`` is padded by 100 so that any input, however small,
  survives the five ceil-mode poolings and the 7x7 ``fc6``;
* ``fc6`` (7x7) and ``fc7`` (1x1) are the classifier's fully connected layers
  as convolutions, with dropout; ``score_fr`` scores every class;
* skip fusion: the 2x-upsampled score is summed with ``score_pool4`` (cropped
  at offset 5) and, for FCN-8s, 2x again with ``score_pool3`` (offset 9); the
  final transposed convolution (x32, x16 or x8) is cropped at offset 19, 27 or
  31 to the input size;
* transposed convolutions are initialised to bilinear interpolation and frozen
  by default (the paper's ``lr_mult: 0``).

``FcnConfig.width`` scales every channel count (1.0 = the paper's VGG16 with
4096-wide fc layers) so that a small model trains on a CPU.
:func:`torchvision_fcn` builds torchvision's ``fcn_resnet50/101`` instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtseg.errors import ConfigError
from rtseg.ranges import check_number

ARCHS = ("fcn8s", "fcn16s", "fcn32s")
TORCHVISION_ARCHS = ("fcn_resnet50", "fcn_resnet101")
#: Crop offsets of the caffe nets: (score_pool4, score_pool3, final) per arch.
OFFSETS = {"fcn32s": (0, 0, 19), "fcn16s": (5, 0, 27), "fcn8s": (5, 9, 31)}
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@dataclass(frozen=True)
class FcnConfig:
    """arch: "fcn8s" | "fcn16s" | "fcn32s". num_classes: including background (class 0).
    width: channel multiplier of the VGG16 body and fc layers (1.0 = paper).
    learn_upsampling: train the transposed convolutions (paper: frozen bilinear).
    """

    arch: str = "fcn8s"
    num_classes: int = 21
    width: float = 1.0
    learn_upsampling: bool = False

    def __post_init__(self) -> None:
        """ConfigError naming the first field out of range, before any layer is built."""
        if self.arch not in ARCHS:
            raise ConfigError(f"FcnConfig: unknown arch {self.arch!r}; use one of {', '.join(ARCHS)}")
        check_number("FcnConfig: num_classes", self.num_classes, 2, integer=True)
        check_number("FcnConfig: width", self.width, 0, 1, integer=False, open_low=True)
        if not isinstance(self.learn_upsampling, bool):
            raise ConfigError(f"FcnConfig: learn_upsampling must be true or false, got {self.learn_upsampling!r}")


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """(C, C, k, k) weight that makes a ConvTranspose2d(stride=k//2) bilinear upsampling, per channel."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - centre).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


def _upsample(channels: int, factor: int, learn: bool) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learn)
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """Caffe's Crop layer: ``x[..., offset:offset+H, offset:offset+W]`` with (H, W) from ``like``."""
    h, w = like.shape[-2:]
    return x[..., offset:offset + h, offset:offset + w]


class FCN(nn.Module):
    """FCN-32s/16s/8s on a (width-scaled) VGG16.

    forward(x): (B, 3, H, W) normalised RGB float -> (B, num_classes, H, W) logits, any H, W >= 1.
    """

    def __init__(self, cfg: FcnConfig) -> None:
        super().__init__()
        self.cfg = cfg

        def c(n: int) -> int:  # channel scaling
            return max(round(n * cfg.width), 4)

        stages, cin = [], 3
        for i, block in enumerate(_VGG16):
            layers: list[nn.Module] = []
            for j, n in enumerate(block):
                layers += [nn.Conv2d(cin, c(n), 3, padding=100 if i == j == 0 else 1), nn.ReLU(inplace=True)]
                cin = c(n)
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # outputs: pool1 .. pool5
        fc = c(4096)
        k = cfg.num_classes
        self.fc6 = nn.Sequential(nn.Conv2d(cin, fc, 7), nn.ReLU(inplace=True), nn.Dropout2d(0.5))
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(0.5))
        self.score_fr = nn.Conv2d(fc, k, 1)
        learn = cfg.learn_upsampling
        if cfg.arch == "fcn32s":
            self.upscore = _upsample(k, 32, learn)
        else:
            self.upscore2 = _upsample(k, 2, learn)
            self.score_pool4 = nn.Conv2d(c(512), k, 1)
            if cfg.arch == "fcn16s":
                self.upscore = _upsample(k, 16, learn)
            else:
                self.score_pool3 = nn.Conv2d(c(256), k, 1)
                self.upscore_pool4 = _upsample(k, 2, learn)
                self.upscore = _upsample(k, 8, learn)
        for m in self.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.out_channels == k:  # the paper zero-initialises the score layers
                nn.init.zeros_(m.weight)
            else:  # He init: a deep ReLU stack without BatchNorm trains from scratch (the paper starts from ImageNet)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        pool3, pool4 = feats[2], feats[3]
        score = self.score_fr(self.fc7(self.fc6(h)))
        off4, off3, off_final = OFFSETS[self.cfg.arch]
        if self.cfg.arch != "fcn32s":
            up = self.upscore2(score)
            score = up + _crop(self.score_pool4(pool4), off4, up)
            if self.cfg.arch == "fcn8s":
                up = self.upscore_pool4(score)
                score = up + _crop(self.score_pool3(pool3), off3, up)
        return _crop(self.upscore(score), off_final, x)


def torch_cache_file(url: str) -> str | None:
    """Path of ``url``'s file in the user's torch hub cache, or None when it is not there (never downloads).

    A file that is there but cannot be loaded (a broken download) is a WeightsError naming it, before
    torchvision would fail on it with a traceback; it is read once more by torchvision's builder.
    """
    from pathlib import Path

    from rtseg.weights import load_torch_file

    p = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not p.is_file():
        return None
    load_torch_file(p, advice="a broken download? delete it (the model then starts from random weights) or replace "
                              "it with a good copy")
    return str(p)


def torchvision_fcn_weights(arch: str):
    """torchvision's pretrained weights of ``arch`` (one of :data:`TORCHVISION_ARCHS`): COCO with VOC labels, a
    ``torchvision.models.WeightsEnum`` member whose ``url`` names the file the torch cache holds."""
    from torchvision.models import segmentation as seg

    enum = seg.FCN_ResNet50_Weights if arch == "fcn_resnet50" else seg.FCN_ResNet101_Weights
    return enum.COCO_WITH_VOC_LABELS_V1


def torchvision_fcn(arch: str, num_classes: int) -> tuple[nn.Module, bool]:
    """torchvision's ``fcn_resnet50/101`` and whether pretrained weights were used.

    Pretrained (COCO with VOC labels, 21 classes) only when they are already in
    the torch cache and ``num_classes == 21``; otherwise random (``weights=None``).
    The module maps (B, 3, H, W) normalised RGB to ``{"out": (B, num_classes, H, W)}``.
    """
    from torchvision.models import segmentation as seg

    if arch not in TORCHVISION_ARCHS:
        raise ConfigError(f"unknown torchvision FCN {arch!r}; use one of {', '.join(TORCHVISION_ARCHS)}")
    weights = torchvision_fcn_weights(arch)
    cached = num_classes == 21 and torch_cache_file(weights.url) is not None
    builder = getattr(seg, arch)
    if cached:
        return builder(weights=weights, aux_loss=None), True
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), False
