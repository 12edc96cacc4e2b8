"""COCO results and JSON Lines records: RLE round trips, JSON-ready values, pycocotools accepts them."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtseg.ops.rle import encode_rle
from rtseg.serialize import detections_to_coco, frame_record
from rtseg.types import Detections, Frame, Panoptic, SemanticMap, Superpixels

H, W = 60, 80
NAMES = ["person", "car", "dog"]


def _random_dets(seed: int = 0, n: int = 4, track: bool = False) -> Detections:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, H, W)) < 0.3  # irregular masks stress the RLE
    x0, y0 = rng.uniform(0, 40, n), rng.uniform(0, 30, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(5, 40, n), y0 + rng.uniform(5, 30, n)], 1).astype(np.float32)
    return Detections(
        boxes=boxes,
        scores=np.sort(rng.uniform(0.1, 1.0, n))[::-1].astype(np.float32),
        class_ids=rng.integers(0, 3, n),
        image_size=(H, W),
        class_names=NAMES,
        mask_scores=rng.uniform(0, 1, n).astype(np.float32),
        track_ids=np.arange(10, 10 + n) if track else None,
        _masks=masks,
    )


def test_rle_round_trip_equals_masks():
    dets = _random_dets()
    rles = encode_rle(dets.masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [H, W] for r in rles)
    back = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles])
    assert np.array_equal(back.astype(bool), dets.masks)


def test_detections_to_coco_fields_and_json():
    dets = _random_dets()
    res = detections_to_coco(dets, image_id=42)
    assert len(res) == len(dets)
    json.dumps(res)  # plain Python types only
    for r, box, s, c in zip(res, dets.boxes, dets.scores, dets.class_ids):
        assert r["image_id"] == 42 and r["category_id"] == int(c)
        x, y, w, h = r["bbox"]
        assert np.allclose([x, y, x + w, y + h], box, atol=0.01)
        assert abs(r["score"] - float(s)) < 1e-6
    assert [r["mask_score"] for r in res] == dets.mask_scores.tolist()  # MS R-CNN's ranking score, kept
    plain = Detections(boxes=dets.boxes, scores=dets.scores, class_ids=dets.class_ids, image_size=(H, W),
                       class_names=NAMES, _masks=dets.masks)
    assert all("mask_score" not in r for r in detections_to_coco(plain, 1))
    assert detections_to_coco(Detections.empty((H, W), NAMES), 1) == []


def test_coco_eval_of_own_masks_is_perfect():
    """pycocotools accepts the results; detections equal to the ground truth score AP 1."""
    rng = np.random.default_rng(3)
    masks = np.zeros((3, H, W), bool)
    boxes = np.array([[5, 5, 30, 30], [40, 10, 70, 50], [10, 35, 35, 58]], np.float32)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, b:d, a:c] = rng.random((d - b, c - a)) < 0.9
    dets = Detections(boxes=boxes, scores=np.array([0.9, 0.8, 0.7], np.float32),
                      class_ids=np.array([1, 2, 1]), image_size=(H, W), class_names=NAMES, _masks=masks)
    gt = {
        "images": [{"id": 7, "height": H, "width": W}],
        "categories": [{"id": i, "name": n} for i, n in enumerate(NAMES)],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": int(c), "iscrowd": 0, "area": float(m.sum()),
             "bbox": [float(v) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])],
             "segmentation": encode_rle(m[None])[0]}
            for i, (m, b, c) in enumerate(zip(masks, boxes, dets.class_ids))
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(detections_to_coco(dets, 7)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert abs(ev.stats[0] - 1.0) < 1e-9


def test_frame_record_detections():
    dets = _random_dets(track=True)
    frame = Frame(np.zeros((H, W, 3), np.uint8), source_id="cam0", seq=5, pts=0.1 + 0.2, capture_time=12.5,
                  index=10)  # (0.1 + 0.2 is 0.30000000000000004: pts are written to the µs)
    rec = json.loads(json.dumps(frame_record(frame, dets)))
    assert {k: rec[k] for k in ("seq", "index", "pts", "capture_time", "source_id", "width", "height", "kind")} == {
        "seq": 5, "index": 10, "pts": 0.3, "capture_time": 12.5, "source_id": "cam0", "width": W, "height": H,
        "kind": "detections"}
    assert [d["class_name"] for d in rec["detections"]] == dets.labels
    assert [d["track_id"] for d in rec["detections"]] == dets.track_ids.tolist()
    assert all("mask_score" in d for d in rec["detections"])
    seg = rec["detections"][1]["segmentation"]
    back = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert np.array_equal(back.astype(bool), dets.masks[1])


def test_frame_record_other_kinds():
    frame = Frame(np.zeros((H, W, 3), np.uint8), pts=None)
    labels = np.zeros((H, W), np.int64)
    labels[:, 40:] = 2
    sem = json.loads(json.dumps(frame_record(frame, SemanticMap(labels=labels, class_names=["bg", "road", "car"]))))
    assert sem["pts"] is None and sem["index"] is None and sem["kind"] == "semantic"
    assert [(c["class_name"], c["area"]) for c in sem["classes"]] == [("bg", H * 40), ("car", H * 40)]
    for c in sem["classes"]:
        seg = c["segmentation"]
        assert np.array_equal(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}),
                              labels == c["class_id"])
    labels[5:9, :7] = 1
    sp = json.loads(json.dumps(frame_record(frame, Superpixels(labels=labels))))
    assert sp["kind"] == "superpixels" and sp["num_segments"] == 3
    assert [s["id"] for s in sp["segments"]] == [0, 1, 2] and sum(s["area"] for s in sp["segments"]) == H * W
    for s in sp["segments"]:
        seg = s["segmentation"]
        assert np.array_equal(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}),
                              labels == s["id"])
    ids = np.where(labels > 0, 4, 1).astype(np.int64)
    segs = [{"id": np.int64(1), "category_id": 1, "isthing": False, "area": H * 40},
            {"id": 4, "category_id": 0, "isthing": True, "area": H * 40, "score": np.float32(0.5)}]
    pan = json.loads(json.dumps(frame_record(frame, Panoptic(ids=ids, segments=segs, class_names=["person", "sky"]))))
    assert [s["class_name"] for s in pan["segments"]] == ["sky", "person"]
    seg = pan["segments"][1]["segmentation"]
    assert np.array_equal(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}), ids == 4)


def test_panoptic_records_name_classes_as_detection_records_do():
    """A panoptic segment's class was written as ``category_id``, the index into the panoptic engine's categories,
    which read as the COCO file's category id (7 'triángulo' where the COCO file's 7 was 'carré'): it is
    ``class_id``, the 0-based index into the record's class names, with ``class_name``, as in detection records."""
    ids = np.zeros((H, W), np.int64)
    ids[:, 40:] = 3
    segs = [{"id": 3, "category_id": np.int64(2), "isthing": True, "area": H * 40, "score": 0.75},
            {"id": 1, "category_id": 0, "isthing": False, "area": 0}]
    pan = Panoptic(ids=ids, segments=segs, class_names=["background", "carré", "triángulo"])
    rec = json.loads(json.dumps(frame_record(Frame(np.zeros((H, W, 3), np.uint8)), pan)))
    assert [{k: v for k, v in s.items() if k != "segmentation"} for s in rec["segments"]] == [
        {"id": 3, "class_id": 2, "class_name": "triángulo", "isthing": True, "area": H * 40, "score": 0.75},
        {"id": 1, "class_id": 0, "class_name": "background", "isthing": False, "area": 0}]
    dets = Detections(boxes=np.array([[40, 0, 80, 60]], np.float32), scores=np.array([0.75], np.float32),
                      class_ids=np.array([1]), image_size=(H, W), class_names=("carré", "triángulo"),
                      _masks=(ids == 3)[None])
    (det,) = json.loads(json.dumps(frame_record(Frame(np.zeros((H, W, 3), np.uint8)), dets)))["detections"]
    assert (det["class_id"], det["class_name"]) == (1, "triángulo")  # the detector's own index, the same name
