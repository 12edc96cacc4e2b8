"""MS R-CNN mask paste: pasting only inside each box window equals torchvision's full-frame paste bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import paste_masks_in_image

from rtseg.data.synthetic import CLASSES
from rtseg.engines.msrcnn import MsrcnnEngine, paste_masks
from rtseg.models.msrcnn import MsrcnnConfig

SIZES = [(1, 1), (1, 9), (7, 2), (37, 61), (64, 64), (120, 45), (240, 320)]


def reference(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray | None]:
    """What the engine did before: torchvision's full-frame float paste, then > 0.5; one mask at a time,
    None where torchvision raises (some boxes entirely outside the frame)."""
    out: list[np.ndarray | None] = []
    for p, b in zip(probs, boxes):
        try:
            out.append((paste_masks_in_image(p[None], b[None], size)[0, 0] > 0.5).cpu().numpy())
        except RuntimeError:
            out.append(None)
    return out


def outside(boxes: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N,) bool: the widened, truncated box that torchvision pastes misses the frame entirely."""
    h, w = size
    x0, y0, x1, y1 = expand_boxes(boxes, expand_masks(torch.zeros(1, 1, 28, 28), 1)[1]).to(torch.int64).T.cpu()
    return ((torch.clamp(x1 + 1, max=w) <= x0.clamp(min=0)) | (torch.clamp(y1 + 1, max=h) <= y0.clamp(min=0))).numpy()


def random_boxes(size: tuple[int, int], n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 4) float32 xyxy boxes of every kind: inside, partly and entirely outside, sub-pixel and
    zero-size ones, ones on the frame's edges and corners, fractional corners just below 0."""
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=g) * 2.0 - 0.5  # top-left from -0.5 to 1.5 frames
    wh = torch.rand(n, 2, generator=g) ** 3 * 1.5  # many small, some larger than the frame
    kinds = torch.randint(0, 6, (n,), generator=g)
    boxes = torch.cat([xy, xy + wh], 1) * scale
    tiny = kinds == 1  # under one pixel (or empty), anywhere near the frame
    boxes[tiny, 2:] = boxes[tiny, :2] + torch.rand(int(tiny.sum()), 2, generator=g) * torch.tensor([1.0, 0.5])
    edge = kinds == 2  # snapped onto the frame's edges
    boxes[edge] = torch.minimum(boxes[edge].clamp_min(0), scale)
    inside = kinds == 3  # what the detector gives: clipped to the frame
    xs, ys = (torch.rand(int(inside.sum()), 2, generator=g).sort(1).values * s for s in (w, h))
    boxes[inside] = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
    near = kinds == 4  # corners in (-1, 0): int64 truncates toward zero, not down
    boxes[near, :2] = -torch.rand(int(near.sum()), 2, generator=g)
    return boxes


def random_probs(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 28, 28) float32: half uniform, half eighths (bilinear sums land exactly on 0.5: > vs >=)."""
    probs = torch.rand(n, 1, 28, 28, generator=g)
    probs[n // 2:] = torch.randint(0, 9, (n - n // 2, 1, 28, 28), generator=g) / 8.0
    probs[0] = 0.5
    return probs


def check_equal(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    """Assert paste_masks == reference mask by mask; returns (masks compared, masks torchvision refused)."""
    got, want, off = paste_masks(probs, boxes, size), reference(probs, boxes, size), outside(boxes, size)
    assert got.shape == (len(probs), *size) and got.dtype == bool
    for i, expected in enumerate(want):
        if expected is None:  # torchvision raised: only for boxes that miss the frame, which paste empty
            assert off[i], boxes[i]
        else:
            np.testing.assert_array_equal(got[i], expected, err_msg=f"box {boxes[i].tolist()} in {size}")
        if off[i]:
            assert not got[i].any()
    return len(want), sum(e is None for e in want)


@pytest.mark.parametrize("size", SIZES)
def test_window_paste_equals_full_frame_paste(size):
    g = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    compared, refused = check_equal(random_probs(300, g), random_boxes(size, 300, g), size)
    assert compared == 300 and refused < 300


def test_edge_cases_equal_full_frame_paste():
    """Boxes exactly on the frame, the whole frame, bigger than it, zero-size and sub-pixel ones, inverted."""
    h, w = size = (48, 80)
    boxes = torch.tensor([[0, 0, w, h], [-10, -10, w + 10, h + 10], [0, 0, 0, 0], [w, h, w, h],
                          [w - 0.3, h - 0.3, w, h], [-0.9, -0.9, -0.1, -0.1], [3.2, 4.7, 3.4, 4.9],
                          [0, 5, 1e-3, 20], [w - 1, 0, w, h], [10, 10, 5, 5], [-3, 10, 0.5, 30],
                          [w - 0.5, 10, w + 3, 30], [-40, -40, -20, -20], [w + 5, h + 5, w + 9, h + 9]],
                         dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    assert check_equal(random_probs(len(boxes), g), boxes, size)[0] == len(boxes)
    empty = paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), size)
    assert empty.shape == (0, h, w)


def test_mask_past_the_frame_is_cut_off_not_shifted():
    """A box half past the right edge: the mask's left half lands in the frame's last columns."""
    probs = torch.zeros(1, 1, 28, 28)
    probs[..., :14] = 1.0  # left half of the box
    got = paste_masks(probs, torch.tensor([[40.0, 0.0, 120.0, 28.0]]), (28, 80))[0]
    assert got[:, 42:78].all() and not got[:, :38].any()


def test_engine_padded_frames_paste_as_torchvision():
    """Elongated frames are padded for the network; boxes of the padded frame are pasted into the
    original frame. The engine's masks equal torchvision's paste of the same probabilities."""
    cfg = MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80,
                       anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20, proposals_per_image=100)
    torch.manual_seed(0)
    engine = MsrcnnEngine.from_config(cfg, class_names=list(CLASSES), score_threshold=0.0)
    rng = np.random.default_rng(0)
    past_frame = 0
    for h, w in [(8, 4000), (900, 3), (60, 90)]:
        img = rng.integers(0, 255, (h, w, 3), np.uint8)
        raw = engine.forward(engine.preprocess([img]))[0]
        dets = engine.postprocess([raw], [(h, w)])[0]
        assert len(dets) > 0
        full = raw["boxes"]  # boxes of the padded frame; the engine keeps those with area in the frame
        clipped = torch.minimum(full.clamp_min(0), torch.tensor([w, h, w, h], dtype=torch.float32))
        keep = torch.where((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))[0]
        full = full[keep]
        np.testing.assert_array_equal(dets.scores, raw["scores"][keep].numpy())
        past_frame += int((full[:, 2] > w).sum() + (full[:, 3] > h).sum())
        want = reference(raw["masks"][keep], full, (h, w))
        np.testing.assert_array_equal(dets.masks, np.stack(want))
    assert past_frame > 0  # some boxes reach into the padding, so the cut-off was exercised


@pytest.mark.gpu
def test_window_paste_on_cuda_equals_full_frame_paste_on_cuda():
    for size in [(37, 61), (240, 320), (1080, 1920)]:
        g = torch.Generator().manual_seed(size[1])
        probs, boxes = random_probs(200, g).cuda(), random_boxes(size, 200, g).cuda()
        compared, _ = check_equal(probs, boxes, size)
        assert compared == 200
