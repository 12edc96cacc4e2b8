"""Panoptic quality PQ = SQ x RQ (Kirillov et al., CVPR 2019), panopticapi semantics.

Per image, a predicted and a ground-truth segment of the same category match
when their IoU > 0.5 (unique by construction). Ground-truth id 0 is void: the
void part of a predicted segment is left out of its union, and an unmatched
prediction that is more than half void is not a false positive. Predicted
id 0 is unlabeled (belongs to no segment). Per category c:
SQ_c = sum IoU(TP) / |TP|, RQ_c = |TP| / (|TP| + |FP|/2 + |FN|/2), PQ_c = SQ_c RQ_c;
PQ / SQ / RQ average over categories with any TP, FP or FN (all, things, stuff).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rtseg.data.synthetic import Instance
from rtseg.eval.superpixels import masks_to_segmentation
from rtseg.types import Panoptic


def panoptic_from_instances(instances: Sequence[Instance], size: tuple[int, int],
                            class_names: Sequence[str]) -> Panoptic:
    """Ground-truth Panoptic of a synthetic frame: thing i + 1 = ``instances[i]`` (category class_id + 1),
    and the rest one stuff segment of category 0 ("background"); ``class_names`` indexed by category."""
    masks = np.array([inst.mask for inst in instances], bool).reshape(-1, *size)
    return panoptic_from_masks(masks, [inst.class_id + 1 for inst in instances], class_names)


def panoptic_from_masks(masks: np.ndarray, categories: Sequence[int], class_names: Sequence[str], *,
                        void: np.ndarray | None = None) -> Panoptic:
    """Ground-truth Panoptic of instance masks: thing i + 1 = ``masks[i]`` (category ``categories[i]``; later
    masks win where they overlap), void (0) where ``void`` and no thing, the rest one stuff segment of category
    0 ("background").

    masks: (N, H, W) bool; void: (H, W) bool or None (e.g. COCO crowd regions); ``class_names`` by category.
    """
    ids = masks_to_segmentation(masks)
    areas = np.bincount(ids.reshape(-1), minlength=len(masks) + 1)
    segments = [{"id": i + 1, "category_id": int(c), "isthing": True, "area": int(areas[i + 1])}
                for i, c in enumerate(categories)]
    rest = ids == 0 if void is None else (ids == 0) & ~void
    if rest.any():
        bg = len(masks) + 1
        ids[rest] = bg
        segments.append({"id": bg, "category_id": 0, "isthing": False, "area": int(rest.sum())})
    return Panoptic(ids=ids, segments=segments, class_names=class_names)


class PanopticEvaluator:
    """Accumulates per-category IoU sums and TP/FP/FN over frames; ``summarize()`` gives PQ/SQ/RQ."""

    def __init__(self, num_categories: int, *, things: Sequence[int]) -> None:
        self.num_categories = num_categories
        self.is_thing = np.zeros(num_categories, bool)
        self.is_thing[list(things)] = True
        self.iou_sum = np.zeros(num_categories)
        self.tp = np.zeros(num_categories, np.int64)
        self.fp = np.zeros(num_categories, np.int64)
        self.fn = np.zeros(num_categories, np.int64)

    def add(self, pred: Panoptic, gt: Panoptic) -> None:
        """One frame: ``pred`` and ``gt`` of equal size, segments' category ids < num_categories."""
        if pred.ids.shape != gt.ids.shape:
            raise ValueError(f"PanopticEvaluator.add: prediction {pred.ids.shape} and ground truth {gt.ids.shape} differ")
        pcat = {s["id"]: s["category_id"] for s in pred.segments}
        gcat = {s["id"]: s["category_id"] for s in gt.segments}
        for name, ids, cat in (("prediction", pred.ids, pcat), ("ground truth", gt.ids, gcat)):
            unknown = set(np.unique(ids).tolist()) - set(cat) - {0}
            if unknown:
                raise ValueError(f"PanopticEvaluator.add: {name} ids {sorted(unknown)[:5]} have no segment entry")
        np_ = int(pred.ids.max(initial=0)) + 1
        pair = np.bincount((gt.ids * np_ + pred.ids).reshape(-1))
        nz = np.flatnonzero(pair)
        g_of, p_of, inter = nz // np_, nz % np_, pair[nz]
        p_area = np.bincount(pred.ids.reshape(-1), minlength=np_)
        g_area = np.bincount(gt.ids.reshape(-1))
        void_in_pred = {int(p): int(n) for g, p, n in zip(g_of, p_of, inter) if g == 0}
        matched_p, matched_g = set(), set()
        for g, p, n in zip(g_of.tolist(), p_of.tolist(), inter.tolist()):
            if g == 0 or p == 0 or gcat[g] != pcat[p]:
                continue
            union = p_area[p] + g_area[g] - n - void_in_pred.get(p, 0)
            iou = n / union
            if iou > 0.5:
                c = gcat[g]
                self.tp[c] += 1
                self.iou_sum[c] += iou
                matched_p.add(p)
                matched_g.add(g)
        for g, c in gcat.items():
            present = g < len(g_area) and g_area[g] > 0
            if present and g not in matched_g:
                self.fn[c] += 1
        for p, c in pcat.items():
            if p in matched_p or p >= np_ or p_area[p] == 0:
                continue
            if void_in_pred.get(p, 0) / p_area[p] > 0.5:
                continue
            self.fp[c] += 1

    def summarize(self, class_names: Sequence[str] = ()) -> dict[str, float]:
        """{"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", ..., "PQ/<name>"...} in [0, 1]."""
        sq = np.divide(self.iou_sum, self.tp, out=np.zeros(self.num_categories), where=self.tp > 0)
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        rq = np.divide(self.tp, den, out=np.zeros(self.num_categories), where=den > 0)
        pq = sq * rq
        out: dict[str, float] = {}
        for suffix, sel in (("", np.ones_like(self.is_thing)), ("_th", self.is_thing), ("_st", ~self.is_thing)):
            keep = sel & (den > 0)
            for name, v in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[name + suffix] = float(v[keep].mean()) if keep.any() else 0.0
        names = list(class_names) or [str(i) for i in range(self.num_categories)]
        out.update({f"PQ/{names[c]}": float(pq[c]) for c in np.flatnonzero(den > 0)})
        return out
