"""COCO instance-segmentation data sets (``instances_*.json`` + an image folder).

Category ids may be any integers; they are mapped, in increasing id order, to
contiguous 0-based class ids (``dataset.category_ids[class_id]`` maps back).
Segmentations may be polygons, RLE or uncompressed RLE. Crowd annotations are
left out unless ``include_crowd=True`` (then ``Sample.iscrowd`` marks them, for
evaluation). Annotations without a mask (bbox only, empty segmentation, polygon
parts of fewer than 3 points, zero area, wholly outside the image, points beyond
:data:`~rtseg.data.dataset.FAR_PIXELS`) are left out with one warning naming the
first few; so are, image by image, those whose mask covers no pixel centre (a tiny
polygon), unless ``keep_empty=True`` (evaluation: pycocotools counts them as
objects no mask matches). Image ids may be integers or strings, as pycocotools
takes them; a height or width may be a whole float (240.0). Malformed files and annotations raise
``DatasetError`` naming the file and the annotation (``annotations[k]``, its
index in the file, and its id); missing images are reported when the data set
is opened. An image's ``file_name`` is relative to the image folder; a Windows
name (``images\\a.jpg``) is read with its backslashes as separators when no file
of that literal name exists (:func:`~rtseg.data.dataset.named_file`). Two images
that name one file are refused (their annotations would be split between two
samples of one picture, each missing the other's objects). Images are read with
their EXIF orientation applied (as labelme and most annotation tools show them);
one that it turns on its side, listed with its stored size, is refused naming
both ways out (the annotations drawn on the turned or on the stored picture).
All annotations are checked at once where they are plainly well-formed polygons
(numpy over all their coordinates), each alone otherwise, with the same outcome.
"""
from __future__ import annotations

import os
import warnings
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from rtseg.data.dataset import (FAR_PIXELS, WARN_SKIPPED, Sample, check_printable_name, first_named_twice,
                                masks_to_boxes, named_file, read_image, read_json, skipped_warning, turned_size_error)
from rtseg.errors import DatasetError, RtsegWarning
from rtseg.ranges import number_problem


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: should be an object, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DatasetError(f"{where}: {key!r} should be {names}, got {type(value).__name__}")
    return value


def _rle_string_counts(counts: bytes) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), None when it is corrupt."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts) or not 48 <= counts[p] < 112:
                return None
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs


_JSON_NUMBERS = frozenset((int, float))
_NO_BBOX = [0, 0, 0, 0]  # an annotation without a bbox has nothing to check there

# What polygon_problems finds in an annotation's polygon parts, the first that applies in this order.
POLYGON_FINE, POLYGON_NOT_FINITE, POLYGON_FAR, POLYGON_FLAT, POLYGON_OUTSIDE = range(5)


