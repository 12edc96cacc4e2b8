"""Mask assembly: crop semantics on the prototype grid, upsampling, thresholds, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg.ops import masks as masks_mod
from rtseg.ops.boxes import boxes_to_pixels
from rtseg.ops.masks import assemble_masks, bilinear_taps, crop_keep, crop_masks, mask_probabilities


def test_crop_keeps_box_cells_plus_one_cell_padding():
    masks = torch.ones(10, 10, 1)
    out = crop_masks(masks, torch.tensor([[0.3, 0.4, 0.6, 0.8]]))  # cols 3..6 → 2..6 padded, rows 4..8 → 3..8
    rows, cols = torch.nonzero(out[..., 0], as_tuple=True)
    assert (int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())) == (2, 6, 3, 8)


def test_crop_handles_boxes_at_and_beyond_border_and_reversed():
    masks = torch.ones(8, 8, 3)
    boxes = torch.tensor([[-0.5, -0.5, 0.25, 0.25], [0.75, 0.75, 1.5, 1.5], [0.5, 0.5, 0.25, 0.25]])
    out = crop_masks(masks, boxes)
    assert out[..., 0].sum() == 9  # rows/cols 0..2
    assert out[..., 1].sum() == 9  # rows/cols 5..7
    assert out[..., 2].sum() == 16  # reversed corners are ordered: cols 1..4


def test_degenerate_box_gives_padding_only():
    out = crop_masks(torch.ones(8, 8, 1), torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    assert out.sum() == 4  # [4-1, 4+1) in both axes


def test_assemble_matches_manual_pipeline():
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(20, 20, 4, generator=g)
    coef = torch.randn(3, 4, generator=g)
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0], [0.5, 0.2, 0.9, 0.4]])
    soft = torch.sigmoid(proto @ coef.t()) * crop_masks(torch.ones(20, 20, 3), boxes)
    ref = F.interpolate(soft.permute(2, 0, 1)[None], (37, 53), mode="bilinear", align_corners=False)[0] > 0.5
    got = assemble_masks(proto, coef, boxes, (37, 53))
    assert got.dtype == torch.bool and got.shape == (3, 37, 53)
    assert torch.equal(got, ref)
    assert torch.allclose(mask_probabilities(proto, coef, boxes), soft.permute(2, 0, 1))


def test_assemble_zero_instances_and_uncropped():
    proto = torch.rand(8, 8, 2)
    assert assemble_masks(proto, torch.zeros(0, 2), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)
    full = assemble_masks(proto, torch.full((1, 2), 5.0), torch.tensor([[0.4, 0.4, 0.5, 0.5]]), (16, 16), crop=False)
    assert bool(full.all())  # strong positive coefficients, no crop → everything on


def test_boxes_to_pixels_orders_and_clamps():
    px = boxes_to_pixels(torch.tensor([[-0.1, 0.5, 0.5, 1.2], [0.6, 0.6, 0.2, 0.1]]), 100, 200)
    assert torch.allclose(px, torch.tensor([[0.0, 50.0, 100.0, 100.0], [40.0, 10.0, 120.0, 60.0]]), atol=1e-4)


# --- the CPU's assembly in box footprints equals the full-frame F.interpolate ------------------------------------

#: Boxes (relative point form) at the edge cases of the footprint: the whole frame, past every border, touching
#: each border, a point, one prototype cell, reversed corners, a sliver at either corner.
EDGE_BOXES = [[0.0, 0.0, 1.0, 1.0], [-0.3, -0.2, 1.4, 1.3], [0.0, 0.3, 0.2, 0.6], [0.8, 0.0, 1.0, 0.3],
              [0.4, 0.8, 0.7, 1.0], [0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.3 + 1 / 138, 0.3 + 1 / 138],
              [0.7, 0.6, 0.2, 0.1], [0.995, 0.995, 1.0, 1.0], [0.0, 0.0, 0.004, 0.004]]

#: How close to the threshold F.interpolate's value must be for the footprint path to decide otherwise (it
#: rounds differently: an ulp of the source index, 7.6e-6 near 128, plus a few of the blends).
NEAR = 2e-5


def _check_against_full_frame(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor,
                              size: tuple[int, int], threshold: float) -> None:
    """assemble_masks equals the official order on the whole frame — crop(sigmoid(proto @ coef.T)), bilinear
    upsample, > threshold — except where that upsampled value lies within NEAR of the threshold."""
    got = assemble_masks(proto, coef, boxes, size, threshold=threshold)
    up = F.interpolate(mask_probabilities(proto, coef, boxes)[None], size, mode="bilinear", align_corners=False)[0]
    assert got.dtype == torch.bool and got.shape == (len(coef), *size)
    differ = got != (up > threshold)
    # (indexed by the few differing pixels, not by the millions far from the threshold: the same check, 6x faster)
    assert not ((up - threshold)[differ].abs() > NEAR).any(), (size, threshold, int(differ.sum()))
    assert int(differ.sum()) <= 2  # (the near pixels are rare: a handful in millions)


def _case(seed: int, h: int, w: int, n: int, *, smooth: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prototypes (h, w, 32) — smooth blobs or per-cell noise —, n coefficients and n boxes: the edge boxes, then
    random ones from a cell to most of the frame."""
    g = torch.Generator().manual_seed(seed)
    if smooth:
        proto = F.interpolate(torch.randn(1, 32, 6, 6, generator=g), (h, w), mode="bilinear", align_corners=False)
        proto = proto[0].permute(1, 2, 0).contiguous() * 2
    else:
        proto = torch.randn(h, w, 32, generator=g)
    coef = torch.randn(n, 32, generator=g) * 0.5
    centre, side = torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) ** 2 * 0.9
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    edge = torch.tensor(EDGE_BOXES)[:n]
    boxes[:len(edge)] = edge
    return proto, coef, boxes


