"""The Mask Scoring R-CNN engine: BGR frames → torchvision Mask R-CNN + MaskIoU head → ``Detections``.

``Detections.scores`` are the classification scores (sorted descending);
``Detections.mask_scores`` = score × predicted MaskIoU of the predicted class,
the paper's calibrated mask confidence (rank by it for mask AP).

Masks stay the network's 28×28 probabilities until someone asks for ``Detections.masks``; they are
then pasted into bool frame-size masks, each resampled only within its box (:func:`paste_masks`, bit
for bit torchvision's ``paste_masks_in_image`` > 0.5): torchvision pasted every detection into a float32
frame-size map inside the forward pass (100 detections on a 4000×3000 frame: 4.8 GB; pasting them
at once or a few at a time took ~8 s on 2 CPU cores, the windows ~0.16 s: benchmarks/msrcnn_paste.py).
"""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from rtseg.engines.base import StagedEngine, placeholder_names
from rtseg.engines.options import (
    OptionChecks,
    check_class_names,
    check_option,
    check_options,
    given_class_names,
    place_network,
    resolve_device,
)
from rtseg.errors import WeightsError
from rtseg.manifest import MSRCNN_FORMAT
from rtseg.models.msrcnn import MaskScoringRCNN, MsrcnnConfig
from rtseg.types import Detections
from rtseg.weights import load_into, load_model, save_model

#: The checks of :class:`MsrcnnEngine`'s options besides its model and class names (:func:`check_options`).
_OPTION_CHECKS: OptionChecks = {
    **{key: partial(check_option, "msrcnn", key) for key in ("score_threshold", "top_k")},
    "device": resolve_device,
}


def save_msrcnn(path: str | Path, model: MaskScoringRCNN, class_names: Sequence[str],
                meta: dict[str, Any] | None = None) -> Path:
    """Save an MS R-CNN (config and foreground class names in the manifest)."""
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for an MS R-CNN with {model.cfg.num_classes} classes")
    return save_model(path, model, MSRCNN_FORMAT, asdict(model.cfg), class_names, meta)


