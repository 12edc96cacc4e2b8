"""PQ with COCO crowd regions: panopticapi's per-category crowd rule, by hand and against panopticapi itself.

The hand-built cases check numbers worked out in the comments from the rules (github cocodataset/panopticapi,
``evaluation.pq_compute_single_core``); the last test runs panopticapi's own code on a random synthetic data
set when ``panopticapi`` is importable (PyPI has no ``panopticapi``; ``pip install --no-deps
panopticapi-lite==0.2.0`` installs the unchanged evaluation code under that name).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.engines.panoptic import id_to_rgb
from rtseg.eval.panoptic import PanopticEvaluator, panoptic_from_masks
from rtseg.eval.runners import PanopticScorer
from rtseg.types import Panoptic

BG, A, B = 0, 1, 2  # categories: background (stuff), a and b (things)
NAMES = ["background", "a", "b"]


def _box(r0: int, r1: int, c0: int, c1: int, size: tuple[int, int] = (10, 10)) -> np.ndarray:
    """(H, W) bool mask of rows r0..r1-1, columns c0..c1-1."""
    m = np.zeros(size, bool)
    m[r0:r1, c0:c1] = True
    return m


# A 10 x 10 image. Ground truth: upper crowd rows 0-3 x cols 0-3 (16 px), lower crowd rows 6-9 x cols 0-3
# (16 px), thing "a" rows 0-4 x cols 5-9 (25 px), void column 4 (10 px), background the rest (8 + 25 = 33 px).
# Prediction (the same in both scenarios):
#   10 "a"          rows 0-4 x cols 5-9 = the thing (IoU 1)
#   11 background   rows 5-6 x cols 0-3 + rows 5-9 x cols 4-9: 38 px = 29 background + 4 lower crowd + 5 void
#   12 "a"          rows 0-4 x cols 0-4: 25 px = 16 upper crowd + 5 void + 4 background
#   13 "b"          rows 7-9 x cols 0-3: 12 px, all lower crowd
#   column 4 of rows 0-4 is in 12; nothing is unlabeled.
def _prediction() -> Panoptic:
    ids = np.zeros((10, 10), np.int64)
    ids[_box(0, 5, 5, 10)] = 10
    ids[_box(5, 7, 0, 4) | _box(5, 10, 4, 10)] = 11
    ids[_box(0, 5, 0, 5)] = 12
    ids[_box(7, 10, 0, 4)] = 13
    segments = [{"id": 10, "category_id": A}, {"id": 11, "category_id": BG}, {"id": 12, "category_id": A},
                {"id": 13, "category_id": B}]
    return Panoptic(ids=ids, segments=segments)


VOID = _box(0, 10, 4, 5)


def _ground_truth(upper: int, lower: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks, categories, iscrowd) of the scene's instances: crowds of categories ``upper`` and ``lower``,
    thing "a" (the void column is not among them)."""
    masks = np.array([_box(0, 4, 0, 4), _box(6, 10, 0, 4), _box(0, 5, 5, 10)])
    return masks, np.array([upper, lower, A]), np.array([True, True, False])


def _evaluate(upper: int, lower: int) -> PanopticEvaluator:
    masks, cats, crowd = _ground_truth(upper, lower)
    gt = panoptic_from_masks(masks, cats, NAMES, iscrowd=crowd)
    gt.ids[VOID] = 0  # unlabeled pixels (COCO void); only background lay there
    ev = PanopticEvaluator(3, things=[A, B])
    ev.add(_prediction(), gt)
    return ev


# background: IoU = |P ∩ G| / (|P| + |G| - |P ∩ G| - |P ∩ void|); the 4 crowd pixels stay in the union
IOU_BG = 29 / (38 + 33 - 29 - 5)


def test_prediction_over_a_crowd_of_its_own_category_is_ignored():
    # upper crowd "a", lower crowd "b": 12 ("a") is (5 void + 16 own crowd) / 25 = 0.84 ignorable -> no FP;
    # 13 ("b") is 12 / 12 on the "b" crowd -> no FP; the crowds are no false negatives.
    ev = _evaluate(upper=A, lower=B)
    assert ev.tp.tolist() == [1, 1, 0] and ev.fp.tolist() == [0, 0, 0] and ev.fn.tolist() == [0, 0, 0]
    m = ev.summarize(NAMES)
    assert m["PQ/a"] == 1.0 and "PQ/b" not in m  # b has no TP, FP or FN: not averaged
    assert m["PQ_st"] == pytest.approx(IOU_BG) and m["SQ_st"] == pytest.approx(IOU_BG) and m["RQ_st"] == 1.0
    assert m["PQ_th"] == m["SQ_th"] == m["RQ_th"] == 1.0
    assert m["PQ"] == pytest.approx((1.0 + IOU_BG) / 2) and m["RQ"] == 1.0


