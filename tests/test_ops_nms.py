"""Fast NMS, cross-class Fast NMS and traditional NMS against brute-force references and torchvision."""
from __future__ import annotations

import torch
import torchvision

from rtseg.ops.boxes import box_iou, center_size, decode, point_form
from rtseg.ops.nms import cross_class_fast_nms, fast_nms, traditional_nms


def _brute_fast_nms(boxes, scores, t, top_k, max_det):
    """Per class: sort, top_k, keep j iff max_{i<j} IoU(i, j) <= t (suppressed boxes still count)."""
    out = []
    for c in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda i: -float(scores[c, i]))[:top_k]
        for jj, j in enumerate(order):
            ious = [float(box_iou(boxes[i][None], boxes[j][None])[0, 0]) for i in order[:jj]]
            if not ious or max(ious) <= t:
                out.append((float(scores[c, j]), j, c))
    out.sort(key=lambda r: -r[0])
    return out[:max_det]


def _random_boxes(n, g):
    xy = torch.rand(n, 2, generator=g) * 0.8
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    return torch.cat([xy, xy + wh], 1)


def test_fast_nms_matches_brute_force_on_random_sets():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        boxes = _random_boxes(60, g)
        scores = torch.rand(4, 60, generator=g)
        idx, cls, sc = fast_nms(boxes, scores, iou_threshold=0.5, top_k=25, max_detections=40)
        ref = _brute_fast_nms(boxes, scores, 0.5, 25, 40)
        assert [(int(i), int(c)) for i, c in zip(idx, cls)] == [(j, c) for _, j, c in ref]
        assert torch.allclose(sc, torch.tensor([s for s, _, _ in ref]))
        assert bool((sc[:-1] >= sc[1:]).all())


def test_padded_fast_nms_is_the_compacted_result_then_minus_one_rows():
    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(80, g)
    scores = torch.rand(3, 80, generator=g)
    idx, cls, sc = fast_nms(boxes, scores, iou_threshold=0.5, top_k=30, max_detections=100)
    p_idx, p_cls, p_sc = fast_nms(boxes, scores, iou_threshold=0.5, top_k=30, max_detections=100, padded=True)
    assert p_sc.shape == (90,) and len(sc) < 90  # 3 classes x 30: fixed size, some suppressed
    n = len(sc)
    assert torch.equal(p_idx[:n], idx) and torch.equal(p_cls[:n], cls) and torch.equal(p_sc[:n], sc)
    assert bool((p_sc[n:] == -1).all())


def test_negative_scores_never_detected_and_suppress_nothing():
    g = torch.Generator().manual_seed(2)
    boxes = _random_boxes(50, g)
    scores = torch.rand(2, 50, generator=g)
    dropped = torch.zeros(50, dtype=torch.bool)
    dropped[::3] = True
    ref = _brute_fast_nms(boxes[~dropped], scores[:, ~dropped], 0.5, 200, 100)
    original = torch.nonzero(~dropped).flatten()
    idx, cls, sc = fast_nms(boxes, scores.masked_fill(dropped[None], -1), padded=True)
    n = int((sc >= 0).sum())
    assert [(int(i), int(c)) for i, c in zip(idx[:n], cls[:n])] == [(int(original[j]), c) for _, j, c in ref]
    assert bool((sc[n:] == -1).all())


def test_zero_and_one_candidate():
    idx, cls, sc = fast_nms(torch.zeros(0, 4), torch.zeros(3, 0))
    assert idx.numel() == cls.numel() == sc.numel() == 0
    box = torch.tensor([[0.1, 0.1, 0.4, 0.5]])
    for fn in (fast_nms, cross_class_fast_nms, traditional_nms):
        idx, cls, sc = fn(box, torch.tensor([[0.9], [0.2]]))
        assert idx.tolist()[0] == 0 and cls.tolist()[0] == 0 and abs(float(sc[0]) - 0.9) < 1e-7


def test_box_iou_is_bit_identical_to_the_corner_tensor_arithmetic():
    """box_iou works per coordinate; the official jaccard stacks corners into (C, N, M, 2) tensors: the
    same operations per pair, so the same bits (NaN for an identical degenerate pair)."""
    def corners(a, b):
        lt = torch.max(a[:, :, None, :2].expand(-1, -1, b.shape[1], 2), b[:, None, :, :2].expand(-1, a.shape[1], -1, 2))
        rb = torch.min(a[:, :, None, 2:].expand(-1, -1, b.shape[1], 2), b[:, None, :, 2:].expand(-1, a.shape[1], -1, 2))
        inter = torch.clamp(rb - lt, min=0).prod(3)
        area_a = ((a[:, :, 2] - a[:, :, 0]) * (a[:, :, 3] - a[:, :, 1]))[:, :, None]
        area_b = ((b[:, :, 2] - b[:, :, 0]) * (b[:, :, 3] - b[:, :, 1]))[:, None, :]
        return inter / (area_a + area_b - inter)

    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64, torch.float16):
        xy = torch.rand(6, 50, 2, generator=g) * 1.2 - 0.1
        boxes = torch.cat([xy, xy + torch.rand(6, 50, 2, generator=g) * 0.4], -1).to(dtype)
        boxes[0, 5] = boxes[0, 7]  # a duplicate
        boxes[1, 3, 2:] = boxes[1, 3, :2]  # degenerate
        boxes[2, 4] = boxes[2, 3]  # swapped corners
        boxes[2, 4, :2], boxes[2, 4, 2:] = boxes[2, 3, 2:], boxes[2, 3, :2]
        want, got = corners(boxes, boxes[:, :40]), box_iou(boxes, boxes[:, :40])
        assert got.dtype == dtype and torch.equal(want.isnan(), got.isnan()) and int(got.isnan().sum()) == 1
        assert torch.equal(want.nan_to_num(7.0), got.nan_to_num(7.0)), dtype
    flat = torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.25, 0.0, 0.75, 0.25]])
    assert torch.equal(box_iou(flat, flat), torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]]))  # (N, 4) boxes too