class MsrcnnEngine(StagedEngine):
    """Instance segmenter: ``engine(image) -> Detections`` with ``mask_scores`` (see :class:`Engine`).

    score_threshold: drop detections whose classification score is at or below it (also below the
        ``box_score_thresh`` the weights were trained with).
    top_k: keep at most this many detections per frame (best classification score first; also more
        than the weights' ``detections_per_img``).
    Frames too elongated for the network's resize (8×4000 at max side 160 would leave < 1 pixel) are
    padded with black along the short side and the detections cropped back to the frame.
    """

    def __init__(self, *, model: MaskScoringRCNN, class_names: Sequence[str] | None = None, device: str = "cpu",
                 score_threshold: float = 0.05, top_k: int = 100) -> None:
        checked = check_options(_OPTION_CHECKS, {"score_threshold": score_threshold, "top_k": top_k, "device": device})
        self._device: torch.device = checked["device"]
        self.device = str(self._device)
        t = model.rcnn.transform
        if not isinstance(t, _UnpastedTransform):  # keep masks unpasted (see module doc)
            model.rcnn.transform = _UnpastedTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                                      size_divisible=t.size_divisible, fixed_size=t.fixed_size)
        self.model = place_network(model, self._device)
        names = class_names if class_names is not None else placeholder_names(model.cfg.num_classes)
        self.class_names = check_class_names("msrcnn", names, model.cfg.num_classes)
        self.score_threshold: float = checked["score_threshold"]
        self.top_k: int = checked["top_k"]

    @classmethod
    def from_config(cls, cfg: MsrcnnConfig, **kwargs) -> "MsrcnnEngine":
        """An engine around a freshly initialised network."""
        return cls(model=MaskScoringRCNN(cfg), **kwargs)

    @classmethod
    def from_weights(cls, weights: str | None, **kwargs) -> "MsrcnnEngine":
        """Load rtseg MS R-CNN safetensors + manifest; ``kwargs`` as the constructor's, checked before the weights
        are read (``class_names``: before the network is built)."""
        if weights is None:
            raise WeightsError("msrcnn needs weights=PATH (an rtseg .safetensors from rtseg.train.msrcnn_trainer)")
        kwargs = check_options(_OPTION_CHECKS, kwargs)
        state, cfg, names = load_model(weights, MSRCNN_FORMAT, MsrcnnConfig)
        kwargs["class_names"] = given_class_names("msrcnn", kwargs.get("class_names"), names, cfg.num_classes)
        model = MaskScoringRCNN(cfg)
        load_into(model, state, str(weights))
        return cls(model=model, **kwargs)

    def preprocess(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """(H, W, 3) uint8 BGR images -> list of (3, H', W') float32 RGB in [0, 1] (torchvision normalises).

        H' = H, W' = W except for frames too elongated for the network's resize, which get black
        rows / columns appended (H', W' >= H, W) so that the short side keeps >= 1 pixel.
        """
        cfg, out = self.model.cfg, []
        for img in images:
            x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).to(self._device).permute(2, 0, 1).float().div_(255)
            h, w = img.shape[:2]
            short, long = sorted((h, w))
            if int(short * min(cfg.min_size / short, cfg.max_size / long)) < 1:  # resized to 0 pixels: pad
                need = -(-long // cfg.max_size) + 1
                x = torch.nn.functional.pad(x, (0, need - w, 0, 0) if w < h else (0, 0, 0, need - h))
            out.append(x)
        return out

    @torch.inference_mode()
    def forward(self, x: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """torchvision's per-image dicts (boxes, labels, scores, masks (N, 1, 28, 28) probabilities in their
        boxes, mask_iou), after the RoI heads' threshold and cap were set to this engine's."""
        heads = self.model.rcnn.roi_heads
        heads.score_thresh, heads.detections_per_img = self.score_threshold, self.top_k  # torchvision keeps > thresh
        return self.model(x)

    def postprocess(self, raw: list[dict[str, torch.Tensor]], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        out = []
        for r, size in zip(raw, sizes):
            h, w = size
            full = r["boxes"].float()  # boxes of the padded frame (the mask probabilities' boxes)
            boxes = torch.minimum(full.clamp_min(0), full.new_tensor([w, h, w, h]))  # padding cropped away
            keep = torch.where((r["scores"] > self.score_threshold) & (boxes[:, 2] > boxes[:, 0])
                               & (boxes[:, 3] > boxes[:, 1]))[0][: self.top_k]  # already score-sorted
            scores = r["scores"][keep].float().cpu().numpy()
            probs, full = r["masks"][keep], full[keep]
            out.append(Detections(
                boxes=boxes[keep].cpu().numpy(), scores=scores,
                class_ids=(r["labels"][keep] - 1).cpu().numpy().astype(np.int64), image_size=(h, w),
                class_names=self.class_names, mask_scores=(scores * r["mask_iou"][keep].float().cpu().numpy()),
                _mask_fn=lambda probs=probs, full=full, size=(h, w): paste_masks(probs, full, size)))
        return out

    def warmup(self) -> None:
        """One dummy frame through every stage."""
        self(np.zeros((self.model.cfg.min_size, self.model.cfg.min_size, 3), np.uint8))


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, 1, M, M) mask probabilities in their (N, 4) xyxy float boxes -> (N, H, W) bool masks.

    Bit for bit torchvision's ``paste_masks_in_image(probs, boxes, size)[:, 0] > 0.5``, but each mask is
    resampled only to its own box and thresholded straight into its window of the output, so no
    frame-size float map is made (memory beside the output: one float map the size of the largest box).
    As torchvision: the mask is padded by one zero cell on each side (M + 2 cells) and its box widened
    by (M + 2) / M about its centre, the corners truncated to whole pixels (``int64``); the padded mask is
    resized bilinearly (``align_corners=False``) to (y1 - y0 + 1, x1 - x0 + 1) pixels placed at (x0, y0),
    and the part past the frame is cut off. A box entirely outside the frame (or inverted) gives an
    empty mask (torchvision raises for some of those).
    """
    h, w = size
    out = np.zeros((len(probs), h, w), bool)
    padded, scale = expand_masks(probs, padding=1)
    jobs: list[tuple[int, ...]] = []  # (detection, box corner, resized size, window in the frame)
    for i, (bx0, by0, bx1, by1) in enumerate(expand_boxes(boxes, scale).to(torch.int64).tolist()):
        x0, x1, y0, y1 = max(bx0, 0), min(bx1 + 1, w), max(by0, 0), min(by1 + 1, h)
        if x1 > x0 and y1 > y0:
            jobs.append((i, bx0, by0, by1 - by0 + 1, bx1 - bx0 + 1, x0, x1, y0, y1))  # >= 1 pixel a side
    if not jobs:
        return out
    scratch = padded.new_empty(max(bh * bw for _, _, _, bh, bw, *_ in jobs))  # reused: fresh maps cost page faults
    # on the CPU straight into ``out``; on a GPU into a device copy, downloaded once
    frame = torch.from_numpy(out) if padded.is_cpu else torch.zeros(out.shape, dtype=torch.bool, device=padded.device)
    for i, bx0, by0, bh, bw, x0, x1, y0, y1 in jobs:
        resized = scratch[: bh * bw].view(1, 1, bh, bw)  # F.interpolate(..., size=(bh, bw)) into scratch
        torch.ops.aten.upsample_bilinear2d.out(padded[i, 0].expand((1, 1, -1, -1)), [bh, bw], False, out=resized)
        torch.gt(resized[0, 0, y0 - by0:y1 - by0, x0 - bx0:x1 - bx0], 0.5, out=frame[i, y0:y1, x0:x1])
    return out if padded.is_cpu else frame.cpu().numpy()


class _UnpastedTransform(GeneralizedRCNNTransform):
    """torchvision's transform whose inference output keeps masks as (N, 1, M, M) probabilities
    (boxes scaled back to the input image as usual); :func:`paste_masks` pastes them when needed."""

    def postprocess(self, result: list[dict[str, torch.Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
        return result


def rescored(dets: Detections) -> Detections:
    """The same detections ranked by ``mask_scores`` (MS R-CNN's mask confidence) as ``scores``."""
    if dets.mask_scores is None:
        raise ValueError("rescored: detections carry no mask_scores")
    order = np.argsort(-dets.mask_scores, kind="stable")
    return Detections(boxes=dets.boxes[order], scores=dets.mask_scores[order].astype(np.float32),
                      class_ids=dets.class_ids[order], image_size=dets.image_size, class_names=dets.class_names,
                      mask_scores=dets.mask_scores[order], _masks=dets.masks[order])