def test_prediction_over_a_crowd_of_another_category_is_a_false_positive():
    # the crowds swapped: upper "b", lower "a". 12 ("a") now covers a "b" crowd: only 5 void / 25 = 0.2 -> FP
    # of "a"; 13 ("b") covers an "a" crowd: 0 / 12 -> FP of "b". Matches are unchanged.
    ev = _evaluate(upper=B, lower=A)
    assert ev.tp.tolist() == [1, 1, 0] and ev.fp.tolist() == [0, 1, 1] and ev.fn.tolist() == [0, 0, 0]
    m = ev.summarize(NAMES)
    pq_a = 1.0 / (1 + 0.5 * 1)  # one TP of IoU 1 and one FP
    assert m["PQ/a"] == pytest.approx(pq_a) and m["PQ/b"] == 0.0  # b: one FP, no TP
    assert m["PQ_th"] == pytest.approx((pq_a + 0.0) / 2) and m["SQ_th"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["RQ_th"] == pytest.approx((pq_a + 0.0) / 2)
    assert m["PQ"] == pytest.approx((IOU_BG + pq_a + 0.0) / 3)
    assert m["SQ"] == pytest.approx((IOU_BG + 1.0 + 0.0) / 3) and m["RQ"] == pytest.approx((1.0 + pq_a) / 3)


def test_ignore_needs_more_than_half_void_plus_own_crowd():
    # one row: a crowd of "a" (2 px), then background. Prediction "a" over crowd + background, rest background.
    gt = panoptic_from_masks(np.array([[[1, 1, 0, 0, 0, 0, 0, 0]]], bool), [A], NAMES, iscrowd=np.array([True]))
    for width, fp in ((3, 0), (4, 1)):  # 2 / 3 > 0.5: ignored; 2 / 4 = 0.5 is not more than half: FP
        ids = np.where(np.arange(8) < width, 1, 2)[None].astype(np.int64)
        pred = Panoptic(ids=ids, segments=[{"id": 1, "category_id": A}, {"id": 2, "category_id": BG}])
        ev = PanopticEvaluator(3, things=[A, B])
        ev.add(pred, gt)
        # background: P = 8 - width px, G = 6 px, all of P in G -> IoU (8 - width) / 6 > 0.5: a TP either way
        assert ev.fp.tolist() == [0, fp, 0] and ev.tp.tolist() == [1, 0, 0] and ev.fn.tolist() == [0, 0, 0]
        assert ev.iou_sum[BG] == pytest.approx((8 - width) / 6)


def test_ground_truth_builder_merges_crowds_per_category_under_things():
    masks = np.array([_box(0, 4, 0, 4), _box(2, 6, 2, 6), _box(6, 8, 6, 8), _box(3, 5, 3, 5)])
    gt = panoptic_from_masks(masks, [A, A, B, B], NAMES, iscrowd=np.array([True, True, True, False]))
    by_id = {s["id"]: s for s in gt.segments}
    # the two "a" crowds are one segment (id 1 = first of them); the "b" crowd id 3; thing 4 on top; background 5
    assert sorted(by_id) == [1, 3, 4, 5]
    assert (by_id[1]["category_id"], by_id[1]["iscrowd"], by_id[1]["area"]) == (A, True, 16 + 16 - 4 - 4)
    assert (by_id[3]["category_id"], by_id[3]["iscrowd"], by_id[3]["area"]) == (B, True, 4)
    assert (by_id[4]["category_id"], by_id[4]["iscrowd"], by_id[4]["area"]) == (B, False, 4)
    assert (by_id[5]["category_id"], by_id[5]["iscrowd"], by_id[5]["isthing"]) == (BG, False, False)
    assert (gt.ids[3:5, 3:5] == 4).all() and by_id[5]["area"] == 100 - 24 - 4 - 4


def test_panoptic_scorer_applies_crowd_rules_to_samples():
    """``rtseg eval --engine panoptic`` path: a Sample with crowd instances (data-set class ids 0 = "a", 1 = "b")."""
    masks, cats, crowd = _ground_truth(upper=B, lower=A)
    sample = Sample(image=np.zeros((10, 10, 3), np.uint8), boxes=masks_to_boxes(masks), class_ids=cats - 1,
                    masks=masks, iscrowd=crowd)
    scorer = PanopticScorer(NAMES, [A, B], ["a", "b"])  # engine categories = evaluation categories here
    pred = _prediction()
    scorer.add(pred, sample)
    ev = scorer.evaluator
    # no void column here: background is 33 + 10 = 43 px, of which 11 covers 4 + 5 + 25 = 34 (and 4 crowd px)
    assert ev.tp.tolist() == [1, 1, 0] and ev.fp.tolist() == [0, 1, 1] and ev.fn.tolist() == [0, 0, 0]
    assert ev.iou_sum[BG] == pytest.approx(34 / (38 + 43 - 34))
    swapped = PanopticScorer(NAMES, [A, B], ["a", "b"])
    swapped.add(pred, Sample(image=sample.image, boxes=sample.boxes, class_ids=np.array([A, B, A]) - 1,
                             masks=sample.masks, iscrowd=sample.iscrowd))
    # 12 ("a") = 16 own crowd + 9 background: 16 / 25 > 0.5 -> ignored; 13 ("b") on the "b" crowd -> ignored
    assert swapped.evaluator.fp.tolist() == [0, 0, 0]


# ---------------------------------------------------------------- panopticapi itself on random synthetic data

def _random_case(rng: np.random.Generator, size: tuple[int, int]) -> tuple[Panoptic, Panoptic]:
    """A ground truth with crowd regions and void, and a plausible prediction with errors of every kind."""
    h, w = size
    n = int(rng.integers(3, 8))
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        masks[i, y:y + rng.integers(6, 20), x:x + rng.integers(6, 24)] = True
    cats = rng.integers(1, 4, n)  # things 1..3
    crowd = rng.random(n) < 0.35
    gt = panoptic_from_masks(masks, cats, [], iscrowd=crowd)
    void = np.zeros((h, w), bool)
    void[:, rng.integers(0, w)] = True  # a void column, as unlabeled COCO pixels
    gt.ids[void & (gt.ids == n + 1)] = 0
    gt.segments[:] = [{**s, "area": int((gt.ids == s["id"]).sum())} for s in gt.segments]
    gt.segments[:] = [s for s in gt.segments if s["area"] > 0]

    ids = np.full((h, w), 500, np.int64)
    pcat = {500: 4 if rng.random() < 0.2 else 0}  # the background, now and then as stuff 4 ("sky")
    for s in gt.segments:
        if s["category_id"] == 0 or rng.random() < 0.15:
            continue
        m = np.roll(gt.ids == s["id"], tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        cat = s["category_id"] if rng.random() < 0.6 else int(rng.integers(1, 4))
        ids[m] = s["id"]
        pcat[s["id"]] = cat
    for k in range(int(rng.integers(0, 3))):  # false-positive blobs
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        ids[y:y + 6, x:x + 6] = 600 + k
        pcat[600 + k] = int(rng.integers(1, 4))
    ids[: int(rng.integers(0, 3)), :] = 0  # unlabeled rows
    present = set(np.unique(ids).tolist()) - {0}
    pred = Panoptic(ids=ids, segments=[{"id": i, "category_id": c, "isthing": c in (1, 2, 3)}
                                       for i, c in pcat.items() if i in present])
    return pred, gt


def _write(folder, name: str, pan: Panoptic) -> dict:
    """panopticapi files of one image: ``folder/name.png`` (RGB ids) and its annotation entry."""
    from PIL import Image

    Image.fromarray(id_to_rgb(pan.ids)).save(folder / f"{name}.png")
    infos = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": int(s.get("iscrowd", False)),
              "area": int((pan.ids == s["id"]).sum())} for s in pan.segments]
    return {"image_id": name, "file_name": f"{name}.png", "segments_info": infos}


