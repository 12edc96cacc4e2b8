"""JSON-ready records of predictions: COCO results and per-frame JSON Lines.

Masks are written as COCO run-length encodings (``{"size": [H, W], "counts": str}``)
produced by pycocotools, so ``pycocotools.mask.decode`` restores them exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rtseg.ops.rle import encode_label_rle
from rtseg.types import Detections, Frame, Panoptic, Prediction, SemanticMap, Superpixels


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """(N, 4) xyxy -> N [x, y, w, h] lists of Python floats."""
    b = boxes.astype(np.float64)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).round(2).tolist()


def detections_to_coco(dets: Detections, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO "results" entries for one image (the format of ``COCO.loadRes``).

    Each entry: image_id, category_id (``category_ids[class_id]``; the class id itself when None),
    category_name, bbox [x, y, w, h] in pixels, score, segmentation (RLE with str counts); with mask scores
    (MS R-CNN) also mask_score (``COCO.loadRes`` ignores it; rank by it for mask AP).
    """
    ids = dets.class_ids.tolist() if category_ids is None else [category_ids[c] for c in dets.class_ids.tolist()]
    entries = [
        {"image_id": int(image_id), "category_id": int(c), "category_name": name, "bbox": box, "score": float(s),
         "segmentation": rle}
        for c, name, box, s, rle in zip(ids, dets.labels, _xywh(dets.boxes), dets.scores.tolist(), dets.rles())
    ]
    if dets.mask_scores is not None:
        for entry, m in zip(entries, dets.mask_scores.tolist()):
            entry["mask_score"] = float(m)
    return entries


def _name(names, i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def _detections_record(dets: Detections) -> dict:
    items = []
    labels = dets.labels
    for i, (box, rle) in enumerate(zip(_xywh(dets.boxes), dets.rles())):
        item = {
            "class_id": int(dets.class_ids[i]),
            "class_name": labels[i],
            "score": round(float(dets.scores[i]), 5),
            "bbox": box,
            "segmentation": rle,
        }
        if dets.mask_scores is not None:
            item["mask_score"] = round(float(dets.mask_scores[i]), 5)
        if dets.track_ids is not None:
            item["track_id"] = int(dets.track_ids[i])
        items.append(item)
    return {"kind": "detections", "detections": items}


def _semantic_record(sem: SemanticMap) -> dict:
    ids, areas = np.unique(sem.labels, return_counts=True)
    rles = encode_label_rle(sem.labels, ids)
    classes = [
        {"class_id": int(c), "class_name": _name(sem.class_names, int(c)), "area": int(a), "segmentation": r}
        for c, a, r in zip(ids.tolist(), areas.tolist(), rles)
    ]
    return {"kind": "semantic", "classes": classes}


def _panoptic_record(pan: Panoptic) -> dict:
    """Each segment's id, then its class named as detection and semantic records name theirs: ``class_id`` (the
    segment's ``category_id``: the 0-based index into ``pan.class_names``, the panoptic engine's categories; not
    written as ``category_id``, which in COCO files is the file's own id) and ``class_name``; then the segment's
    other keys (isthing, area, score …) and its RLE ``segmentation``."""
    segments = []
    for s in pan.segments:
        seg = {k: (v.tolist() if isinstance(v, (np.generic, np.ndarray)) else v) for k, v in s.items()}
        category = int(seg.pop("category_id"))
        segments.append({"id": seg.pop("id"), "class_id": category, "class_name": _name(pan.class_names, category),
                         **seg})
    ids = np.array([s["id"] for s in pan.segments], np.int64)
    for seg, rle in zip(segments, encode_label_rle(pan.ids, ids)):
        seg["segmentation"] = rle
    return {"kind": "panoptic", "segments": segments}


def _superpixels_record(sp: Superpixels) -> dict:
    ids, areas = np.unique(sp.labels, return_counts=True)
    segments = [{"id": int(i), "area": int(a), "segmentation": r}
                for i, a, r in zip(ids.tolist(), areas.tolist(), encode_label_rle(sp.labels, ids))]
    return {"kind": "superpixels", "num_segments": sp.num_segments, "segments": segments}


def prediction_record(prediction: Prediction) -> dict:
    """JSON-serialisable description of one prediction (``"kind"`` tells which)."""
    if isinstance(prediction, Detections):
        return _detections_record(prediction)
    if isinstance(prediction, SemanticMap):
        return _semantic_record(prediction)
    if isinstance(prediction, Superpixels):
        return _superpixels_record(prediction)
    if isinstance(prediction, Panoptic):
        return _panoptic_record(prediction)
    raise TypeError(f"prediction_record: unsupported prediction type {type(prediction).__name__}")


def frame_record(frame: Frame, prediction: Prediction) -> dict:
    """One JSON Lines record: frame identity and timing plus the prediction.

    Keys: seq, index (the frame's 0-based number in its file, folder or clip, counting what ``--start`` and
    ``--vid-stride`` passed over; None for cameras and live streams: :attr:`Frame.index`), pts (seconds to the µs,
    or None),
    capture_time (monotonic seconds), source_id, file (the image file, for
    frames read from images only), width, height, then the keys of :func:`prediction_record` (kind,
    detections ...).
    """
    h, w = int(frame.image.shape[0]), int(frame.image.shape[1])
    return {
        "seq": int(frame.seq),
        "index": None if frame.index is None else int(frame.index),
        "pts": None if frame.pts is None else round(float(frame.pts), 6),  # µs: no float noise (3.040000000000002)
        "capture_time": float(frame.capture_time),
        "source_id": frame.source_id,
        **({} if frame.file is None else {"file": frame.file}),
        "width": w,
        "height": h,
        **prediction_record(prediction),
    }
