"""Panoptic quality PQ = SQ x RQ (Kirillov et al., CVPR 2019), the rules of panopticapi's ``pq_compute``.

Per image (github cocodataset/panopticapi, ``evaluation.pq_compute_single_core``):

- Ground-truth id 0 is void; a ground-truth segment with ``"iscrowd": True`` is a crowd region of its
  category (all crowd segments of one category form that category's crowd region). Predicted id 0 is
  unlabeled (belongs to no segment).
- A predicted and a non-crowd ground-truth segment of the same category match when
  IoU = |P ∩ G| / (|P ∪ G| - |P ∩ void|) > 0.5 (unique by construction). Crowd pixels are not void:
  they stay in the union.
- Unmatched non-crowd ground-truth segments are false negatives; crowd segments never are.
- An unmatched prediction of category c is a false positive unless
  (|P ∩ void| + |P ∩ crowd region of c|) / |P| > 0.5; crowd regions of other categories do not excuse it.

Segment entries without pixels are skipped (panopticapi would count an empty ground-truth entry as a
false negative and reject an empty predicted one). Per category c: SQ_c = sum IoU(TP) / |TP|,
RQ_c = |TP| / (|TP| + |FP|/2 + |FN|/2), PQ_c = SQ_c RQ_c; PQ / SQ / RQ average over categories with any
TP, FP or FN (all, things, stuff).
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
                        iscrowd: np.ndarray | None = None) -> Panoptic:
    """Ground-truth Panoptic of instance masks (COCO style, crowd regions included).

    masks: (N, H, W) bool; categories: (N,) category id of each mask; iscrowd: (N,) bool or None (no crowd);
    ``class_names`` by category. Thing i + 1 = ``masks[i]`` where not crowd (later masks win where they
    overlap). The crowd masks of one category form one segment {"iscrowd": True}, id = 1 + index of the
    category's first crowd mask; crowd lies under every non-crowd thing. The rest is one stuff segment of
    category 0 ("background"), id N + 1. Every segment: {"id", "category_id", "isthing", "iscrowd", "area"};
    masks left without pixels get no segment.
    """
    n = len(masks)
    crowd = np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool).reshape(n)
    cats = [int(c) for c in categories]
    seg_id = np.arange(1, n + 1)
    first: dict[int, int] = {}
    for i in np.flatnonzero(crowd):
        seg_id[i] = first.setdefault(cats[i], i + 1)
    order = np.r_[np.flatnonzero(crowd), np.flatnonzero(~crowd)].astype(np.int64)
    ids = np.r_[0, seg_id[order]][masks_to_segmentation(masks[order])]
    bg = n + 1
    ids[ids == 0] = bg
    areas = np.bincount(ids.reshape(-1), minlength=bg + 1)
    segments = [{"id": i + 1, "category_id": c, "isthing": True, "iscrowd": bool(crowd[i]),
                 "area": int(areas[i + 1])} for i, c in enumerate(cats) if areas[i + 1] > 0]
    if areas[bg] > 0:
        segments.append({"id": bg, "category_id": 0, "isthing": False, "iscrowd": False, "area": int(areas[bg])})
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
        """One frame: ``pred`` and ``gt`` of equal size, segments' category ids < num_categories; ground-truth
        segments with a true "iscrowd" are crowd regions (see the module docstring)."""
        if pred.ids.shape != gt.ids.shape:
            raise ValueError(f"PanopticEvaluator.add: prediction {pred.ids.shape} and ground truth {gt.ids.shape} differ")
        pcat = {s["id"]: s["category_id"] for s in pred.segments}
        gcat = {s["id"]: s["category_id"] for s in gt.segments}
        crowd = {s["id"] for s in gt.segments if s.get("iscrowd", False)}
        for name, ids, cat in (("prediction", pred.ids, pcat), ("ground truth", gt.ids, gcat)):
            unknown = set(np.unique(ids).tolist()) - set(cat) - {0}
            if unknown:
                raise ValueError(f"PanopticEvaluator.add: {name} ids {sorted(unknown)[:5]} have no segment entry")
        np_ = int(pred.ids.max(initial=0)) + 1
        pair = np.bincount((gt.ids * np_ + pred.ids).reshape(-1))
        nz = np.flatnonzero(pair)
        pairs = list(zip((nz // np_).tolist(), (nz % np_).tolist(), pair[nz].tolist()))
        p_area = np.bincount(pred.ids.reshape(-1), minlength=np_)
        g_area = np.bincount(gt.ids.reshape(-1))
        void_in_pred = {p: n for g, p, n in pairs if g == 0}
        matched_p, matched_g = set(), set()
        for g, p, n in pairs:
            if g == 0 or p == 0 or g in crowd or gcat[g] != pcat[p]:
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
            if present and g not in matched_g and g not in crowd:
                self.fn[c] += 1
        ignored = dict(void_in_pred)  # void pixels, plus pixels on the crowd region of the prediction's category
        for g, p, n in pairs:
            if g in crowd and p != 0 and gcat[g] == pcat[p]:
                ignored[p] = ignored.get(p, 0) + n
        for p, c in pcat.items():
            if p in matched_p or p >= np_ or p_area[p] == 0:
                continue
            if ignored.get(p, 0) / p_area[p] > 0.5:
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
