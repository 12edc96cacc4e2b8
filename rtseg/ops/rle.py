"""COCO run-length encoding of binary masks, on the host (pycocotools) or where the masks live.

A COCO RLE walks the (H, W) mask in column-major order and alternates run lengths of
0s and 1s, starting with 0s (a leading run of length 0 when the mask starts with a 1);
pycocotools stores the counts compressed as an ASCII string. Both encoders here return
``{"size": [H, W], "counts": str}`` dicts, byte-identical to ``pycocotools.mask.encode``.

:func:`encode_rle_device` finds the run boundaries with tensor operations on the masks'
own device and moves only the boundary positions (8 bytes per run) to the host, so a
GPU engine never downloads (N, H, W) masks just to write JSON.
"""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def encode_rle(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool host masks -> N COCO RLE dicts ``{"size": [H, W], "counts": str}``."""
    if masks.ndim != 3:
        raise ValueError(f"encode_rle: expected (N, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def run_starts(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the column-major runs of each mask begin, computed on the masks' device.

    masks: (N, H, W) bool (any device). Returns two (R,) int64 tensors on that device,
    sorted by mask then position: the mask index and the column-major pixel index
    (x * H + y) of every pixel whose value differs from the pixel before it (the
    pixel before the first one counts as 0).
    """
    n = masks.shape[0]
    flat = masks.transpose(1, 2).reshape(n, masks.shape[1] * masks.shape[2])
    before = torch.zeros_like(flat[:, :1])
    changed = flat != torch.cat([before, flat[:, :-1]], dim=1)
    starts = changed.nonzero()
    return starts[:, 0], starts[:, 1]


def counts_from_starts(mask_idx: np.ndarray, starts: np.ndarray, n: int, size: tuple[int, int]) -> list[dict]:
    """Host side of :func:`encode_rle_device`: run starts -> N compressed COCO RLE dicts.

    mask_idx / starts: (R,) int64 from :func:`run_starts`; n: number of masks; size: (H, W).
    """
    h, w = size
    bounds = np.searchsorted(mask_idx, np.arange(n + 1))
    out = []
    for i in range(n):
        edges = np.concatenate([[0], starts[bounds[i]:bounds[i + 1]], [h * w]])
        rle = mask_utils.frPyObjects({"counts": np.diff(edges).tolist(), "size": [h, w]}, h, w)
        out.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
    return out


def encode_label_rle(labels: np.ndarray, ids: np.ndarray) -> list[dict]:
    """COCO RLE of ``labels == k`` for every k of ``ids``, without building the (K, H, W) masks.

    labels: (H, W) integer map (class, segment or superpixel ids); ids: (K,) distinct integers (one
    absent from ``labels`` gives an empty mask). Equal to ``encode_rle(labels[None] == ids[:, None, None])``
    at O(H·W) memory: every change of value in column-major order starts a run of ones for the new
    value and a run of zeros for the old one.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    if labels.ndim != 2:
        raise ValueError(f"encode_label_rle: expected an (H, W) map, got shape {labels.shape}")
    h, w = labels.shape
    flat = np.asarray(labels, np.int64).T.reshape(-1)  # column-major
    if ids.size == 0 or flat.size == 0:
        return counts_from_starts(np.zeros(0, np.int64), np.zeros(0, np.int64), ids.size, (h, w))
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    values = np.concatenate([flat[:1], flat[change], flat[change - 1]])
    starts = np.concatenate([[0], change, change])
    order = np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids[order], values), ids.size - 1)
    known = ids[order][at] == values
    mask_idx, starts = order[at[known]], starts[known]
    by_mask = np.lexsort((starts, mask_idx))
    return counts_from_starts(mask_idx[by_mask], starts[by_mask], ids.size, (h, w))


def encode_rle_device(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) bool masks on any device -> N COCO RLE dicts, equal to :func:`encode_rle`'s.

    Only the run boundaries leave the device (one synchronisation).
    """
    if masks.ndim != 3:
        raise ValueError(f"encode_rle_device: expected (N, H, W) masks, got shape {tuple(masks.shape)}")
    mask_idx, starts = run_starts(masks)
    return counts_from_starts(mask_idx.cpu().numpy(), starts.cpu().numpy(), masks.shape[0], tuple(masks.shape[1:]))
