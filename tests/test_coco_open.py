"""Opening a COCO file: the pass over all annotations at once (``CocoDataset._plain_annotations``, which only says
"certainly fine" or "check it alone") gives the outcome of checking every annotation alone (``_check_annotation``):
the same error line, or the same warning, kept annotations and samples, on generated files with every kind of bad
and borderline annotation."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rtseg.data.coco import POLYGON_FINE, CocoDataset, polygon_problems
from rtseg.errors import DatasetError

SIZES = {1: (30, 40), 2: (50, 25)}  # image id: (height, width)
BASE = {"image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [5, 5, 15, 10],
        "segmentation": [[5, 5, 20, 5, 20, 15, 5, 15]]}
NAN, INF = float("nan"), float("inf")


def _rle(height: int, width: int, *, empty: bool = False, compressed: bool = True) -> dict:
    mask = np.zeros((height, width), np.uint8)
    mask[2:8, 3:9] = 0 if empty else 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    if compressed:
        return {"size": [height, width], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F")  # runs of 0s and 1s, column by column, starting with 0s
    runs = np.diff(np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))).tolist()
    return {"size": [height, width], "counts": [0] * int(flat[0]) + runs}


def _poly(*points: float) -> dict:
    return {"segmentation": [list(points)]}


# Each case: (what it is, change to BASE (None: the annotation is not an object but this), outcome when alone).
# "plain": kept as it is by the pass over all annotations; "kept": kept, after a check of its own; "skipped": left
# out with a warning; "error": DatasetError.
CASES: list[tuple[str, Any, str]] = [
    ("base", {}, "plain"),
    ("no bbox", {"bbox": "drop"}, "plain"),
    ("no iscrowd", {"iscrowd": "drop"}, "plain"),
    ("no id", {"id": "drop"}, "plain"),
    ("crowd polygon", {"iscrowd": 1}, "plain"),
    ("iscrowd true (== 1)", {"iscrowd": True}, "plain"),
    ("iscrowd 0.0", {"iscrowd": 0.0}, "plain"),
    ("floats and ints", _poly(5.5, 5, 20, 5.25, 20, 15), "plain"),
    ("bbox of zero and -0.0 width", {"bbox": [5, 5, -0.0, 0]}, "plain"),
    ("bbox at ±FAR_PIXELS", {"bbox": [-1e6, 1e6, 0, 1000000]}, "plain"),
    ("coordinate at FAR_PIXELS", _poly(5, 5, 1e6, 5, 20, -1000000), "plain"),
    ("touching the right edge", _poly(40, 0, 50, 0, 50, 10), "plain"),
    ("touching the left and top edges", _poly(-10, -5, 0, -5, 0, 0), "plain"),
    ("repeated first point", _poly(5, 5, 5, 5, 20, 5, 20, 15), "plain"),
    ("nearly a line", _poly(0, 0, 1, 1, 2, 2.0000000001), "plain"),
    ("a line and a square", {"segmentation": [[1, 1, 2, 2, 3, 3], [10, 10, 20, 10, 20, 20]]}, "plain"),
    ("a part outside and one inside", {"segmentation": [[100, 100, 120, 100, 120, 120], [5, 5, 9, 5, 9, 9]]},
     "plain"),
    ("second image, inside it", {"image_id": 2, "segmentation": [[1, 40, 20, 40, 20, 49]]}, "plain"),
    ("short part beside a good one", {"segmentation": [[1, 1, 5, 5], [5, 5, 20, 5, 20, 15]]}, "kept"),
    ("short NaN part beside a good one", {"segmentation": [[NAN, 1], [5, 5, 20, 5, 20, 15]]}, "kept"),
    ("empty part beside a good one", {"segmentation": [[], [5, 5, 20, 5, 20, 15]]}, "kept"),
    ("RLE", {"segmentation": _rle(30, 40)}, "kept"),
    ("uncompressed RLE", {"segmentation": _rle(30, 40, compressed=False)}, "kept"),
    ("crowd RLE", {"iscrowd": 1, "segmentation": _rle(30, 40)}, "kept"),
    ("no segmentation", {"segmentation": "drop"}, "skipped"),
    ("segmentation null", {"segmentation": None}, "skipped"),
    ("segmentation []", {"segmentation": []}, "skipped"),
    ("segmentation [[], []]", {"segmentation": [[], []]}, "skipped"),
    ("2 points", _poly(1, 1, 5, 5), "skipped"),
    ("1 point and 2 points", {"segmentation": [[1, 1], [1, 1, 5, 5]]}, "skipped"),
    ("beyond FAR_PIXELS", _poly(5, 5, 1e6 + 1, 5, 20, 15), "skipped"),
    ("1e300", _poly(5, 5, 1e300, 5, 20, -1e300), "skipped"),
    ("a huge integer within float range", _poly(5, 5, 10**20, 5, 20, 15), "skipped"),
    ("far in the second part", {"segmentation": [[5, 5, 20, 5, 20, 15], [5, 5, -2e6, 5, 20, 15]]}, "skipped"),
    ("horizontal line", _poly(1, 1, 5, 1, 9, 1), "skipped"),
    ("vertical line", _poly(3, 1, 3, 5, 3, 9, 3, 2), "skipped"),
    ("diagonal line", _poly(1, 1, 10, 10, 20, 20, 5, 5), "skipped"),
    ("one point thrice", _poly(4, 4, 4, 4, 4, 4), "skipped"),
    ("two lines", {"segmentation": [[1, 1, 2, 2, 3, 3], [4, 1, 4, 2, 4, 3]]}, "skipped"),
    ("left of the image", _poly(-9, 1, -1, 1, -5, 9), "skipped"),
    ("above the image", _poly(1, -9, 9, -1, 5, -5), "skipped"),
    ("right of the image", _poly(41, 1, 49, 1, 45, 9), "skipped"),
    ("below the image", _poly(1, 31, 9, 39, 5, 35), "skipped"),
    ("right of the second image", {"image_id": 2, "segmentation": [[26, 1, 39, 1, 30, 9]]}, "skipped"),
    ("empty RLE", {"segmentation": _rle(30, 40, empty=True)}, "skipped"),
    ("a list, not an object", [], "error"),
    ("null, not an object", None, "error"),
    ("a number, not an object", 5, "error"),
    ("no image_id", {"image_id": "drop"}, "error"),
    ("image_id true", {"image_id": True}, "error"),
    ("image_id 1.0", {"image_id": 1.0}, "error"),
    ("image_id '1'", {"image_id": "1"}, "error"),
    ("unknown image_id", {"image_id": 99}, "error"),
    ("no category_id", {"category_id": "drop"}, "error"),
    ("category_id true", {"category_id": True}, "error"),
    ("category_id 7.0", {"category_id": 7.0}, "error"),
    ("unknown category_id", {"category_id": 8}, "error"),
    ("bbox null", {"bbox": None}, "error"),
    ("bbox of 3", {"bbox": [1, 2, 3]}, "error"),
    ("bbox of 5", {"bbox": [1, 2, 3, 4, 5]}, "error"),
    ("bbox an object", {"bbox": {"x": 1}}, "error"),
    ("bbox NaN", {"bbox": [1, NAN, 3, 4]}, "error"),
    ("bbox infinity", {"bbox": [1, 2, INF, 4]}, "error"),
    ("bbox beyond FAR_PIXELS", {"bbox": [1, 2, 3, 1e6 + 1]}, "error"),
    ("bbox integer beyond float", {"bbox": [1, 2, 10**400, 4]}, "error"),
    ("bbox true", {"bbox": [1, True, 3, 4]}, "error"),
    ("bbox string", {"bbox": [1, "2", 3, 4]}, "error"),
    ("bbox null value", {"bbox": [1, 2, None, 4]}, "error"),
    ("bbox negative width", {"bbox": [1, 2, -3, 4]}, "error"),
    ("bbox negative height", {"bbox": [1, 2, 3, -0.5]}, "error"),
    ("iscrowd 2", {"iscrowd": 2}, "error"),
    ("iscrowd '1'", {"iscrowd": "1"}, "error"),
    ("iscrowd null", {"iscrowd": None}, "error"),
    ("iscrowd 0.5", {"iscrowd": 0.5}, "error"),
    ("segmentation a string", {"segmentation": "abc"}, "error"),
    ("segmentation a number", {"segmentation": 5}, "error"),
    ("segmentation an object", {"segmentation": {"x": 1}}, "error"),
    ("RLE of another size", {"segmentation": _rle(30, 41)}, "error"),
    ("RLE corrupt", {"segmentation": {"size": [30, 40], "counts": "\x7f\x7fzz"}}, "error"),
    ("RLE counts negative", {"segmentation": {"size": [30, 40], "counts": [1200, -1, 1]}}, "error"),
    ("RLE counts true", {"segmentation": {"size": [30, 40], "counts": [True, 1199]}}, "error"),
    ("RLE of too few pixels", {"segmentation": {"size": [30, 40], "counts": [10, 5]}}, "error"),
    ("odd count", _poly(1, 1, 5, 5, 7), "error"),
    ("odd count in the second part", {"segmentation": [[5, 5, 20, 5, 20, 15], [1, 2, 3, 4, 5, 6, 7]]}, "error"),
    ("true", _poly(1, 1, True, 2, 3, 3), "error"),
    ("string", _poly(1, 1, "2", 2, 3, 3), "error"),
    ("null", _poly(1, 1, None, 2, 3, 3), "error"),
    ("nested list", _poly(1, 1, [2], 2, 3, 3), "error"),
    ("a part that is a number", {"segmentation": [5, [5, 5, 20, 5, 20, 15]]}, "error"),
    ("a part that is an object", {"segmentation": [{"x": 1}]}, "error"),
    ("NaN", _poly(1, 1, NAN, 2, 3, 3), "error"),
    ("infinity", _poly(1, 1, 5, INF, 3, 3), "error"),
    ("-infinity", _poly(1, 1, 5, 1, -INF, 3), "error"),
    ("integer beyond float", _poly(1, 1, 5, 1, 10**400, 3), "error"),
    ("NaN in the second part", {"segmentation": [[5, 5, 20, 5, 20, 15], [1, 1, 5, NAN, 3, 3]]}, "error"),
    ("NaN and beyond FAR_PIXELS", _poly(1, 1, 5e6, 1, NAN, 3), "error"),
]
ERRORS = [c for c in CASES if c[2] == "error"]
# Cases with a bbox value or polygon coordinate that is no JSON number or no float64, in a part of >= 3 points.
NO_NUMBER = {"bbox integer beyond float", "bbox true", "bbox string", "bbox null value", "true", "string", "null",
             "nested list", "integer beyond float"}
NOT_ERRORS = [c for c in CASES if c[2] != "error"]


def _annotation(change: Any, ann_id: int) -> Any:
    if not isinstance(change, dict):
        return change
    ann = dict(BASE, id=ann_id)
    ann.update(change)
    return {k: v for k, v in ann.items() if v != "drop"}


def _files(tmp_path: Path, annotations: list) -> tuple[Path, Path]:
    """The COCO file of ``annotations`` on the images of SIZES (written beside it), categories 3 and 7."""
    for iid, (h, w) in SIZES.items():
        if not (tmp_path / f"{iid}.png").exists():
            cv2.imwrite(str(tmp_path / f"{iid}.png"), np.full((h, w, 3), 40 * iid, np.uint8))
    data = {"images": [{"id": iid, "file_name": f"{iid}.png", "height": h, "width": w}
                       for iid, (h, w) in SIZES.items()],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": annotations}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, tmp_path


def _outcome(path: Path, images: Path, include_crowd: bool) -> tuple:
    """("error", the line) or ("open", warnings, kept annotations per image, samples as plain lists)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            ds = CocoDataset(path, images, include_crowd=include_crowd)
        except DatasetError as exc:
            return "error", str(exc)
    samples = []
    for i in range(len(ds)):
        s = ds[i]
        samples.append((s.image.tolist(), s.boxes.tolist(), s.masks.tolist(), s.class_ids.tolist(),
                        None if s.iscrowd is None else s.iscrowd.tolist()))
    return "open", [str(w.message) for w in record], json.dumps(ds._anns), samples