REFERENCE = Path(__file__).parent / "data" / "panopticapi_crowded_scenes.npz"
THINGS = (1, 2, 3)
CATEGORIES = {c: {"id": c, "name": str(c), "isthing": int(c in THINGS)} for c in range(5)}


def _scenes() -> list[tuple[Panoptic, Panoptic]]:
    """40 (prediction, ground truth) pairs of 48 x 64 crowded scenes (seed 7)."""
    rng = np.random.default_rng(7)
    return [_random_case(rng, (48, 64)) for _ in range(40)]


def _panopticapi_stats(pairs: list[tuple[Panoptic, Panoptic]], folder: Path) -> dict:
    """panopticapi's own ``pq_compute_single_core`` on ``pairs`` → per category tp / fp / fn / iou and the
    PQ / SQ / RQ averages (all, things, stuff)."""
    evaluation = pytest.importorskip("panopticapi.evaluation")
    (folder / "gt").mkdir()
    (folder / "pred").mkdir()
    files = [(_write(folder / "gt", f"{i:04d}", gt), _write(folder / "pred", f"{i:04d}", pred))
             for i, (pred, gt) in enumerate(pairs)]
    files = json.loads(json.dumps(files))  # round-trip through JSON, as panopticapi reads its annotations
    stat = evaluation.pq_compute_single_core(0, files, str(folder / "gt"), str(folder / "pred"), CATEGORIES)
    averages = {f"{key.upper()}{suffix}": stat.pq_average(CATEGORIES, isthing=isthing)[0][key]
                for suffix, isthing in (("", None), ("_th", True), ("_st", False)) for key in ("pq", "sq", "rq")}
    per_category = {c: [stat[c].tp, stat[c].fp, stat[c].fn, stat[c].iou] for c in CATEGORIES}
    return {"averages": averages, "per_category": per_category}


