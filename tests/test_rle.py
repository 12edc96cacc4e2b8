"""COCO RLE encoded where the masks live (``rtseg.ops.rle.encode_rle_device``) vs pycocotools.

The reference is ``pycocotools.mask.encode`` (through ``encode_rle``); equality is of the
compressed count strings, i.e. byte for byte. The engine test checks that JSON output of
the device path never materialises the (N, H, W) masks on the host.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from servers.helpers import tiny_engine

from rtseg.ops.rle import encode_rle, encode_rle_device, run_starts
from rtseg.serialize import frame_record
from rtseg.types import Frame


def mask_cases() -> list[np.ndarray]:
    """Edge cases (empty set, 1×1, all set, first / last pixel set) and irregular random masks."""
    rng = np.random.default_rng(7)
    first_last = np.zeros((2, 5, 4), bool)
    first_last[0, 0, 0] = True  # column-major index 0: the RLE starts with a 0-length run
    first_last[1, -1, -1] = True  # the very last pixel
    blobs = np.zeros((6, 48, 64), bool)
    for i in range(1, 6):
        y, x = rng.integers(0, 40), rng.integers(0, 56)
        blobs[i, y:y + rng.integers(1, 30), x:x + rng.integers(1, 30)] = True  # mask 0 stays empty
    return [np.zeros((0, 9, 11), bool), np.ones((1, 1, 1), bool), np.zeros((1, 1, 1), bool),
            np.ones((2, 3, 7), bool), first_last, blobs, rng.random((4, 31, 17)) < 0.5, rng.random((3, 64, 48)) < 0.05]


@pytest.mark.parametrize("masks", mask_cases(), ids=lambda m: "x".join(map(str, m.shape)))
def test_device_rle_equals_pycocotools(masks: np.ndarray) -> None:
    assert encode_rle_device(torch.from_numpy(masks)) == encode_rle(masks)


def test_run_starts_are_column_major_changes() -> None:
    m = np.array([[[0, 1], [1, 1]]], bool)  # column-major: 0, 1, 1, 1 -> a change at index 1 only
    idx, starts = run_starts(torch.from_numpy(m))
    assert idx.tolist() == [0] and starts.tolist() == [1]


def test_device_rle_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="expected \\(N, H, W\\)"):
        encode_rle_device(torch.zeros(4, 4, dtype=torch.bool))


def test_engine_device_path_writes_json_without_host_masks() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    device, host = tiny_engine(device_overlay=True, top_k=30)(frame), tiny_engine(top_k=30)(frame)
    assert len(device) > 0 and device._rle_fn is not None and host._rle_fn is None
    record = frame_record(Frame(image=frame), device)
    assert device._masks is None  # the masks never came to the host as (N, H, W)
    assert record == frame_record(Frame(image=frame), host)
    assert device.rles() == encode_rle(device.masks)


@pytest.mark.gpu
def test_device_rle_on_cuda_equals_pycocotools() -> None:
    for masks in mask_cases():
        assert encode_rle_device(torch.from_numpy(masks).cuda()) == encode_rle(masks)


def test_label_map_rle_equals_the_rle_of_each_mask():
    """Random label maps (runs across columns, values absent, negative ids, 1-pixel maps) against pycocotools on the
    (K, H, W) masks; ids are given in any order and may be absent from the map."""
    from rtseg.ops.rle import encode_label_rle

    rng = np.random.default_rng(0)
    for trial in range(300):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        labels = rng.integers(-1, 4, (h, w))
        if trial % 2:  # blocky maps: long runs crossing column boundaries
            labels = np.repeat(np.repeat(rng.integers(0, 3, (3, 3)), 5, 0), 5, 1)[:h, :w]
        ids = rng.permutation(np.arange(-1, 6))[: rng.integers(0, 8)]
        assert encode_label_rle(labels, ids) == encode_rle(labels[None] == ids[:, None, None]), (labels, ids)
