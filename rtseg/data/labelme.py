"""labelme folders (one ``*.json`` per image, image file beside it) as instance data sets.

Instances: ``person1`` and ``person2`` are two instances of class ``person``
(trailing digits, optionally after ``_``/``-``/space, are stripped); shapes with
the same label and number, or the same label and ``group_id``, are merged into
one instance (an object split by an occluder); other shapes are one instance
each. Shape types: polygon, rectangle, circle, mask. Shapes labelled
``__ignore__`` or ``_background_`` (labelme conventions) are not instances.

Class names come from ``class_names`` (a list, or a path to a text file with one
name per line), else from ``label_names.txt`` / ``labels.txt`` in the folder
(labelme's ``__ignore__`` and ``_background_`` lines are skipped), else from
the sorted set of labels found.
"""
from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from rtseg.data.coco import read_image
from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.errors import DatasetError

LABEL_FILES = ("label_names.txt", "labels.txt")
_SKIP_LABELS = {"__ignore__", "_background_"}
_NUMBERED = re.compile(r"(.+?)[_\- ]?(\d+)")


def split_label(label: str) -> tuple[str, str | None]:
    """``"person2"`` -> ``("person", "2")``; ``"car"`` -> ``("car", None)``."""
    m = _NUMBERED.fullmatch(label)
    return (m.group(1), m.group(2)) if m else (label, None)


def read_label_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank, ``__ignore__``, ``_background_`` skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read class names ({exc.strerror})") from None
    names = tuple(s for s in (line.strip() for line in lines) if s and s not in _SKIP_LABELS)
    if not names:
        raise DatasetError(f"{path}: no class names in the file; write one name per line")
    return names


@dataclass(frozen=True)
class _Shape:
    label: str
    points: np.ndarray  # (K, 2) float64 xy
    shape_type: str
    group_id: Any
    mask: np.ndarray | None  # (h, w) bool for shape_type "mask", anchored at points[0]
    where: str  # "file.json: shape k", for error messages