def _assert_ours_equal(pairs: list[tuple[Panoptic, Panoptic]], ref: dict) -> PanopticEvaluator:
    ours = PanopticEvaluator(5, things=list(THINGS))
    for pred, gt in pairs:
        ours.add(pred, gt)
    m = ours.summarize()
    for key, value in ref["averages"].items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    for c, (tp, fp, fn, iou) in ref["per_category"].items():
        assert (tp, fp, fn) == (ours.tp[int(c)], ours.fp[int(c)], ours.fn[int(c)]), c
        assert iou == pytest.approx(ours.iou_sum[int(c)], abs=1e-9), c
    return ours


def test_pq_equals_panopticapi_on_random_crowded_scenes(tmp_path):
    """panopticapi's code run beside ours (skips where it is not installed)."""
    pairs = _scenes()
    ours = _assert_ours_equal(pairs, _panopticapi_stats(pairs, tmp_path))
    void_only = PanopticEvaluator(5, things=list(THINGS))
    for pred, gt in pairs:
        void_only.add(pred, Panoptic(ids=np.where(np.isin(gt.ids, [s["id"] for s in gt.segments if s["iscrowd"]]),
                                                  0, gt.ids), segments=gt.segments))
    # the case exercises the crowd rule: treating every crowd as void would change the counts
    assert ours.fp.sum() != void_only.fp.sum() or not np.allclose(ours.iou_sum, void_only.iou_sum)
    assert 0.2 < ours.summarize()["PQ"] < 0.9


def test_pq_equals_stored_panopticapi_results():
    """The same scenes and panopticapi's results on them, stored (``python tests/test_eval_panoptic_crowd.py``
    with panopticapi importable rewrites the file): runs everywhere, whatever builds the scenes now."""
    with np.load(REFERENCE) as z:
        pairs = [(Panoptic(ids=p.astype(np.int64), segments=ps), Panoptic(ids=g.astype(np.int64), segments=gs))
                 for p, g, (ps, gs) in zip(z["pred_ids"], z["gt_ids"], json.loads(str(z["segments"])))]
        ref = json.loads(str(z["panopticapi"]))
    ours = _assert_ours_equal(pairs, ref)
    assert ours.fp.sum() > 0 and ours.fn.sum() > 0 and any(s.get("iscrowd") for _, g in pairs for s in g.segments)


if __name__ == "__main__":
    import tempfile

    scenes = _scenes()
    with tempfile.TemporaryDirectory() as tmp:
        stats = _panopticapi_stats(scenes, Path(tmp))
    np.savez_compressed(REFERENCE, pred_ids=np.stack([p.ids for p, _ in scenes]).astype(np.uint16),
                        gt_ids=np.stack([g.ids for _, g in scenes]).astype(np.uint16),
                        segments=json.dumps([[p.segments, g.segments] for p, g in scenes], default=bool),
                        panopticapi=json.dumps(stats))
    print(f"wrote {REFERENCE}")