@pytest.mark.parametrize("whole_frame_share", [0.5, 2.0, 0.0], ids=["default", "footprints only", "F.interpolate"])
@pytest.mark.parametrize("size", [(480, 640), (37, 200), (138, 300), (100, 61), (721, 1283)])
def test_footprint_assembly_equals_full_frame_interpolate(monkeypatch: pytest.MonkeyPatch, whole_frame_share: float,
                                                          size: tuple[int, int]) -> None:
    """Footprints and the whole-frame branch for big ones give F.interpolate's masks, for upsampling,
    downsampling and an identity axis (138 rows), thresholds from 0 to 0.93, smooth and noisy prototypes."""
    monkeypatch.setattr(masks_mod, "WHOLE_FRAME_SHARE", whole_frame_share)
    for seed, smooth in ((0, True), (1, False)):
        proto, coef, boxes = _case(seed, 138, 138, 16, smooth=smooth)
        for threshold in (0.5, 0.0, 0.3, 0.93):
            for i in range(0, 16, 8):  # chunks of 8, as the engine
                _check_against_full_frame(proto, coef[i:i + 8], boxes[i:i + 8], size, threshold)


def test_footprint_assembly_full_hd_and_odd_grids() -> None:
    """1920x1080 from YOLACT's 138x138 grid, and non-square grids (prototypes of other input sizes)."""
    for (h, w), size in (((138, 138), (1080, 1920)), ((69, 87), (480, 640)), ((175, 150), (333, 777))):
        proto, coef, boxes = _case(2, h, w, 8, smooth=True)
        _check_against_full_frame(proto, coef, boxes, size, 0.5)


def test_footprint_assembly_nan_prototypes_and_other_paths() -> None:
    """NaN prototype cells (NaN probabilities survive the crop as NaN * 0, and compare False) give F.interpolate's
    masks; float64, a negative threshold and 3 masks on one thread (PyTorch's channels-last kernel) as well."""
    proto, coef, boxes = _case(3, 138, 138, 8, smooth=True)
    proto[40:45, 60:62] = float("nan")
    proto[0, 137] = float("nan")
    size = (480, 640)
    _check_against_full_frame(proto, coef, boxes, size, 0.5)
    _check_against_full_frame(proto.double(), coef.double(), boxes.double(), size, 0.5)
    proto, coef, boxes = _case(4, 138, 138, 8, smooth=True)
    assert bool(assemble_masks(proto, coef, boxes, size, threshold=-0.1).all())
    torch.set_num_threads(1)
    _check_against_full_frame(proto, coef[:3], boxes[:3], size, 0.5)


def test_crop_keep_matches_crop_masks() -> None:
    boxes = torch.tensor(EDGE_BOXES)
    rows, cols = crop_keep(boxes, 20, 30)
    assert torch.equal(crop_masks(torch.ones(20, 30, len(boxes)), boxes).bool().permute(2, 0, 1),
                       rows[:, :, None] & cols[:, None, :])


def test_bilinear_taps_are_f_interpolates() -> None:
    """Upsampling a one-hot row through the taps gives F.interpolate's weights (1-D: no second pass to round)."""
    for n_in, n_out in ((138, 480), (138, 1920), (138, 138), (138, 61), (5, 3)):
        taps = bilinear_taps(n_in, n_out)
        assert (np.diff(taps.i0) >= 0).all() and (taps.i1 >= taps.i0).all() and (taps.i1 < n_in).all()
        eye = torch.eye(n_in)[:, None, :]  # (n_in, 1, n_in): row c is the one-hot input at cell c
        ref = F.interpolate(eye, n_out, mode="linear", align_corners=False)[:, 0, :].numpy()  # (n_in, n_out)
        got = np.zeros((n_in, n_out), np.float32)
        np.add.at(got, (taps.i0, np.arange(n_out)), taps.l0)
        np.add.at(got, (taps.i1, np.arange(n_out)), taps.l1)
        np.testing.assert_allclose(got, ref, atol=1e-5)