class LabelmeDataset:
    """A folder of labelme JSON files as a data set of ``Sample``.

    ``files[index]`` is the JSON file of sample ``index`` (sorted by name).
    """

    def __init__(self, folder: str | os.PathLike, *,
                 class_names: Sequence[str] | str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: labelme folder not found")
        self.files = tuple(sorted(self.folder.glob("*.json")))
        if not self.files:
            raise DatasetError(f"{self.folder}: no labelme *.json files in the folder")
        self._records = [self._parse(f) for f in self.files]
        missing = [str(self._image_path(i)) for i, (data, _) in enumerate(self._records)
                   if not data.get("imageData") and not self._image_path(i).is_file()]
        if missing:
            raise DatasetError(f"{self.folder}: {len(missing)} of {len(self.files)} images named by the JSON files "
                               f"are missing (e.g. {', '.join(missing[:3])}); add them or remove their JSON files")
        if class_names is None:
            listed = [self.folder / n for n in LABEL_FILES if (self.folder / n).is_file()]
            class_names = listed[0] if listed else None
        if isinstance(class_names, (str, os.PathLike)):
            class_names = read_label_names(class_names)
        if class_names is None:
            class_names = sorted({split_label(s.label)[0] for _, shapes in self._records for s in shapes})
        self.class_names = tuple(class_names)
        self._class_index = {n: i for i, n in enumerate(self.class_names)}
        for _, shapes in self._records:
            for shape in shapes:
                self._class_of(shape.label, shape.where)

    def _class_of(self, label: str, where: str) -> int:
        if label in self._class_index:
            return self._class_index[label]
        base = split_label(label)[0]
        if base in self._class_index:
            return self._class_index[base]
        raise DatasetError(f"{where}: label {label!r} is not a known class ({', '.join(self.class_names)}); "
                           f"add {base!r} to the class list or fix the label")

    def _parse(self, path: Path) -> tuple[dict, list[_Shape]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: not a labelme file (top level is not an object)")
        for key in ("shapes", "imagePath", "imageHeight", "imageWidth"):
            if key not in data:
                raise DatasetError(f"{path}: missing key {key!r}")
        if not isinstance(data["shapes"], list):
            raise DatasetError(f"{path}: 'shapes' should be a list")
        shapes = [self._parse_shape(s, f"{path}: shape {k}") for k, s in enumerate(data["shapes"])]
        return data, [s for s in shapes if s.label not in _SKIP_LABELS]

    @staticmethod
    def _parse_shape(s: Any, where: str) -> _Shape:
        if not isinstance(s, dict):
            raise DatasetError(f"{where}: a shape should be an object")
        for key in ("label", "points"):
            if key not in s:
                raise DatasetError(f"{where}: missing key {key!r}")
        kind = s.get("shape_type") or "polygon"
        try:
            points = np.asarray(s["points"], dtype=np.float64).reshape(-1, 2)
        except (ValueError, TypeError):
            raise DatasetError(f"{where}: points should be a list of [x, y] pairs") from None
        need = {"polygon": 3, "rectangle": 2, "circle": 2, "mask": 2}
        if kind not in need:
            raise DatasetError(f"{where}: shape_type {kind!r} has no area; use polygon, rectangle, circle or mask")
        if len(points) < need[kind] or (kind in ("circle", "mask") and len(points) != need[kind]):
            raise DatasetError(f"{where}: {kind} with {len(points)} points (need {need[kind]})")
        if not np.isfinite(points).all():
            raise DatasetError(f"{where}: points contain NaN or infinity")
        mask = None
        if kind == "mask":
            buf = np.frombuffer(base64.b64decode(s.get("mask") or b""), np.uint8)
            decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
            if decoded is None:
                raise DatasetError(f"{where}: mask shape without a readable base64 PNG in 'mask'")
            mask = decoded > 0
        return _Shape(str(s["label"]), points, kind, s.get("group_id"), mask, where)

    def __len__(self) -> int:
        return len(self.files)

    def _image_path(self, index: int) -> Path:
        """The image file the JSON of sample ``index`` names (relative to the JSON's folder; labelme on
        Windows writes ``a\\b.jpg``)."""
        return self.files[index].parent / str(self._records[index][0]["imagePath"]).replace("\\", "/")

    def _image(self, index: int) -> np.ndarray:
        path, (data, _) = self.files[index], self._records[index]
        image_path = self._image_path(index)
        if image_path.is_file() or not data.get("imageData"):
            return read_image(image_path)
        image = cv2.imdecode(np.frombuffer(base64.b64decode(data["imageData"]), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"{path}: imageData is not a readable image and {image_path} does not exist")
        return image

    def __getitem__(self, index: int) -> Sample:
        path, (data, shapes) = self.files[index], self._records[index]
        image = self._image(index)
        h, w = image.shape[:2]
        if (data["imageHeight"], data["imageWidth"]) != (h, w):
            raise DatasetError(f"{path}: image is {w}x{h} but the file says "
                               f"{data['imageWidth']}x{data['imageHeight']}")
        groups: dict[Any, tuple[int, np.ndarray]] = {}
        for k, shape in enumerate(shapes):
            cls = self._class_of(shape.label, shape.where)
            number = split_label(shape.label)[1] if shape.label not in self._class_index else None
            key = (cls, "g", shape.group_id) if shape.group_id is not None else (
                (cls, "n", number) if number is not None else (k,))
            if key not in groups:
                groups[key] = (cls, np.zeros((h, w), np.uint8))
            _rasterise(shape, groups[key][1])
        masks = np.array([m.astype(bool) for _, m in groups.values()], bool).reshape(-1, h, w)
        return Sample(image=image, boxes=masks_to_boxes(masks), masks=masks,
                      class_ids=np.array([c for c, _ in groups.values()], np.int64))


def _rasterise(shape: _Shape, canvas: np.ndarray) -> None:
    """Draw ``shape`` into the (H, W) uint8 ``canvas`` with value 1 (points are pixel centres)."""
    pts = shape.points
    if shape.shape_type == "polygon":
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    elif shape.shape_type == "rectangle":
        (x1, y1), (x2, y2) = np.round(pts.min(axis=0)).astype(int), np.round(pts.max(axis=0)).astype(int)
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness=-1)
    elif shape.shape_type == "circle":
        centre, edge = pts
        cv2.circle(canvas, tuple(int(v) for v in np.round(centre)), int(round(np.hypot(*(edge - centre)))), 1, -1)
    else:  # mask: a bool patch whose top-left corner is points[0]
        x0, y0 = np.round(pts[0]).astype(int)
        patch = shape.mask
        y1, x1 = min(y0 + patch.shape[0], canvas.shape[0]), min(x0 + patch.shape[1], canvas.shape[1])
        if y1 > max(y0, 0) and x1 > max(x0, 0):
            sub = patch[max(-y0, 0):y1 - y0, max(-x0, 0):x1 - x0]
            canvas[max(y0, 0):y1, max(x0, 0):x1] |= sub.astype(np.uint8)