def test_iou_exactly_at_threshold_is_kept_and_just_above_is_suppressed():
    a = torch.tensor([0.0, 0.0, 0.5, 0.25])
    at = torch.tensor([0.0, 0.0, 0.25, 0.25])  # IoU exactly 0.5 (all values exact in binary)
    above = torch.tensor([0.0, 0.0, 0.2578125, 0.25])  # IoU 0.515625
    assert float(box_iou(a[None], at[None])) == 0.5
    for other, kept in ((at, 2), (above, 1)):
        boxes = torch.stack([a, other])
        scores = torch.tensor([[0.9, 0.8]])
        for fn in (fast_nms, cross_class_fast_nms, traditional_nms):
            idx, _, _ = fn(boxes, scores, iou_threshold=0.5)
            assert len(idx) == kept, fn.__name__


def test_suppressed_boxes_still_suppress_in_fast_nms_only():
    # A overlaps B, B overlaps C, A does not overlap C.
    boxes = torch.tensor([[0.0, 0.0, 0.3, 0.3], [0.05, 0.0, 0.35, 0.3], [0.12, 0.0, 0.42, 0.3]])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    assert sorted(fast_nms(boxes, scores)[0].tolist()) == [0]
    assert sorted(traditional_nms(boxes, scores)[0].tolist()) == [0, 2]


def test_exact_score_ties_and_duplicate_boxes_keep_one():
    box = torch.tensor([[0.2, 0.2, 0.6, 0.7]]).repeat(5, 1)
    scores = torch.full((1, 5), 0.5)
    for fn in (fast_nms, cross_class_fast_nms, traditional_nms):
        idx, _, _ = fn(box, scores)
        assert len(idx) == 1, fn.__name__


def test_per_class_independence_and_cross_class_merging():
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.52]])
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.8]])  # same place, different classes
    idx, cls, _ = fast_nms(boxes, scores, top_k=1)
    assert sorted(zip(idx.tolist(), cls.tolist())) == [(0, 0), (1, 1)]
    idx, cls, _ = cross_class_fast_nms(boxes, scores)
    assert idx.tolist() == [0] and cls.tolist() == [0]


def test_top_k_per_class_and_max_detections():
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[i / 20, 0.0, i / 20 + 0.04, 0.04] for i in range(20)])  # disjoint
    scores = torch.rand(3, 20, generator=g)
    idx, cls, _ = fast_nms(boxes, scores, top_k=5, max_detections=100)
    assert len(idx) == 15 and all((cls == c).sum() == 5 for c in range(3))
    idx, _, sc = fast_nms(boxes, scores, top_k=200, max_detections=7)
    assert len(idx) == 7 and torch.equal(sc, scores.flatten().sort(descending=True).values[:7])


def test_degenerate_boxes_do_not_crash():
    boxes = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.2, 0.2]])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    idx, _, _ = fast_nms(boxes, scores)
    assert 0 in idx.tolist() and 2 in idx.tolist()


def test_traditional_nms_matches_torchvision_batched_nms():
    g = torch.Generator().manual_seed(2)
    boxes = _random_boxes(80, g)
    scores = torch.rand(3, 80, generator=g)
    idx, cls, sc = traditional_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.05, max_detections=1000)
    flat_boxes = boxes.repeat(3, 1)
    flat_scores = scores.flatten()
    labels = torch.arange(3).repeat_interleave(80)
    ok = flat_scores > 0.05
    keep = torchvision.ops.batched_nms(flat_boxes[ok], flat_scores[ok], labels[ok], 0.5)
    ref = {(int(i) % 80, int(l)) for i, l in zip(torch.nonzero(ok).flatten()[keep], labels[ok][keep])}
    assert set(zip(idx.tolist(), cls.tolist())) == ref


def test_decode_inverts_center_form_and_border_boxes():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.02, 0.98, 0.3, 0.3]])
    boxes = decode(torch.zeros(2, 4), priors)
    assert torch.allclose(center_size(boxes), priors, atol=1e-7)
    assert torch.allclose(point_form(priors), boxes)
    assert float(boxes[1, 0]) < 0 and float(boxes[1, 3]) > 1  # beyond the border before sanitising
