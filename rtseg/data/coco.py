"""COCO instance-segmentation data sets (``instances_*.json`` + an image folder).

Category ids may be any integers; they are mapped, in increasing id order, to
contiguous 0-based class ids (``dataset.category_ids[class_id]`` maps back).
Segmentations may be polygons, RLE or uncompressed RLE. Crowd annotations are
left out unless ``include_crowd=True`` (then ``Sample.iscrowd`` marks them, for
evaluation). Annotations without a mask (bbox only, empty segmentation, polygon
parts of fewer than 3 points, zero area, wholly outside the image, points beyond
:data:`~rtseg.data.dataset.FAR_PIXELS`) are left out with one warning naming the
first few. Malformed files and annotations raise
``DatasetError`` naming the file and the annotation (``annotations[k]``, its
index in the file, and its id); missing images are reported when the data set
is opened.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from rtseg.data.dataset import FAR_PIXELS, Sample, masks_to_boxes, read_image, read_json, skipped_warning
from rtseg.errors import DatasetError, RtsegWarning
from rtseg.ranges import number_problem


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: should be an object, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{where}: {key!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
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


def _has_area(xy: np.ndarray) -> bool:
    """Whether the (K, 2) polygon ``xy`` is more than a line (not all its points on one line)."""
    d = xy[1:] - xy[0]
    far = d[np.argmax(np.abs(d).sum(axis=1))]
    return bool(np.any(d[:, 0] * far[1] != d[:, 1] * far[0]))


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
        try:  # every part's points in one (K, 2) array: one check each for all of them
            xy = np.array(parts[0] if len(parts) == 1 else [v for p in parts for v in p], np.float64).reshape(-1, 2)
        except OverflowError:  # an integer beyond float's range
            xy = np.full((1, 2), np.inf)
        if not np.abs(xy).max() <= FAR_PIXELS:  # NaN and infinity too (one reduction where all is well)
            if not np.isfinite(xy).all():
                raise DatasetError(f"{where}: polygon with NaN, infinity or a number beyond float range; "
                                   "fix or remove the annotation")
            return parts, f"polygon with points beyond {FAR_PIXELS:.0e} pixels"
        ends = np.cumsum([len(p) // 2 for p in parts])
        if not any(_has_area(xy[end - len(p) // 2:end]) for p, end in zip(parts, ends)):
            return parts, "polygon of zero area"
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        if hi[0] < 0 or hi[1] < 0 or lo[0] > width or lo[1] > height:
            return parts, f"polygon outside the {width}x{height} image"
        return parts, None
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
    image_ids: ``image_ids[index]`` is the COCO image id of sample ``index``.
    """

    def __init__(self, annotation_json: str | os.PathLike, image_dir: str | os.PathLike, *,
                 include_crowd: bool = False) -> None:
        self.path, self.image_dir, self.include_crowd = Path(annotation_json), Path(image_dir), include_crowd
        data = read_json(self.path, "annotation file")
        if not isinstance(data, dict):
            raise DatasetError(f"{self.path}: top level should be an object with images, annotations, categories")
        where = str(self.path)
        cats = _require(data, "categories", list, where)
        for k, c in enumerate(cats):
            _require(c, "id", int, f"{where}: categories[{k}]")
            if not _require(c, "name", str, f"{where}: categories[{k}]").strip():
                raise DatasetError(f"{where}: categories[{k}] (id {c['id']}): empty name; give every category a name")
        cats = sorted(cats, key=lambda c: c["id"])
        self.category_ids = tuple(int(c["id"]) for c in cats)
        self.class_names = tuple(c["name"] for c in cats)
        for kind, values in (("ids", self.category_ids), ("names", self.class_names)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise DatasetError(f"{where}: categories with the same {kind[:-1]} ({', '.join(twice)}); "
                                   f"give every category its own {kind[:-1]}")
        cat_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self._images: dict[int, dict] = {}
        for k, img in enumerate(_require(data, "images", list, where)):
            w = f"{where}: images[{k}]"
            iid = _require(img, "id", int, w)
            if not _require(img, "file_name", str, w).strip():
                raise DatasetError(f"{w}: empty file_name; give the image file's name relative to the image folder")
            for key in ("height", "width"):
                if number_problem(_require(img, key, int, w), 1, integer=True) is not None:
                    raise DatasetError(f"{w}: {key} should be a positive whole number of pixels, got {img[key]!r}")
            if iid in self._images:
                raise DatasetError(f"{w}: id {iid} is also the id of {self._images[iid]['file_name']}; "
                                   "give every image its own id")
            self._images[iid] = img
        if not self._images:
            raise DatasetError(f"{where}: no images listed, so nothing to train or evaluate on")
        self.image_ids = tuple(self._images)
        self._anns: dict[int, list[dict]] = {iid: [] for iid in self._images}
        skipped: list[str] = []
        for k, ann in enumerate(_require(data, "annotations", list, where)):
            why = self._check_annotation(ann, f"{where}: annotations[{k}]", cat_to_class)
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
        missing = [img["file_name"] for img in self._images.values() if not self._image_path(img).is_file()]
        if missing:
            raise DatasetError(f"{self.image_dir}: {len(missing)} of {len(self._images)} images listed in "
                               f"{self.path.name} are missing (e.g. {', '.join(missing[:3])}); "
                               "give the image folder the file names are relative to")

    def _image_path(self, info: dict) -> Path:
        """The image file of the ``images`` entry ``info`` (Windows ``a\\b.jpg`` file names too)."""
        return self.image_dir / info["file_name"].replace("\\", "/")

    def _check_annotation(self, ann: Any, where: str, cat_to_class: dict[int, int]) -> str | None:
        """Why ``ann`` has no mask (None when it has one); ``DatasetError`` when it is malformed."""
        if isinstance(ann, dict) and "id" in ann:
            where = f"{where} (id {ann['id']})"
        iid = _require(ann, "image_id", int, where)
        if iid not in self._images:
            raise DatasetError(f"{where}: image_id {iid} is not in 'images'; add the image or remove the annotation")
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

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        iid = self.image_ids[index]
        info = self._images[iid]
        image = read_image(self._image_path(info))
        h, w = info["height"], info["width"]
        if image.shape[:2] != (h, w):
            raise DatasetError(f"{self._image_path(info)}: image is {image.shape[1]}x{image.shape[0]} "
                               f"but {self.path.name} says {w}x{h}; fix its width/height or use the annotated image")
        anns = [a for a in self._anns[iid] if self.include_crowd or not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), bool)
        for k, ann in enumerate(anns):
            masks[k] = segmentation_to_mask(ann["segmentation"], h, w, f"{self.path}: annotation id {ann.get('id')}")
        keep = masks.any(axis=(1, 2))  # a polygon may still miss every pixel centre
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
