"""Mask assembly: crop semantics on the prototype grid, upsampling, thresholds, edge cases."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rtseg.ops.boxes import boxes_to_pixels
from rtseg.ops.masks import assemble_masks, crop_masks, mask_probabilities


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
