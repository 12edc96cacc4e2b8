"""Instance masks blended into a frame where the network ran (the mask part of ``annotate``).

:func:`overlay_masks` is the torch version (any device); on CUDA with CuPy installed,
:func:`blend` dispatches to the fused kernel :func:`rtseg.ops.cupy_ops.overlay_masks`, which
computes the same thing without materialising full-resolution masks. Both follow
:func:`rtseg.ops.overlay.annotate` exactly: painter's order by score (stable, so on a tie the
later index ends on top), every mask painting only inside its box rounded out by one pixel,
and ``round(frame * (1 - alpha) + color * alpha)`` where a mask is on.
"""
from __future__ import annotations

import numpy as np
import torch

from rtseg.ops.boxes import boxes_to_pixels
from rtseg.ops.masks import assemble_masks

#: Instances assembled at full resolution at a time by the torch version (bounds memory).
CHUNK = 8


def paint_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, 4) relative boxes → (n, 4) int32 half-open pixel windows (x0, y0, x1, y1) a mask may paint.

    As annotate's ``_int_boxes`` on the Detections' boxes: the frame box (``boxes_to_pixels``)
    rounded outwards by one pixel and clipped to the frame; computed on the boxes' device.
    """
    height, width = size
    px = boxes_to_pixels(boxes.float(), height, width)
    win = torch.cat([torch.floor(px[:, :2]) - 1, torch.ceil(px[:, 2:]) + 1], 1)
    win[:, 0::2] = win[:, 0::2].clamp(0, width)
    win[:, 1::2] = win[:, 1::2].clamp(0, height)
    return win.to(torch.int32).contiguous()


def paint_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices lowest score first, ties in index order (numpy's stable argsort), as annotate paints."""
    return torch.sort(scores.float(), stable=True).indices


def overlay_masks(frame: torch.Tensor, proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor,
                  scores: torch.Tensor, colors: torch.Tensor, *, alpha: float = 0.45, crop: bool = True,
                  threshold: float = 0.5) -> torch.Tensor:
    """Blend instance masks into ``frame`` with torch ops on the frame's device.

    frame (H, W, 3) uint8 BGR; proto (h, w, k); coef (n, k); boxes (n, 4) relative point form;
    scores (n,); colors (n, 3) uint8 BGR. Returns a new (H, W, 3) uint8 tensor.
    """
    size = (frame.shape[0], frame.shape[1])
    n = coef.shape[0]
    if n == 0:
        return frame.clone()
    win = paint_boxes(boxes, size).tolist()
    owner = torch.full(size, -1, dtype=torch.long, device=frame.device)
    order = paint_order(scores).tolist()
    for start in range(0, n, CHUNK):
        part = order[start:start + CHUNK]
        masks = assemble_masks(proto, coef[part], boxes[part], size, crop=crop, threshold=threshold)
        for mask, i in zip(masks, part):
            x0, y0, x1, y1 = win[i]
            if x1 > x0 and y1 > y0:
                owner[y0:y1, x0:x1][mask[y0:y1, x0:x1]] = i
    on = owner >= 0
    paint = colors.to(frame.device, torch.float32)[owner.clamp(min=0)]
    blended = torch.round(frame.float() * (1.0 - alpha) + paint * alpha).clamp(0, 255).to(torch.uint8)
    return torch.where(on[..., None], blended, frame)


def download(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a host numpy array of the same shape and dtype (waits for it).

    From CUDA the copy lands in page-locked memory from torch's caching host allocator (one direct
    DMA instead of a pageable copy through the driver's staging buffer) and the array keeps that
    block until it is freed, when the allocator takes it back for a later frame; no further host copy.
    """
    if not t.is_cuda:
        return t.numpy(force=True)
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()


def blend(frame: torch.Tensor, proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor,
          scores: torch.Tensor, colors: torch.Tensor, *, alpha: float = 0.45) -> torch.Tensor:
    """:func:`overlay_masks` by the fastest implementation for the device (CuPy kernel on CUDA if installed)."""
    from rtseg.ops import cupy_ops

    if frame.is_cuda and cupy_ops.HAVE_CUPY:
        return cupy_ops.overlay_masks(frame, proto, coef, boxes, scores, colors, alpha=alpha)
    return overlay_masks(frame, proto, coef, boxes, scores, colors, alpha=alpha)
