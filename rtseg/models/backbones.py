"""Backbones with the official YOLACT state-dict layout.

Every backbone returns a tuple of feature maps, one per stage (``layers.i``),
finest first. Key names follow github dbolya/yolact so its published
checkpoints load unchanged: ``conv1``, ``bn1``, ``layers.{i}.{j}.conv1`` … for
ResNets, ``_preconv.0``, ``layers.{i}.{j}.conv1.0`` … for DarkNet-53.
"""
from __future__ import annotations

import torch
from torch import nn

from rtseg.yolact_spec import BACKBONES


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 → 3x3 → 1x1, expansion 4), stride on the 3x3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class BasicBlock(nn.Module):
    """ResNet-18/34 basic block (two 3x3 convs, expansion 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNetBackbone(nn.Module):
    """ResNet stem + 4 stages; ``channels`` lists each stage's output width."""

    def __init__(self, *, block: type[Bottleneck] | type[BasicBlock], layers: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList()
        self.channels: list[int] = []
        for i, blocks in enumerate(layers):
            self._make_layer(block, width * 2**i, blocks, stride=1 if i == 0 else 2)

    def _make_layer(self, block: type[Bottleneck] | type[BasicBlock], planes: int, blocks: int, stride: int) -> None:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        self.layers.append(nn.Sequential(*mods))
        self.channels.append(self.inplanes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (B, 3, H, W) → stage outputs at strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)


def _darknet_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) → BN → LeakyReLU(0.1), keys ``0`` and ``1``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class DarkNetBlock(nn.Module):
    """YOLOv3 residual block: 1x1 (c) → 3x3 (2c) plus identity."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = _darknet_conv(in_channels, channels, 1)
        self.conv2 = _darknet_conv(channels, channels * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


class DarkNetBackbone(nn.Module):
    """DarkNet-53: stem conv + 5 stages (stride-2 conv, then residual blocks)."""

    def __init__(self, *, layers: tuple[int, ...] = (1, 2, 8, 8, 4)) -> None:
        super().__init__()
        self._preconv = _darknet_conv(3, 32, 3)
        self.layers = nn.ModuleList()
        self.channels: list[int] = []
        cin = 32
        for i, blocks in enumerate(layers):
            c = 32 * 2**i
            self.layers.append(nn.Sequential(_darknet_conv(cin, c * 2, 3, stride=2),
                                             *[DarkNetBlock(c * 2, c) for _ in range(blocks)]))
            cin = c * 2
            self.channels.append(cin)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (B, 3, H, W) → stage outputs at strides 2, 4, 8, 16, 32."""
        x = self._preconv(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)


def build_backbone(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Backbone by name and the indices of its C3, C4, C5 stages (strides 8, 16, 32)."""
    if name == "resnet101":
        return ResNetBackbone(block=Bottleneck, layers=(3, 4, 23, 3)), (1, 2, 3)
    if name == "resnet50":
        return ResNetBackbone(block=Bottleneck, layers=(3, 4, 6, 3)), (1, 2, 3)
    if name == "resnet18":
        return ResNetBackbone(block=BasicBlock, layers=(2, 2, 2, 2)), (1, 2, 3)
    if name == "darknet53":
        return DarkNetBackbone(), (2, 3, 4)
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
