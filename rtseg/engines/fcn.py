"""The FCN engine: BGR frames → FCN-8s/16s/32s or torchvision FCN-ResNet → ``SemanticMap``.

Weights: rtseg safetensors + JSON manifest (``save_fcn`` / ``FcnEngine.from_weights``),
or torchvision's ``fcn_resnet50/101`` (pretrained only when already in the torch cache).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rtseg.engines.base import frames_as_list, placeholder_names
from rtseg.engines.options import (
    OptionChecks,
    check_class_names,
    check_int,
    check_options,
    given_class_names,
    place_network,
    resolve_device,
)
from rtseg.errors import ConfigError, RtsegWarning, WeightsError
from rtseg.manifest import FCN_FORMAT
from rtseg.models.fcn import ARCHS, FCN, TORCHVISION_ARCHS, FcnConfig, torchvision_fcn
from rtseg.types import SemanticMap
from rtseg.weights import load_into, load_model, save_model

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
#: The 21 PASCAL VOC labels of torchvision's pretrained FCN-ResNets.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def _check_max_side(value: Any) -> int | None:
    """``max_side=`` as an int >= 1, or None (frames keep their size)."""
    return None if value is None else check_int("fcn", "max_side", value, low=1)


#: The checks of :class:`FcnEngine`'s options besides its model and class names (:func:`check_options`).
_OPTION_CHECKS: OptionChecks = {"max_side": _check_max_side, "device": resolve_device}


def save_fcn(path: str | Path, model: FCN, class_names: Sequence[str], meta: dict[str, Any] | None = None) -> Path:
    """Save our FCN (config and class names in the manifest)."""
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for an FCN with {model.cfg.num_classes} classes")
    return save_model(path, model, FCN_FORMAT, asdict(model.cfg), class_names, meta)


class FcnEngine:
    """Semantic segmenter: ``engine(image) -> SemanticMap`` (see :class:`rtseg.engines.base.Engine`).

    Frames of equal size are batched together; FCN output is the input's size, so
    no resizing happens unless ``max_side`` asks to downscale large frames (the
    logits are then upsampled bilinearly to the frame's size before the argmax).
    """

    def __init__(self, *, model: nn.Module, class_names: Sequence[str], device: str = "cpu",
                 max_side: int | None = None, pretrained: bool = False) -> None:
        checked = check_options(_OPTION_CHECKS, {"max_side": max_side, "device": device})
        classes = model.cfg.num_classes if isinstance(model, FCN) else getattr(model, "num_classes", None)
        self.class_names = check_class_names("fcn", class_names, classes)
        self._device: torch.device = checked["device"]
        self.device = str(self._device)
        self.model = place_network(model, self._device)
        self.max_side: int | None = checked["max_side"]
        self.pretrained = pretrained
        self._mean = torch.tensor(MEAN_RGB, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD_RGB, device=self._device).view(1, 3, 1, 1)

    @classmethod
    def from_config(cls, cfg: FcnConfig, *, class_names: Sequence[str] | None = None, **kwargs) -> "FcnEngine":
        """A random-weight engine of our FCN (for tests and training)."""
        names = class_names or placeholder_names(cfg.num_classes, background=True)
        return cls(model=FCN(cfg), class_names=names, **kwargs)

    @classmethod
    def from_weights(cls, weights: str | None, *, arch: str | None = None, num_classes: int | None = None,
                     **kwargs) -> "FcnEngine":
        """Our safetensors FCN (``weights=PATH``) or a torchvision FCN-ResNet (``arch="fcn_resnet50"``,
        ``num_classes`` default 21). With weights, arch and num_classes come from the manifest. ``kwargs`` as the
        constructor's, checked before the weights are read (``class_names``: before the network is built)."""
        kwargs = check_options(_OPTION_CHECKS, kwargs)
        if weights is not None:
            state, cfg, names = load_model(weights, FCN_FORMAT, FcnConfig)
            if arch is not None and arch != cfg.arch:
                raise ConfigError(f"fcn: arch={arch!r} but {weights} holds an {cfg.arch}; drop arch=")
            if num_classes is not None and num_classes != cfg.num_classes:
                raise ConfigError(f"fcn: num_classes={num_classes!r} but {weights} has {cfg.num_classes} classes; "
                                  f"num_classes comes from the weights' manifest: drop num_classes=")
            kwargs["class_names"] = given_class_names("fcn", kwargs.get("class_names"), names, cfg.num_classes)
            model = FCN(cfg)
            load_into(model, state, str(weights))
            return cls(model=model, **kwargs)
        if arch in TORCHVISION_ARCHS:
            num_classes = 21 if num_classes is None else check_int("fcn", "num_classes", num_classes, low=2)
            names = VOC_CLASSES if num_classes == 21 else placeholder_names(num_classes, background=True)
            kwargs["class_names"] = given_class_names("fcn", kwargs.get("class_names"), names, num_classes)
            model, pretrained = torchvision_fcn(arch, num_classes)
            if not pretrained:
                warnings.warn(f"fcn: torchvision's pretrained {arch} file is not in the torch cache (nothing is "
                              "downloaded): this engine has RANDOM weights, for training only", RtsegWarning, stacklevel=3)
            return cls(model=_OutOnly(model, num_classes), pretrained=pretrained, **kwargs)
        raise WeightsError(f"fcn: arch {arch or 'fcn8s'} needs weights=PATH (train one with rtseg.train.fcn_trainer) "
                           f"or pick arch= one of {', '.join(TORCHVISION_ARCHS)}; known archs: {', '.join(ARCHS)}")

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Equal-size (H, W, 3) uint8 BGR images -> (B, 3, H', W') float32 normalised RGB on the device."""
        x = torch.from_numpy(np.stack(images)).to(self._device).permute(0, 3, 1, 2).flip(1).float().div_(255)
        h, w = x.shape[-2:]
        if self.max_side and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            x = nn.functional.interpolate(x, size=(max(round(h * s), 1), max(round(w * s), 1)), mode="bilinear",
                                          align_corners=False)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H, W) logits."""
        return self.model(x)

    def postprocess(self, logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[SemanticMap]:
        """(B, C, h, w) logits -> one SemanticMap per frame at its (H, W) (all equal) with softmax confidence."""
        size = tuple(sizes[0])
        if tuple(logits.shape[-2:]) != size:
            logits = nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        prob, labels = logits.softmax(1).max(1)
        labels, prob = labels.cpu().numpy().astype(np.int64), prob.float().cpu().numpy()
        return [SemanticMap(labels=labels[i], class_names=self.class_names, scores=prob[i]) for i in range(len(labels))]

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> SemanticMap | list[SemanticMap]:
        single, images = frames_as_list(frames)
        out: list[SemanticMap | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for size, idx in groups.items():
            raw = self.forward(self.preprocess([images[i] for i in idx]))
            for i, pred in zip(idx, self.postprocess(raw, [size] * len(idx))):
                out[i] = pred
        return out[0] if single else out  # type: ignore[return-value]

    def warmup(self) -> None:
        """One dummy frame through every stage."""
        self(np.zeros((64, 64, 3), np.uint8))


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep the exportable tensor-only interface."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]
