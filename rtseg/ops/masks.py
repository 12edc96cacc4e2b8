"""YOLACT mask assembly: prototypes × coefficients → sigmoid → crop → upsample → threshold.

On the CPU :func:`assemble_masks` upsamples each mask only inside its box's footprint: every output pixel outside
it reads prototype cells the crop zeroed, so it is 0 there. Inside, the bilinear taps and weights are
``F.interpolate``'s (align_corners=False), computed in float32 but rounded differently (its source index and
blends may use fused multiply-adds): a pixel can only come out differently where the upsampled probability lies
within about 1e-5 of the threshold (an ulp of the source index near 128 is 7.6e-6).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from rtseg.ops.boxes import sanitize


#: Masks whose footprint covers more than this share of the frame are upsampled whole by ``F.interpolate``
#: (multi-threaded, it is as fast there).
WHOLE_FRAME_SHARE = 0.5


class Taps(NamedTuple):
    """Bilinear (align_corners=False) taps along one axis, as ``F.interpolate`` computes them: output index d
    reads input cells i0[d] <= i1[d] (int64, non-decreasing in d) with weights l0[d] and l1[d] (float32); all (m,)."""

    i0: np.ndarray
    i1: np.ndarray
    l0: np.ndarray
    l1: np.ndarray


def bilinear_taps(n_in: int, n_out: int) -> Taps:
    """The taps of ``n_in`` → ``n_out`` cells: source index ``(d + 0.5) * n_in / n_out - 0.5``, clamped at 0."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                     - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return Taps(i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - l1, l1)


def crop_keep(boxes: torch.Tensor, h: int, w: int, padding: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of an (h, w) grid that the official ``crop`` keeps for each box.

    boxes: (n, 4) relative point form. The box is scaled to the grid, ordered, padded by ``padding`` cells and
    clamped; row r is kept when y1 <= r < y2, column c when x1 <= c < x2. Returns ((n, h), (n, w)) bool.
    """
    x1, x2 = sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    rows = torch.arange(h, device=boxes.device, dtype=y1.dtype)
    cols = torch.arange(w, device=boxes.device, dtype=x1.dtype)
    return (rows >= y1[:, None]) & (rows < y2[:, None]), (cols >= x1[:, None]) & (cols < x2[:, None])


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero everything outside each box, on the mask's own grid (official ``crop``).

    masks: (h, w, n) float; boxes: (n, 4) relative point form, kept cells as :func:`crop_keep`.
    Returns (h, w, n) of masks' dtype.
    """
    h, w, _ = masks.shape
    rows, cols = crop_keep(boxes, h, w, padding)
    return masks * (rows.t()[:, None, :] & cols.t()[None, :, :]).to(masks.dtype)


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
    Returns (n, H, W) bool. On the CPU, cropped and with a threshold >= 0, each mask is upsampled inside its box's
    footprint only (:func:`_assemble_in_footprints`).
    """
    if coef.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=proto.device)
    if proto.device.type == "cpu" and crop and threshold >= 0:
        return _assemble_in_footprints(proto, coef, boxes, size, threshold)
    soft = mask_probabilities(proto, coef, boxes, crop=crop)
    return F.interpolate(soft[None], size, mode="bilinear", align_corners=False)[0] > threshold


def _footprint(keep: np.ndarray, taps: Taps) -> tuple[int, int, int, int] | None:
    """Along one axis, for the kept cells ``keep`` (cells,) bool (one run): the output indices o0:o1 whose taps
    reach a kept cell and the input cells c0:c1 they read; None when none does."""
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return None
    o0 = int(np.searchsorted(taps.i1, kept[0]))
    o1 = int(np.searchsorted(taps.i0, kept[-1], side="right"))
    if o0 >= o1:  # (downsampling: no output index reads the kept cells)
        return None
    return o0, o1, int(taps.i0[o0]), int(taps.i1[o1 - 1]) + 1


def _assemble_in_footprints(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                            threshold: float) -> torch.Tensor:
    """:func:`assemble_masks` on the CPU, cropped, threshold >= 0: each mask's cropped probabilities upsampled
    over its footprint only (columns, then rows, with :func:`bilinear_taps`), False elsewhere, where the full
    upsample reads only zeroed cells (a NaN prototype's NaN * 0 compares False as well). A footprint over
    :data:`WHOLE_FRAME_SHARE` of the frame is upsampled whole, with the other big ones, in one ``F.interpolate``.
    Shapes as :func:`assemble_masks`."""
    (height, width), (h, w, _) = size, proto.shape
    taps_y, taps_x = bilinear_taps(h, height), bilinear_taps(w, width)
    keep_y, keep_x = (k.numpy() for k in crop_keep(boxes.detach().float(), h, w))
    soft = torch.sigmoid(proto.detach() @ coef.detach().t()).float().numpy()  # (h, w, n), not cropped yet
    out = np.zeros((coef.shape[0], height, width), dtype=bool)
    big = []
    for i in range(coef.shape[0]):
        along_y, along_x = _footprint(keep_y[i], taps_y), _footprint(keep_x[i], taps_x)
        if along_y is None or along_x is None:
            continue
        (y0, y1, r0, r1), (x0, x1, c0, c1) = along_y, along_x
        if (y1 - y0) * (x1 - x0) > WHOLE_FRAME_SHARE * height * width:
            big.append(i)
            continue
        cropped = soft[r0:r1, c0:c1, i] * keep_y[i, r0:r1, None] * keep_x[i, None, c0:c1]
        cols = (cropped[:, taps_x.i0[x0:x1] - c0] * taps_x.l0[x0:x1]
                + cropped[:, taps_x.i1[x0:x1] - c0] * taps_x.l1[x0:x1])
        out[i, y0:y1, x0:x1] = (cols[taps_y.i0[y0:y1] - r0] * taps_y.l0[y0:y1, None]
                                + cols[taps_y.i1[y0:y1] - r0] * taps_y.l1[y0:y1, None]) > threshold
    if not big:
        return torch.from_numpy(out)
    cropped = soft[:, :, big].transpose(2, 0, 1) * keep_y[big, :, None] * keep_x[big, None, :]
    whole = F.interpolate(torch.from_numpy(np.ascontiguousarray(cropped))[None], size, mode="bilinear",
                          align_corners=False)[0] > threshold
    if len(big) == len(out):  # (every footprint big: no copy)
        return whole
    out[big] = whole.numpy()
    return torch.from_numpy(out)
