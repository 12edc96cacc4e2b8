"""COCO instance-segmentation data sets (``instances_*.json`` + an image folder).

Category ids may be any integers; they are mapped, in increasing id order, to
contiguous 0-based class ids (``dataset.category_ids[class_id]`` maps back).
Segmentations may be polygons, RLE or uncompressed RLE. Crowd annotations are
left out unless ``include_crowd=True`` (then ``Sample.iscrowd`` marks them, for
evaluation). Malformed annotations raise ``DatasetError`` naming the file and
the annotation; missing images are reported when the data set is opened.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.errors import DatasetError


def read_image(path: Path | str) -> np.ndarray:
    """(H, W, 3) uint8 BGR image from ``path``; ``DatasetError`` when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if os.path.isfile(path) else None
    if image is None:
        why = "file not found" if not os.path.isfile(path) else "not a readable image"
        raise DatasetError(f"{path}: {why}; fix or remove the file and its annotations")
    return image


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{where}: {key!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def segmentation_to_mask(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """COCO segmentation (polygons, RLE, uncompressed RLE) -> (H, W) bool mask."""
    if isinstance(seg, list):
        if not seg:
            raise DatasetError(f"{where}: empty segmentation list")
        for poly in seg:
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise DatasetError(f"{where}: a polygon must be a list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2:
                raise DatasetError(f"{where}: polygon with an odd count of numbers ({len(poly)})")
            if len(poly) < 6:
                raise DatasetError(f"{where}: polygon with {len(poly) // 2} points (need at least 3)")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise DatasetError(f"{where}: RLE size {list(seg['size'])} differs from image size {[height, width]}")
        counts = seg["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise DatasetError(f"{where}: uncompressed RLE covers {sum(counts)} pixels, image has {height * width}")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise DatasetError(f"{where}: RLE counts should be a string or a list of numbers")
    else:
        raise DatasetError(f"{where}: segmentation should be a list of polygons "
                           "or an RLE dict with 'size' and 'counts'")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises bare errors on corrupt counts
        raise DatasetError(f"{where}: undecodable RLE ({exc})") from None


class CocoDataset:
    """COCO instances annotations as a data set of ``Sample`` (0-based contiguous class ids).

    class_names: category names in increasing category-id order.
    category_ids: ``category_ids[class_id]`` is the original COCO category id.
    image_ids: ``image_ids[index]`` is the COCO image id of sample ``index``.
    """

    def __init__(self, annotation_json: str | os.PathLike, image_dir: str | os.PathLike, *,
                 include_crowd: bool = False) -> None:
        self.path, self.image_dir, self.include_crowd = Path(annotation_json), Path(image_dir), include_crowd
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{self.path}: annotation file not found") from None
        except OSError as exc:
            raise DatasetError(f"{self.path}: cannot read the annotation file ({exc.strerror}); "
                               "give the instances_*.json file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{self.path}: top level should be an object with images, annotations, categories")
        where = str(self.path)
        cats = sorted(_require(data, "categories", list, where),
                      key=lambda c: _require(c, "id", int, f"{where}: category"))
        self.category_ids = tuple(int(c["id"]) for c in cats)
        self.class_names = tuple(str(_require(c, "name", str, f"{where}: category {c['id']}")) for c in cats)
        if len(set(self.category_ids)) != len(cats):
            raise DatasetError(f"{where}: duplicate category ids")
        cat_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self._images: dict[int, dict] = {}
        for img in _require(data, "images", list, where):
            iid = _require(img, "id", int, f"{where}: image")
            w = f"{where}: image {iid}"
            _require(img, "file_name", str, w), _require(img, "height", int, w), _require(img, "width", int, w)
            self._images[iid] = img
        self.image_ids = tuple(self._images)
        self._anns: dict[int, list[dict]] = {iid: [] for iid in self._images}
        for ann in _require(data, "annotations", list, where):
            self._check_annotation(ann, cat_to_class)
            self._anns[ann["image_id"]].append(ann)
        self._cat_to_class = cat_to_class
        if self._images and not any(self.include_crowd or not a.get("iscrowd", 0) for v in self._anns.values() for a in v):
            raise DatasetError(f"{self.path}: no {'' if include_crowd else 'non-crowd '}annotations, so nothing to "
                               "train or evaluate on; give an annotated instances_*.json")
        missing = [img["file_name"] for img in self._images.values()
                   if not (self.image_dir / img["file_name"]).is_file()]
        if missing:
            raise DatasetError(f"{self.image_dir}: {len(missing)} of {len(self._images)} images listed in "
                               f"{self.path.name} are missing (e.g. {', '.join(missing[:3])})")

    def _check_annotation(self, ann: Any, cat_to_class: dict[int, int]) -> None:
        where = f"{self.path}: annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'}"
        iid = _require(ann, "image_id", int, where)
        if iid not in self._images:
            raise DatasetError(f"{where}: image_id {iid} is not in 'images'")
        cid = _require(ann, "category_id", int, where)
        if cid not in cat_to_class:
            raise DatasetError(f"{where}: category_id {cid} is not in 'categories'")
        _require(ann, "segmentation", (list, dict), where)
        if "bbox" in ann:
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                n = len(bbox) if isinstance(bbox, list) else type(bbox).__name__
                raise DatasetError(f"{where}: bbox of {n} numbers (need [x, y, width, height])")
            if bbox[2] < 0 or bbox[3] < 0:
                raise DatasetError(f"{where}: bbox with negative width or height {bbox}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(f"{where}: iscrowd should be 0 or 1, got {ann['iscrowd']!r}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        iid = self.image_ids[index]
        info = self._images[iid]
        image = read_image(self.image_dir / info["file_name"])
        h, w = info["height"], info["width"]
        if image.shape[:2] != (h, w):
            raise DatasetError(f"{self.image_dir / info['file_name']}: image is {image.shape[1]}x{image.shape[0]} "
                               f"but {self.path.name} says {w}x{h}")
        anns = [a for a in self._anns[iid] if self.include_crowd or not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), bool)
        for k, ann in enumerate(anns):
            masks[k] = segmentation_to_mask(ann["segmentation"], h, w, f"{self.path}: annotation {ann.get('id', '?')}")
        boxes = masks_to_boxes(masks)
        for k, ann in enumerate(anns):
            if "bbox" in ann:
                x, y, bw, bh = ann["bbox"]
                boxes[k] = (x, y, x + bw, y + bh)
        return Sample(
            image=image, boxes=boxes, masks=masks,
            class_ids=np.array([self._cat_to_class[a["category_id"]] for a in anns], np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], bool) if self.include_crowd else None,
        )