def polygon_problems(values: np.ndarray, part_points: np.ndarray, ann_parts: np.ndarray,
                     heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The first problem of each annotation's polygon parts, for many annotations at once.

    values: (2N,) float64 pixel coordinates x1, y1, x2, y2, ... of every part of every annotation, one after
        another. part_points: (P,) int, the points of each part (>= 3 each, N in all). ann_parts: (A,) int, the
        parts of each annotation (>= 1 each, P in all). heights, widths: (A,) int, the size in pixels of each
        annotation's image.
    Returns (A,) int: POLYGON_NOT_FINITE (a NaN or infinity), POLYGON_FAR (a coordinate beyond ±FAR_PIXELS),
    POLYGON_FLAT (no part is more than a line: the cross product of every point's offset from the part's first
    point with the offset of the point farthest from it (L1, the first such) is 0), POLYGON_OUTSIDE (all points
    beyond one edge of the image) or POLYGON_FINE.
    """
    part_start = part_points.cumsum() - part_points  # (P,) index of each part's first point
    ann_part_start = ann_parts.cumsum() - ann_parts  # (A,) index of each annotation's first part
    ann_start = part_start[ann_part_start]  # (A,) index of each annotation's first point
    x, y = np.ascontiguousarray(values[0::2]), np.ascontiguousarray(values[1::2])  # (N,) each
    with np.errstate(invalid="ignore", over="ignore"):  # NaN, infinity, 1e300: POLYGON_NOT_FINITE or _FAR first
        reach = np.maximum.reduceat(np.abs(values), 2 * ann_start)  # (A,) NaN where a coordinate is NaN
        dx, dy = x - np.repeat(x[part_start], part_points), y - np.repeat(y[part_start], part_points)  # (N,)
        dist = np.abs(dx) + np.abs(dy)  # from the part's first point
        farthest = np.where(dist == np.repeat(np.maximum.reduceat(dist, part_start), part_points),
                            np.arange(len(dist)), len(dist) - 1)  # len - 1: a part with NaN (NOT_FINITE) has none
        far = np.minimum.reduceat(farthest, part_start)  # (P,) index of each part's farthest point (the first)
        bent = dx * np.repeat(dy[far], part_points) != dy * np.repeat(dx[far], part_points)  # (N,) off that line
        has_area = np.logical_or.reduceat(np.logical_or.reduceat(bent, part_start), ann_part_start)
    outside = ((np.maximum.reduceat(x, ann_start) < 0) | (np.maximum.reduceat(y, ann_start) < 0)
               | (np.minimum.reduceat(x, ann_start) > widths) | (np.minimum.reduceat(y, ann_start) > heights))
    return np.where(~np.isfinite(reach), POLYGON_NOT_FINITE,
                    np.where(reach > FAR_PIXELS, POLYGON_FAR,
                             np.where(~has_area, POLYGON_FLAT, np.where(outside, POLYGON_OUTSIDE, POLYGON_FINE))))


def check_segmentation(seg: Any, height: int, width: int, where: str) -> tuple[Any, str | None]:
    """``seg`` with polygon parts of fewer than 3 points dropped, and why it has no mask (None when it has one).

    ``DatasetError`` for a malformed segmentation (not numbers, odd coordinate counts, RLE of another size
    or corrupt counts).
    """
    if seg is None or seg == [] or (isinstance(seg, list) and all(p == [] for p in seg)):
        return seg, "no segmentation (bbox only)"
    if isinstance(seg, list):
        for poly in seg:  # JSON numbers are int or float (a bool is neither: its type is bool)
            if not isinstance(poly, list) or not _JSON_NUMBERS.issuperset(map(type, poly)):
                raise DatasetError(f"{where}: a polygon must be a list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2:
                raise DatasetError(f"{where}: polygon with an odd count of numbers ({len(poly)}); "
                                   "fix or remove the annotation")
        parts = [p for p in seg if len(p) >= 6]
        if not parts:
            return parts, f"polygon with {max(len(p) for p in seg) // 2} points (need at least 3)"
        flat = [v for p in parts for v in p]
        try:
            values = np.array(flat, np.float64)
        except OverflowError:  # an integer beyond float's range
            values = np.full(len(flat), np.inf)
        problem = polygon_problems(values, np.array([len(p) // 2 for p in parts]), np.array([len(parts)]),
                                   np.array([height]), np.array([width]))[0]
        if problem == POLYGON_NOT_FINITE:
            raise DatasetError(f"{where}: polygon with NaN, infinity or a number beyond float range; "
                               "fix or remove the annotation")
        return parts, {POLYGON_FINE: None, POLYGON_FAR: f"polygon with points beyond {FAR_PIXELS:.0e} pixels",
                       POLYGON_FLAT: "polygon of zero area",
                       POLYGON_OUTSIDE: f"polygon outside the {width}x{height} image"}[problem]
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise DatasetError(f"{where}: segmentation should be a list of polygons "
                           "or an RLE dict with 'size' and 'counts'")
    if seg["size"] != [height, width]:
        raise DatasetError(f"{where}: RLE size {seg['size']} differs from the image's [height, width] "
                           f"{[height, width]}")
    counts = seg["counts"]
    if isinstance(counts, list) and not any(number_problem(c, 0, integer=True) is not None for c in counts):
        runs = counts
    elif isinstance(counts, (str, bytes)):
        runs = _rle_string_counts(counts.encode("latin-1") if isinstance(counts, str) else counts)
        if runs is None:
            raise DatasetError(f"{where}: corrupt compressed RLE counts; re-export the annotation")
    else:
        raise DatasetError(f"{where}: RLE counts should be a string or a list of whole numbers >= 0")
    if sum(runs) != height * width:
        raise DatasetError(f"{where}: RLE covers {sum(runs)} pixels, the {width}x{height} image has {height * width}")
    return seg, None if sum(runs[1::2]) else "empty RLE mask"


def segmentation_to_mask(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """COCO segmentation (polygons, RLE, uncompressed RLE) -> (H, W) bool mask (checked by
    :func:`check_segmentation`; one without a mask gives an empty mask)."""
    seg, _ = check_segmentation(seg, height, width, where)
    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        counts = seg["counts"]
        rle = {"size": [height, width], "counts": counts.encode("latin-1") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


class CocoDataset:
    """COCO instances annotations as a data set of ``Sample`` (0-based contiguous class ids).

    class_names: category names in increasing category-id order.
    category_ids: ``category_ids[class_id]`` is the original COCO category id.
    image_ids: ``image_ids[index]`` is the COCO image id (int or str, as in the file) of sample ``index``.
    keep_empty: keep the objects whose mask covers no pixel centre (an empty mask, their annotation's bbox) for
        evaluation, where pycocotools counts them as ground truth no predicted mask matches; otherwise (training)
        they are left out. Either way each sample with such objects warns, naming them.
    """

    def __init__(self, annotation_json: str | os.PathLike, image_dir: str | os.PathLike, *,
                 include_crowd: bool = False, keep_empty: bool = False) -> None:
        self.path, self.image_dir, self.include_crowd = Path(annotation_json), Path(image_dir), include_crowd
        self.keep_empty = keep_empty
        data = read_json(self.path, "annotation file")
        if not isinstance(data, dict):
            raise DatasetError(f"{self.path}: top level should be an object with images, annotations, categories")
        where = str(self.path)
        cats = _require(data, "categories", list, where)
        for k, c in enumerate(cats):
            _require(c, "id", int, f"{where}: categories[{k}]")
            name = _require(c, "name", str, f"{where}: categories[{k}]")
            if not name.strip():
                raise DatasetError(f"{where}: categories[{k}] (id {c['id']}): empty name; give every category a name")
            check_printable_name(name, f"{where}: categories[{k}] (id {c['id']}): name")
        cats = sorted(cats, key=lambda c: c["id"])
        self.category_ids = tuple(int(c["id"]) for c in cats)
        self.class_names = tuple(c["name"] for c in cats)
        for kind, values in (("ids", self.category_ids), ("names", self.class_names)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise DatasetError(f"{where}: categories with the same {kind[:-1]} ({', '.join(twice)}); "
                                   f"give every category its own {kind[:-1]}")
        cat_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self._images: dict[int | str, dict] = {}
        for k, img in enumerate(_require(data, "images", list, where)):
            w = f"{where}: images[{k}]"
            iid = _require(img, "id", (int, str), w)
            if not _require(img, "file_name", str, w).strip():
                raise DatasetError(f"{w}: empty file_name; give the image file's name relative to the image folder")
            for key in ("height", "width"):
                size = _require(img, key, (int, float), w)
                if number_problem(size, 1, integer=False) is not None or size != int(size):
                    raise DatasetError(f"{w}: {key} should be a positive whole number of pixels, got {img[key]!r}")
            if iid in self._images:
                raise DatasetError(f"{w}: id {iid!r} is also the id of {self._images[iid]['file_name']}; "
                                   "give every image its own id")
            self._images[iid] = {**img, "height": int(img["height"]), "width": int(img["width"])}  # 240.0 -> 240
        if not self._images:
            raise DatasetError(f"{where}: no images listed, so nothing to train or evaluate on")
        self._files = {iid: named_file(self.image_dir, img["file_name"]) for iid, img in self._images.items()}
        twice = first_named_twice(list(self._files.values()))
        if twice:
            (i, first), (j, second) = ((k, list(self._images.values())[k]) for k in twice)
            names = dict.fromkeys((first["file_name"], second["file_name"]))  # one name, or the two naming the file
            raise DatasetError(f"{where}: images[{i}] (id {first['id']}) and images[{j}] (id {second['id']}) name one "
                               f"file ({' and '.join(names)}); list the image once, under one id, and give all its "
                               "annotations that id")
        self.image_ids = tuple(self._images)
        self.image_files = tuple(self._files.values())
        self._anns: dict[int | str, list[dict]] = {iid: [] for iid in self._images}
        skipped: list[str] = []
        anns = _require(data, "annotations", list, where)
        for k, (ann, plain) in enumerate(zip(anns, self._plain_annotations(anns, cat_to_class).tolist())):
            why = None if plain else self._check_annotation(ann, f"{where}: annotations[{k}]", cat_to_class)
            if why:
                skipped.append(f"annotations[{k}] (id {ann.get('id', '?')}): {why}")
            else:
                self._anns[ann["image_id"]].append(ann)
        if skipped:
            warnings.warn(skipped_warning(self.path, "annotations", skipped), RtsegWarning, stacklevel=2)
        self._cat_to_class = cat_to_class
        if not any(self.include_crowd or not a.get("iscrowd", 0) for v in self._anns.values() for a in v):
            raise DatasetError(f"{self.path}: no {'' if include_crowd else 'non-crowd '}annotations with a mask, so "
                               "nothing to train or evaluate on; give an annotated instances_*.json")
        missing = [img["file_name"] for iid, img in self._images.items() if not os.path.isfile(self._files[iid])]
        if missing:
            raise DatasetError(f"{self.image_dir}: {len(missing)} of {len(self._images)} images listed in "
                               f"{self.path.name} are missing (e.g. {', '.join(missing[:3])}); "
                               "give the image folder the file names are relative to")

    def _plain_annotations(self, anns: list, cat_to_class: dict[int, int]) -> np.ndarray:
        """(len(anns),) bool: True where the annotation certainly passes :meth:`_check_annotation` with a mask and
        its segmentation as it is, False where that has to check it (a problem, RLE, a polygon part of fewer than
        3 points...).

        True is: a dict with an int image_id and category_id that are listed, iscrowd 0 or 1 (or none), a bbox
        (or none) of 4 numbers within ±FAR_PIXELS and width and height >= 0, a segmentation of polygon parts of
        >= 3 points each, and no :func:`polygon_problems`. All annotations' numbers are checked at once; where one
        of them is no JSON number (a bool, string...) or an integer beyond float's range, that annotation is
        malformed, and all are left to :meth:`_check_annotation`, which names the first malformed one.
        """
        plain = np.zeros(len(anns), bool)
        images = self._images
        rows: list[int] = []  # the annotations that are well-formed but for their numbers
        iids: list[int] = []  # (len(rows),) their image ids
        boxes: list[list] = []  # (len(rows),) their bbox, _NO_BBOX where they have none
        parts: list[list] = []  # all their polygon parts, one after another
        ann_parts: list[int] = []  # (len(rows),) parts of each
        for k, ann in enumerate(anns):
            if type(ann) is not dict:
                continue
            iid, cid, seg, bbox = (ann.get("image_id"), ann.get("category_id"), ann.get("segmentation"),
                                   ann.get("bbox", _NO_BBOX))
            if not (type(iid) in (int, str) and iid in images and type(cid) is int and cid in cat_to_class
                    and ann.get("iscrowd", 0) in (0, 1) and type(seg) is list and seg and type(bbox) is list
                    and len(bbox) == 4):
                continue
            for p in seg:
                if not (type(p) is list and len(p) >= 6 and not len(p) % 2):
                    break
            else:
                rows.append(k)
                iids.append(iid)
                boxes.append(bbox)
                parts.extend(seg)
                ann_parts.append(len(seg))
        if not rows or not _JSON_NUMBERS.issuperset(map(type, chain(chain.from_iterable(boxes),
                                                                   chain.from_iterable(parts)))):
            return plain
        try:
            values = np.fromiter(chain.from_iterable(parts), np.float64)
            box = np.fromiter(chain.from_iterable(boxes), np.float64).reshape(-1, 4)  # x, y, width, height
        except OverflowError:
            return plain
        problems = polygon_problems(values, np.array([len(p) // 2 for p in parts]), np.array(ann_parts),
                                    np.array([images[i]["height"] for i in iids]),
                                    np.array([images[i]["width"] for i in iids]))
        plain[rows] = ((np.abs(box) <= FAR_PIXELS).all(axis=1) & (box[:, 2:] >= 0).all(axis=1)
                       & (problems == POLYGON_FINE))
        return plain

    def _check_annotation(self, ann: Any, where: str, cat_to_class: dict[int, int]) -> str | None:
        """Why ``ann`` has no mask (None when it has one); ``DatasetError`` when it is malformed."""
        if isinstance(ann, dict) and "id" in ann:
            where = f"{where} (id {ann['id']})"
        iid = _require(ann, "image_id", (int, str), where)
        if iid not in self._images:
            raise DatasetError(f"{where}: image_id {iid!r} is not in 'images'; add the image or remove the annotation")
        cid = _require(ann, "category_id", int, where)
        if cid not in cat_to_class:
            raise DatasetError(f"{where}: category_id {cid} is not in 'categories'; add the category or fix the id")
        if "bbox" in ann:
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                n = len(bbox) if isinstance(bbox, list) else type(bbox).__name__
                raise DatasetError(f"{where}: bbox of {n} numbers (need [x, y, width, height])")
            if any(number_problem(v, -FAR_PIXELS, FAR_PIXELS, integer=False) is not None for v in bbox):
                raise DatasetError(f"{where}: bbox with a value that is no number within ±{FAR_PIXELS:.0e} pixels "
                                   "(NaN, infinity or far off); fix or remove the bbox")
            if bbox[2] < 0 or bbox[3] < 0:
                raise DatasetError(f"{where}: bbox with negative width or height {bbox}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(f"{where}: iscrowd should be 0 or 1, got {ann['iscrowd']!r}")
        info = self._images[iid]
        seg, why = check_segmentation(ann.get("segmentation"), info["height"], info["width"], where)
        ann["segmentation"] = seg
        return why

    def _size_error(self, file: Path, width: int, height: int, listed_width: int, listed_height: int) -> DatasetError:
        """The error of the image ``file`` read as ``width`` x ``height`` pixels (its EXIF orientation applied, as
        labelme and most annotation tools show it) where the annotation file lists ``listed_width`` x
        ``listed_height``. When that is its size as stored (an orientation of 5-8 turned it on its side: a tool
        that wrote the stored size, e.g. Label Studio's COCO export, or one that drew on the stored pixels) the error
        says so and both ways out (:func:`~rtseg.data.dataset.turned_size_error`)."""
        name = self.path.name
        return turned_size_error(file, (width, height), (listed_width, listed_height), name,
                                 f"swap the image's width and height in {name}") or DatasetError(
            f"{file}: image is {width}x{height} but {name} says {listed_width}x{listed_height}; fix its width/height "
            "or use the annotated image")

    def __len__(self) -> int:
        return len(self.image_ids)

    def classes_with_objects(self, n: int) -> frozenset[int]:
        """Class ids with a non-crowd annotation in samples ``0 .. n-1``, from the annotations read at open (no image
        is read). Without ``keep_empty`` a class may be named whose only objects there cover no pixel centre (left
        out when the sample is read)."""
        return frozenset(self._cat_to_class[a["category_id"]] for iid in self.image_ids[:n] for a in self._anns[iid]
                         if not a.get("iscrowd", 0))

    def _warn_empty(self, file_name: str, anns: list[dict]) -> None:
        """Warn that ``anns`` (annotations of the image ``file_name``) cover no pixel centre: left out, or with
        ``keep_empty`` kept as objects no mask can match."""
        if not self.keep_empty:
            reasons = [f"annotation id {a.get('id', '?')} of {file_name}: its mask covers no pixel centre" for a in anns]
            warnings.warn(skipped_warning(self.path, "annotations", reasons), RtsegWarning, stacklevel=3)
            return
        ids = ", ".join(str(a.get("id", "?")) for a in anns[:WARN_SKIPPED])
        more = f" and {len(anns) - WARN_SKIPPED} more" if len(anns) > WARN_SKIPPED else ""
        warnings.warn(f"{self.path}: {file_name}: {len(anns)} annotations (id {ids}{more}) have a mask that covers no "
                      "pixel centre; counted as objects no predicted mask can match (as pycocotools does)",
                      RtsegWarning, stacklevel=3)

    def __getitem__(self, index: int) -> Sample:
        iid = self.image_ids[index]
        info = self._images[iid]
        image = read_image(self._files[iid])
        h, w = info["height"], info["width"]
        if image.shape[:2] != (h, w):
            raise self._size_error(self._files[iid], image.shape[1], image.shape[0], w, h)
        anns = [a for a in self._anns[iid] if self.include_crowd or not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), bool)
        for k, ann in enumerate(anns):
            masks[k] = segmentation_to_mask(ann["segmentation"], h, w, f"{self.path}: annotation id {ann.get('id')}")
        keep = masks.any(axis=(1, 2))  # a polygon may still miss every pixel centre
        if not keep.all():
            self._warn_empty(info["file_name"], [a for a, k in zip(anns, keep) if not k])
        if not self.keep_empty:
            anns, masks = [a for a, k in zip(anns, keep) if k], masks[keep]
        boxes = masks_to_boxes(masks)
        for k, ann in enumerate(anns):
            if "bbox" in ann and min(ann["bbox"][2:]) > 0:
                x, y, bw, bh = ann["bbox"]
                boxes[k] = (x, y, x + bw, y + bh)
        return Sample(
            image=image, boxes=boxes, masks=masks,
            class_ids=np.array([self._cat_to_class[a["category_id"]] for a in anns], np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], bool) if self.include_crowd else None,
        )
