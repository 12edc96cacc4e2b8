"""The Mask Scoring R-CNN engine: BGR frames → torchvision Mask R-CNN + MaskIoU head → ``Detections``.

``Detections.scores`` are the classification scores (sorted descending);
``Detections.mask_scores`` = score × predicted MaskIoU of the predicted class,
the paper's calibrated mask confidence (rank by it for mask AP).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rtseg.engines.base import StagedEngine
from rtseg.engines.options import check_int, check_real, resolve_device
from rtseg.errors import ConfigError, WeightsError
from rtseg.models.msrcnn import MaskScoringRCNN, MsrcnnConfig
from rtseg.types import Detections
from rtseg.weights import load_into, load_model, save_model

MSRCNN_FORMAT = "rtseg-msrcnn/1"


def save_msrcnn(path: str | Path, model: MaskScoringRCNN, class_names: Sequence[str],
                meta: dict[str, Any] | None = None) -> Path:
    """Save an MS R-CNN (config and foreground class names in the manifest)."""
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for an MS R-CNN with {model.cfg.num_classes} classes")
    return save_model(path, model, MSRCNN_FORMAT, asdict(model.cfg), class_names, meta)


class MsrcnnEngine(StagedEngine):
    """Instance segmenter: ``engine(image) -> Detections`` with ``mask_scores`` (see :class:`Engine`).

    score_threshold: drop detections whose classification score is below it.
    top_k: keep at most this many detections per frame (best classification score first).
    """

    def __init__(self, *, model: MaskScoringRCNN, class_names: Sequence[str] | None = None, device: str = "cpu",
                 score_threshold: float = 0.05, top_k: int = 100) -> None:
        score_threshold = check_real("msrcnn", "score_threshold", score_threshold, low=0.0, high=1.0)
        top_k = check_int("msrcnn", "top_k", top_k, low=1)
        self._device = resolve_device(device)
        self.device = str(self._device)
        self.model = model.to(self._device).eval()
        names = list(class_names) if class_names is not None else [f"class{i}" for i in range(model.cfg.num_classes)]
        if len(names) != model.cfg.num_classes:
            raise ConfigError(f"msrcnn: {len(names)} class names for a model with {model.cfg.num_classes} classes")
        self.class_names = tuple(names)
        self.score_threshold, self.top_k = score_threshold, top_k

    @classmethod
    def from_config(cls, cfg: MsrcnnConfig, **kwargs) -> "MsrcnnEngine":
        """An engine around a freshly initialised network."""
        return cls(model=MaskScoringRCNN(cfg), **kwargs)

    @classmethod
    def from_weights(cls, weights: str | None, **kwargs) -> "MsrcnnEngine":
        """Load rtseg MS R-CNN safetensors + manifest."""
        if weights is None:
            raise WeightsError("msrcnn needs weights=PATH (an rtseg .safetensors from rtseg.train.msrcnn_trainer)")
        state, cfg, names = load_model(weights, MSRCNN_FORMAT, MsrcnnConfig)
        model = MaskScoringRCNN(cfg)
        load_into(model, state, str(weights))
        kwargs.setdefault("class_names", names)
        return cls(model=model, **kwargs)

    def preprocess(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """(H, W, 3) uint8 BGR images -> list of (3, H, W) float32 RGB in [0, 1] (torchvision normalises)."""
        cfg = self.model.cfg
        for i, img in enumerate(images):
            short, long = sorted(img.shape[:2])
            if int(short * min(cfg.min_size / short, cfg.max_size / long)) < 1:
                which = "frame" if len(images) == 1 else f"frame {i} of the batch"
                raise ConfigError(f"{which}: {img.shape[0]}x{img.shape[1]} is too elongated for msrcnn "
                                  f"(resize to max side {cfg.max_size} leaves < 1 pixel); crop or pad it")
        return [torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).to(self._device).permute(2, 0, 1).float()
                .div_(255) for img in images]

    @torch.inference_mode()
    def forward(self, x: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """torchvision's per-image dicts (boxes, labels, scores, masks (N, 1, H, W) probabilities, mask_iou)."""
        return self.model(x)

    def postprocess(self, raw: list[dict[str, torch.Tensor]], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        out = []
        for r, size in zip(raw, sizes):
            keep = torch.where(r["scores"] >= self.score_threshold)[0][: self.top_k]  # already score-sorted
            scores = r["scores"][keep].float().cpu().numpy()
            out.append(Detections(
                boxes=r["boxes"][keep].float().cpu().numpy(), scores=scores,
                class_ids=(r["labels"][keep] - 1).cpu().numpy().astype(np.int64), image_size=tuple(size),
                class_names=self.class_names, mask_scores=(scores * r["mask_iou"][keep].float().cpu().numpy()),
                _masks=(r["masks"][keep, 0] > 0.5).cpu().numpy().reshape(-1, *size)))
        return out

    def warmup(self) -> None:
        """One dummy frame through every stage."""
        self(np.zeros((self.model.cfg.min_size, self.model.cfg.min_size, 3), np.uint8))


def rescored(dets: Detections) -> Detections:
    """The same detections ranked by ``mask_scores`` (MS R-CNN's mask confidence) as ``scores``."""
    if dets.mask_scores is None:
        raise ValueError("rescored: detections carry no mask_scores")
    order = np.argsort(-dets.mask_scores, kind="stable")
    return Detections(boxes=dets.boxes[order], scores=dets.mask_scores[order].astype(np.float32),
                      class_ids=dets.class_ids[order], image_size=dets.image_size, class_names=dets.class_names,
                      mask_scores=dets.mask_scores[order], _masks=dets.masks[order])
