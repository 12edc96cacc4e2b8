"""YOLACT mask assembly: prototypes × coefficients → sigmoid → crop → upsample → threshold."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rtseg.ops.boxes import sanitize


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero everything outside each box, on the mask's own grid (official ``crop``).

    masks: (h, w, n) float; boxes: (n, 4) relative point form. The box is scaled to the
    grid, ordered, padded by ``padding`` cells and clamped; a cell (row r, col c) is kept
    when x1 <= c < x2 and y1 <= r < y2. Returns (h, w, n) of masks' dtype.
    """
    h, w, n = masks.shape
    x1, x2 = sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, -1, 1)
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype).view(-1, 1, 1)
    keep = (cols >= x1.view(1, 1, -1)) & (cols < x2.view(1, 1, -1)) & (rows >= y1.view(1, 1, -1)) & (rows < y2.view(1, 1, -1))
    return masks * keep.to(masks.dtype)


def mask_probabilities(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, *, crop: bool = True) -> torch.Tensor:
    """Soft masks on the prototype grid.

    proto: (h, w, k) prototypes; coef: (n, k) coefficients; boxes: (n, 4) relative point form.
    Returns (n, h, w) float = crop(sigmoid(proto @ coef.T)).
    """
    masks = torch.sigmoid(proto @ coef.t())
    if crop:
        masks = crop_masks(masks, boxes)
    return masks.permute(2, 0, 1).contiguous()


def assemble_masks(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], *,
                   crop: bool = True, threshold: float = 0.5) -> torch.Tensor:
    """Full-resolution binary masks (official ``postprocess``).

    proto: (h, w, k); coef: (n, k); boxes: (n, 4) relative point form; size: (H, W) output pixels.
    Soft masks are upsampled bilinearly (align_corners=False) and thresholded (> threshold).
    Returns (n, H, W) bool.
    """
    if coef.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=proto.device)
    soft = mask_probabilities(proto, coef, boxes, crop=crop)
    return F.interpolate(soft[None], size, mode="bilinear", align_corners=False)[0] > threshold