def _each_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the pass over all annotations off: every annotation is checked by ``_check_annotation``."""
    monkeypatch.setattr(CocoDataset, "_plain_annotations", lambda self, anns, cats: np.zeros(len(anns), bool))


def _both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, annotations: list, include_crowd: bool = False) -> tuple:
    """The outcome with the pass over all annotations, after asserting that checking each alone gives it too."""
    path, images = _files(tmp_path, annotations)
    fast = _outcome(path, images, include_crowd)
    with monkeypatch.context() as m:
        _each_alone(m)
        assert _outcome(path, images, include_crowd) == fast
    return fast


@pytest.mark.parametrize("what, change, kind", CASES, ids=[c[0] for c in CASES])
def test_each_case_alone_and_among_good_ones(tmp_path, monkeypatch, what, change, kind):
    """The case is what its label says; between good annotations, the same outcome both ways; the pass over all
    annotations takes exactly the "plain" ones as they are (none in a file with a bbox value or coordinate that is
    no number, or no float64)."""
    good = [_annotation({}, 1), _annotation({"image_id": 2, "segmentation": [[1, 40, 20, 40, 20, 49]]}, 2)]
    outcome = _both(tmp_path, monkeypatch, good[:1] + [_annotation(change, 9)] + good[1:], include_crowd=True)
    if kind == "error":
        assert outcome[0] == "error" and "annotations[1]" in outcome[1] and "\n" not in outcome[1]
    else:
        assert outcome[0] == "open" and len(outcome[1]) == (kind == "skipped"), outcome
        if kind == "skipped":
            assert "left out 1 annotations" in outcome[1][0] and "annotations[1] (id 9)" in outcome[1][0]
    anns = json.loads(_files(tmp_path, good[:1] + [_annotation(change, 9)] + good[1:])[0].read_text())["annotations"]
    ds = CocoDataset(*_files(tmp_path, good))
    plain = ds._plain_annotations(anns, ds._cat_to_class)
    if what in NO_NUMBER:  # every annotation is checked alone, which finds this one
        assert plain.tolist() == [False, False, False]
    else:
        assert plain.tolist() == [True, kind == "plain", True]


@pytest.mark.parametrize("seed", range(12))
def test_generated_files_give_the_same_outcome(tmp_path, monkeypatch, seed):
    """Many cases at once, shuffled among good annotations: without errors, every warning and sample is the same;
    with them, the same first error."""
    rng = random.Random(seed)
    pool = NOT_ERRORS if seed % 2 else CASES
    changes = [{}] * 30 + [rng.choice(pool)[1] for _ in range(30)]
    rng.shuffle(changes)
    outcome = _both(tmp_path, monkeypatch, [_annotation(c, k + 1) for k, c in enumerate(changes)],
                    include_crowd=bool(seed % 4 == 1))
    if seed % 2:
        assert outcome[0] == "open"


@pytest.mark.parametrize("bad, message", [
    (_poly(1, 1, 5, 1, 10**400, 3), "annotations[5] (id 6): polygon with NaN, infinity"),
    (_poly(1, 1, 5, 1, False, 3), "annotations[5] (id 6): a polygon must be a list of numbers"),
    ({"bbox": [1, 2, 3, True]}, "annotations[5] (id 6): bbox with a value that is no number"),
])
def test_a_value_that_is_no_number_leaves_every_annotation_to_its_own_check(tmp_path, monkeypatch, bad, message):
    """10**400 cannot be a float64, a bool is no number: the pass over all annotations hands every annotation to
    its own check, which names the first bad one, after a skipped one, as before."""
    anns = [_annotation({}, k) for k in range(1, 4)] + [_annotation(_poly(1, 1, 2, 2, 3, 3), 4),
                                                         _annotation({}, 5), _annotation(bad, 6)]
    outcome = _both(tmp_path, monkeypatch, anns)
    assert outcome[0] == "error" and message in outcome[1]


def test_polygon_problems_of_many_at_once_equal_each_alone():
    """polygon_problems over many annotations of several parts each equals it on each annotation alone (random
    polygons, many of them lines, beyond the image or with huge, NaN or infinite coordinates)."""
    rng = np.random.default_rng(0)
    anns, sizes = [], []
    for _ in range(400):
        parts = []
        for _ in range(rng.integers(1, 4)):
            n = int(rng.integers(3, 7))
            kind = rng.integers(0, 6)
            if kind == 0:  # points on a line through a random point
                t, p, v = rng.integers(-5, 5, n), rng.uniform(-50, 50, 2), rng.integers(-3, 4, 2)
                xy = p + t[:, None] * v
            elif kind == 1:  # integer points, often repeated
                xy = rng.integers(-3, 3, (n, 2)).astype(float)
            else:
                xy = rng.uniform(-60, 100, (n, 2))
            if kind == 2 and rng.random() < 0.3:
                xy[rng.integers(n), rng.integers(2)] = rng.choice([NAN, INF, -INF, 2e6, 1e300])
            parts.append(xy.ravel())
        anns.append(parts)
        sizes.append((int(rng.integers(1, 60)), int(rng.integers(1, 60))))

    def problems(group: list, hw: list) -> np.ndarray:
        values = np.concatenate([p for parts in group for p in parts])
        return polygon_problems(values, np.array([len(p) // 2 for parts in group for p in parts]),
                                np.array([len(parts) for parts in group]), np.array([h for h, _ in hw]),
                                np.array([w for _, w in hw]))

    together = problems(anns, sizes)
    alone = [problems([a], [s])[0] for a, s in zip(anns, sizes)]
    assert together.tolist() == alone
    assert len(set(alone)) == 5 and (together == POLYGON_FINE).sum() > 100


@pytest.mark.parametrize("text", ['{"a": [1, 2]}', '{"a": [1, 2'])
def test_the_json_parse_pauses_the_garbage_collector_and_restores_it(tmp_path, text):
    """The collector is paused during the parse (a third of a COCO file's parse time) and on again after it,
    whether the file parses or not; a collector the caller had turned off stays off."""
    import gc

    from rtseg.data.dataset import read_json
    from rtseg.errors import DatasetError

    path = tmp_path / "x.json"
    path.write_text(text)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            try:
                read_json(path, "test file")
            except DatasetError:
                assert text.endswith("2")
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
