"""labelme folders (one ``*.json`` per image, image file beside it) as instance data sets.

Instances: ``person1`` and ``person2`` are two instances of class ``person``
(trailing digits, optionally after ``_``/``-``/space, are stripped where a name
not made of digits alone precedes them; ``10`` and ``11`` are two classes); shapes
with the same label and number, or the same label and ``group_id``, are merged
into one instance (an object split by an occluder); other shapes are one instance
each. Shape types: polygon, rectangle, circle, mask and oriented_rectangle (labelme 5.x / 6.x: four
points, filled as a polygon). Shapes are drawn pixel for pixel as labelme's ``shape_to_mask`` draws them
(Pillow's ``ImageDraw``, points are pixel centres; a mask's top-left pixel is its first point truncated to whole
pixels, as labelme's ``shapes_to_label`` places it). Shapes labelled ``__ignore__`` or ``_background_`` (labelme
conventions) are not instances.

Shapes without an area (line, linestrip, point, polygons of fewer than 3 points
or of zero area, empty rectangles and circles, shapes wholly outside the image,
unlabelled shapes) are left out with one warning that names the first few;
malformed files (invalid JSON, points that are not ``[x, y]`` pairs, NaN, a label
that is not text, an unreadable mask or image) raise ``DatasetError`` naming the
file and shape.

The image of a JSON file is ``imagePath`` relative to the JSON's folder (it may
lie outside it, ``../images/a.jpg``; a Windows ``..\\images\\a.jpg`` is read with
its backslashes as separators when no file of that literal name exists:
:func:`~rtseg.data.dataset.named_file`); when that file is not there, the file of
the same name beside the JSON, then the embedded ``imageData`` (base64 text),
then an image named like the JSON (``a.json`` -> ``a.png``/``a.jpg`` ...) is
used. A missing image, and ``imageData`` that is no base64 text where no image
file is found, raise ``DatasetError`` when the folder is opened; so do two JSON
files whose image is one file (two samples of one picture, each with part of its
objects). Images are read with their EXIF orientation applied, as labelme 3.7
and later show them and write their size; one that it turns on its side, its
JSON giving its stored size (labelme before 3.7, which showed the stored
picture, or another tool), is refused naming both ways out.

Class names come from ``class_names`` (a list, or a path to a text file with one
name per line), else from ``label_names.txt`` / ``labels.txt`` in the folder
(labelme's ``__ignore__`` and ``_background_`` lines are skipped), else from
the sorted set of labels found. A class file that is not a readable text file
or lists a name twice raises ``DatasetError``.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from rtseg.data.dataset import (FAR_PIXELS, Sample, check_printable_name, first_named_twice, masks_to_boxes,
                                named_file, read_image, read_json, skipped_warning, turned_size_error)
from rtseg.errors import PERMISSION_DENIED, DatasetError, RtsegWarning
from rtseg.imageio import ImageReadError, decode_image
from rtseg.ranges import number_problem
from rtseg.userfiles import in_name_order, read_regular_file

LABEL_FILES = ("label_names.txt", "labels.txt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SKIP_LABELS = {"__ignore__", "_background_"}
_NUMBERED = re.compile(r"(.+?)[_\- ]?(\d+)")
_NEED = {"polygon": 3, "rectangle": 2, "circle": 2, "mask": 2, "oriented_rectangle": 4}  # points per shape type
_EXACT = ("circle", "mask", "oriented_rectangle")  # shape types of exactly _NEED points (labelme asserts it)


def split_label(label: str) -> tuple[str, str | None]:
    """``"person2"`` -> ``("person", "2")``; ``"car"`` -> ``("car", None)``; ``"10"`` -> ``("10", None)``
    (a class named by digits alone is no numbered instance: ``10``, ``11`` are two classes, not class ``1``)."""
    m = _NUMBERED.fullmatch(label)
    return (m.group(1), m.group(2)) if m and not m.group(1).isdecimal() else (label, None)


def read_label_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank, ``__ignore__``, ``_background_`` skipped);
    ``DatasetError`` when it cannot be read, lists no name or lists a name twice."""
    try:
        lines = read_regular_file(path).decode("utf-8-sig").splitlines()
    except PermissionError:
        raise DatasetError(f"{path}: {PERMISSION_DENIED}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read class names ({exc.strerror}); "
                           "give a text file with one class name per line") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save the class list as UTF-8") from None
    listed = [(n, s) for n, s in enumerate((line.strip() for line in lines), 1) if s and s not in _SKIP_LABELS]
    if not listed:
        raise DatasetError(f"{path}: no class names in the file; write one name per line")
    first: dict[str, int] = {}
    for number, name in listed:
        if name in first:
            raise DatasetError(f"{path}: class {name!r} is listed twice (lines {first[name]} and {number}); "
                               "list each class once")
        first[name] = number
    return tuple(first)


@dataclass(frozen=True)
class _Shape:
    label: str
    points: np.ndarray  # (K, 2) float64 xy
    shape_type: str
    group_id: str | None  # JSON text of labelme's group_id (any JSON value), None when absent
    mask: np.ndarray | None  # (h, w) bool for shape_type "mask", top-left pixel at points[0] truncated to int
    where: str  # "file.json: shape k", for messages


@dataclass(frozen=True)
class _Record:
    image: Path | None  # the image file; None: decode the JSON's imageData
    height: int
    width: int
    shapes: tuple[_Shape, ...]


class LabelmeDataset:
    """A folder of labelme JSON files as a data set of ``Sample``.

    ``files[index]`` is the JSON file of sample ``index`` (in name order, numbers as numbers:
    :func:`rtseg.userfiles.in_name_order`).
    """

    def __init__(self, folder: str | os.PathLike, *,
                 class_names: Sequence[str] | str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: labelme folder not found")
        self.files = tuple(in_name_order(p for p in self.folder.glob("*.json") if not p.is_dir()))  # as image folders
        if not self.files:
            raise DatasetError(f"{self.folder}: no labelme *.json files in the folder; give the folder that holds "
                               "them (labelme saves one .json beside each image)")
        skipped: list[str] = []
        moved: list[str] = []
        self._records = [self._parse(f, skipped, moved) for f in self.files]
        self.image_files = tuple(r.image for r in self._records if r.image is not None)  # (imageData: none)
        missing = [str(r.image) for r in self._records if r.image is not None and not os.path.isfile(r.image)]
        if missing:
            raise DatasetError(f"{self.folder}: {len(missing)} of {len(self.files)} images named by the JSON files "
                               f"are missing (e.g. {', '.join(missing[:3])}), with no image of that name beside the JSON "
                               "nor imageData; add the images or remove their JSON files")
        with_file = [(f, r.image) for f, r in zip(self.files, self._records) if r.image is not None]
        twice = first_named_twice([image for _, image in with_file])
        if twice:
            (first, image), (second, _) = (with_file[k] for k in twice)
            raise DatasetError(f"{self.folder}: {first.name} and {second.name} both annotate the image {image}; "
                               "keep one JSON file per image (copy the shapes of one into the other and delete it)")
        if moved:
            warnings.warn(f"{self.folder}: {len(moved)} JSON files name an image that is not there; used the image "
                          f"beside the JSON instead (e.g. {'; '.join(moved[:3])})", RtsegWarning, stacklevel=2)
        if skipped:
            warnings.warn(skipped_warning(self.folder, "shapes", skipped), RtsegWarning, stacklevel=2)
        if skipped and not any(r.shapes for r in self._records):
            raise DatasetError(f"{self.folder}: all {len(skipped)} shapes in the {len(self.files)} JSON files were "
                               "left out (see the warning), so nothing to train or evaluate on; annotate objects "
                               "with polygons, rectangles, circles or masks")
        if class_names is None:
            listed = [self.folder / n for n in LABEL_FILES if (self.folder / n).exists()]  # a folder is refused
            class_names = listed[0] if listed else None
        if isinstance(class_names, (str, os.PathLike)):
            class_names = read_label_names(class_names)
        if class_names is None:
            class_names = sorted({split_label(s.label)[0] for r in self._records for s in r.shapes})
        self.class_names = tuple(class_names)
        for name in self.class_names:
            check_printable_name(name, f"{self.folder}: label")
        self._class_index = {n: i for i, n in enumerate(self.class_names)}
        for r in self._records:
            for shape in r.shapes:
                self._class_of(shape.label, shape.where)

    def classes_with_objects(self, n: int) -> frozenset[int]:
        """Class ids of the shapes of samples ``0 .. n-1``, from the JSON files read at open (no image read;
        :func:`rtseg.data.dataset.classes_with_objects`). A shape that turns out to cover no pixel still counts."""
        return frozenset(self._class_of(s.label, s.where) for r in self._records[:n] for s in r.shapes)

    def _class_of(self, label: str, where: str) -> int:
        if label in self._class_index:
            return self._class_index[label]
        base = split_label(label)[0]
        if base in self._class_index:
            return self._class_index[base]
        raise DatasetError(f"{where}: label {label!r} is not a known class ({', '.join(self.class_names)}); "
                           f"add {base!r} to the class list or fix the label")

    def _parse(self, path: Path, skipped: list[str], moved: list[str]) -> _Record:
        data = read_json(path, "labelme file")
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: not a labelme file (top level is not an object)")
        if not isinstance(data.get("shapes"), list):
            raise DatasetError(f"{path}: 'shapes' should be a list of shapes" if "shapes" in data else
                               f"{path}: missing key 'shapes'; is it a labelme file?")
        size = []
        for key in ("imageHeight", "imageWidth"):
            if key not in data:
                raise DatasetError(f"{path}: missing key {key!r}")
            value = data[key]
            if number_problem(value, 1, integer=True) is not None:
                raise DatasetError(f"{path}: {key} should be a positive whole number of pixels, got {value!r}")
            size.append(value)
        h, w = size
        shapes = []
        for k, s in enumerate(data["shapes"]):
            shape = _parse_shape(s, f"{path}: shape {k}", h, w)
            if isinstance(shape, str):
                skipped.append(shape)
            elif shape.label not in _SKIP_LABELS:
                shapes.append(shape)
        return _Record(_find_image(path, data, moved), h, w, tuple(shapes))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_shapes(self) -> int:
        """Shapes that make instances, over all files (shapes of one object, e.g. ``person1`` twice, count twice)."""
        return sum(len(r.shapes) for r in self._records)

    def _image(self, index: int) -> np.ndarray:
        path, record = self.files[index], self._records[index]
        if record.image is not None:
            return read_image(record.image)
        # imageData is read again here, not kept: labelme embeds every image in its JSON by default
        image = _base64_image(read_json(path, "labelme file")["imageData"], cv2.IMREAD_COLOR,
                              f"{path}: the image in imageData (no image file beside it)")
        if image is None:
            raise _no_image_data(path)
        return image

    def _size_error(self, index: int, width: int, height: int) -> DatasetError:
        """The error of sample ``index`` whose image is ``width`` x ``height`` pixels (its EXIF orientation applied)
        where its JSON says otherwise. An image file whose orientation of 5-8 turns it on its side, listed with its
        stored size, is said so with both ways out (:func:`~rtseg.data.dataset.turned_size_error`): labelme 3.7
        and later show the turned picture and write its size, earlier ones showed and wrote the stored one."""
        path, record = self.files[index], self._records[index]
        turned = record.image is not None and turned_size_error(
            record.image, (width, height), (record.width, record.height), path.name,
            f"swap imageWidth and imageHeight in {path.name}",
            "as labelme before 3.7 showed it; later versions show the turned one and write its size")
        return turned or DatasetError(
            f"{path}: image is {width}x{height} but the file says {record.width}x{record.height} (imageWidth x "
            "imageHeight); annotate this image again or put back the one annotated")

    def __getitem__(self, index: int) -> Sample:
        path, record = self.files[index], self._records[index]
        image = self._image(index)
        h, w = image.shape[:2]
        if (record.height, record.width) != (h, w):
            raise self._size_error(index, w, h)
        groups: dict[Any, tuple[int, np.ndarray, str]] = {}
        for k, shape in enumerate(record.shapes):
            cls = self._class_of(shape.label, shape.where)
            number = split_label(shape.label)[1] if shape.label not in self._class_index else None
            key = (cls, "g", shape.group_id) if shape.group_id is not None else (
                (cls, "n", number) if number is not None else (k,))
            if key not in groups:
                groups[key] = (cls, np.zeros((h, w), np.uint8), shape.where)
            _rasterise(shape, groups[key][1])
        empty = [where for _, m, where in groups.values() if not m.any()]
        if empty:
            warnings.warn(f"{path}: left out {len(empty)} shapes that cover no pixel centre "
                          f"(e.g. {empty[0].rsplit(': ', 1)[-1]})", RtsegWarning, stacklevel=2)
        kept = [(c, m) for c, m, _ in groups.values() if m.any()]
        masks = np.array([m.astype(bool) for _, m in kept], bool).reshape(-1, h, w)
        return Sample(image=image, boxes=masks_to_boxes(masks), masks=masks,
                      class_ids=np.array([c for c, _ in kept], np.int64))


def _find_image(path: Path, data: dict, moved: list[str]) -> Path | None:
    """The image file of the labelme file ``path`` (see the module docstring), None for its imageData,
    or the (missing) file ``imagePath`` names; ``DatasetError`` when no file is found and imageData is there but
    no base64 text."""
    named = data.get("imagePath")
    image = named_file(path.parent, named) if isinstance(named, str) and named.strip() else None
    if image is not None and os.path.isfile(image):  # (os.path: False for a name too long to look up)
        return image
    found = path.parent / image.name if image is not None else None
    if found is None or not os.path.isfile(found):
        if _base64_bytes(data.get("imageData")) is not None:
            return None
        found = next((p for p in (path.with_suffix(s) for s in IMAGE_SUFFIXES) if os.path.isfile(p)), None)
    if found is not None:
        if image is not None:
            shown = named.replace("\\", "/")
            moved.append(f"{path.name}: {shown} -> {found.name}")
        return found
    if data.get("imageData"):
        raise _no_image_data(path)
    return image if image is not None else path.with_suffix(".png")


def _no_image_data(path: Path) -> DatasetError:
    """The error of the labelme file ``path`` whose imageData is no image and whose image file is not found."""
    return DatasetError(f"{path}: imageData is not a base64 image and no image file was found; "
                        "put the image beside the JSON file")


def _parse_shape(s: Any, where: str, height: int, width: int) -> _Shape | str:
    """The shape ``s``, or a line saying why it is no instance (skipped with a warning);
    ``DatasetError`` for a malformed shape."""
    if not isinstance(s, dict):
        raise DatasetError(f"{where}: a shape should be an object")
    for key in ("label", "points"):
        if key not in s:
            raise DatasetError(f"{where}: missing key {key!r}")
    kind = s.get("shape_type") or "polygon"
    if not isinstance(kind, str):
        raise DatasetError(f"{where}: shape_type should be text (e.g. \"polygon\"), got {kind!r}")
    points = _points(s["points"], where)
    if s["label"] is not None and not isinstance(s["label"], str):
        raise DatasetError(f"{where}: label should be text, got {s['label']!r}; put the label in quotes")
    label = (s["label"] or "").strip()
    if not label:
        return f"{where}: no label"
    if kind not in _NEED:
        return f"{where}: {kind} has no area"
    mask = _mask(s, where) if kind == "mask" else None
    if len(points) < _NEED[kind] or (kind in _EXACT and len(points) != _NEED[kind]):
        return f"{where}: {kind} with {len(points)} points (need {_NEED[kind]})"
    if np.abs(points).max() > FAR_PIXELS:
        return f"{where}: points beyond {FAR_PIXELS:.0e} pixels"
    if mask is not None:
        lo = np.trunc(points[0])  # as _rasterise places it
        hi = lo + (mask.shape[1] - 1, mask.shape[0] - 1)
        if not mask.any():
            return f"{where}: empty mask"
    elif kind == "circle":
        r = float(np.hypot(*(points[1] - points[0])))
        if r == 0:  # (labelme draws none; one of radius 0.3 is 4 pixels there)
            return f"{where}: circle of radius 0"
        lo, hi = points[0] - r, points[0] + r
    else:
        lo, hi = points.min(axis=0), points.max(axis=0)
        if kind == "rectangle" and (hi - lo).min() == 0:
            return f"{where}: rectangle of zero width or height"
        if kind in ("polygon", "oriented_rectangle") and np.linalg.matrix_rank(points - points[0]) < 2:
            return f"{where}: {kind} of zero area (its points lie on a line)"
    reach = 0.5 if mask is not None else 1.0  # Pillow draws pixel centres up to 1 px beyond the points
    if min(hi) < -reach or lo[0] > width - 1 + reach or lo[1] > height - 1 + reach:
        return f"{where}: {kind} outside the {width}x{height} image"
    gid = s.get("group_id")
    return _Shape(label, points, kind, None if gid is None else json.dumps(gid, sort_keys=True), mask, where)


def _points(value: Any, where: str) -> np.ndarray:
    """A shape's ``points`` as a (K, 2) float64 array of finite values; ``DatasetError`` for anything but a
    list of [x, y] pairs (a flat list of numbers included) or one holding true / false (numpy reads them as 1 / 0;
    the COCO reader refuses them too)."""
    if isinstance(value, list) and any(isinstance(v, bool) for pair in value
                                       for v in (pair if isinstance(pair, list) else [pair])):
        raise DatasetError(f"{where}: points contain true or false instead of numbers; fix or delete the shape")
    try:
        points = np.asarray(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float's range
        points = np.full((1, 2), np.inf)
    except (ValueError, TypeError):
        points = None
    if points is None or (points.size and (points.ndim != 2 or points.shape[1] != 2)):
        flat = points is not None and points.ndim == 1
        raise DatasetError(f"{where}: points should be a list of [x, y] pairs" +
                           (", got a flat list of numbers; write [[x1, y1], [x2, y2], ...]" if flat else ""))
    if not np.isfinite(points).all():
        raise DatasetError(f"{where}: points contain NaN, infinity or a number beyond float range; "
                           "fix or delete the shape")
    return points.reshape(-1, 2)


def _mask(s: dict, where: str) -> np.ndarray:
    """The (h, w) bool patch of a ``mask`` shape, decoded from its base64 PNG ``mask``; ``DatasetError`` when
    that is missing or unreadable."""
    mask = _base64_image(s.get("mask") or b"", cv2.IMREAD_GRAYSCALE, f"{where}: the PNG of this mask shape")
    if mask is None:
        raise DatasetError(f"{where}: mask shape without a readable base64 PNG in 'mask'; "
                           "delete the shape or draw it again in labelme")
    return mask > 0


def _base64_bytes(value: Any) -> bytes | None:
    """The bytes of the base64 text ``value`` (labelme's imageData, a mask shape's PNG), None when it is none
    (another JSON value, characters outside base64's alphabet, a wrong length) or empty."""
    try:
        return base64.b64decode(value, validate=True) or None
    except (binascii.Error, ValueError, TypeError):
        return None


def _base64_image(value: Any, flags: int, what: str) -> np.ndarray | None:
    """The image encoded in the base64 text ``value`` (``decode_image`` with ``flags``), None when it is none (no
    base64 text, or bytes that no codec reads); ``DatasetError`` "``what`` is <reason>" when ``decode_image`` names
    a reason of its own: over :data:`rtseg.imageio.MAX_IMAGE_PIXELS` ("W x H pixels, over ..."), a TIFF of float
    or 32-bit samples ("a TIFF of 32-bit floating-point samples, ...")."""
    data = _base64_bytes(value)
    try:
        return None if data is None else decode_image(data, flags)
    except ImageReadError as exc:
        if not exc.undecodable:
            raise DatasetError(f"{what} is {exc}") from None
    return None


def _rasterise(shape: _Shape, canvas: np.ndarray) -> None:
    """Draw ``shape`` into the (H, W) uint8 ``canvas`` with value 1, pixel for pixel as labelme 6's
    ``shape_to_mask`` draws it with Pillow's ``ImageDraw`` (points are pixel centres; a rectangle spans all its
    points), and a mask as its ``shapes_to_label`` places it (top-left pixel: points[0] truncated toward zero)."""
    pts = shape.points
    if shape.shape_type == "mask":
        x0, y0 = pts[0].astype(int)
        patch = shape.mask
        y1, x1 = min(y0 + patch.shape[0], canvas.shape[0]), min(x0 + patch.shape[1], canvas.shape[1])
        if y1 > max(y0, 0) and x1 > max(x0, 0):
            sub = patch[max(-y0, 0):y1 - y0, max(-x0, 0):x1 - x0]
            canvas[max(y0, 0):y1, max(x0, 0):x1] |= sub.astype(np.uint8)
        return
    from PIL import Image, ImageDraw  # ~0.02 s: only when a sample is drawn

    if shape.shape_type == "circle":
        (cx, cy), (px, py) = pts.tolist()
        r = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)  # labelme's expression, to the last bit
        corners = [(cx - r, cy - r), (cx + r, cy + r)]
    else:
        corners = [tuple(p) for p in pts.tolist()]
    # drawn where labelme draws it (coordinates unmoved: Pillow's polygon is not exactly shift-invariant), but only
    # the shape's region (its corners and 2 px, as far as the image goes) read back and OR-ed in: reading and OR-ing
    # the whole image took 34 ms per shape at 4000x3000, 3 ms now
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    x0, y0 = max(math.floor(min(xs)) - 2, 0), max(math.floor(min(ys)) - 2, 0)
    x1, y1 = min(math.ceil(max(xs)) + 3, canvas.shape[1]), min(math.ceil(max(ys)) + 3, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    image = Image.new("L", (canvas.shape[1], canvas.shape[0]))
    draw = ImageDraw.Draw(image)
    if shape.shape_type == "rectangle":
        draw.rectangle((tuple(pts.min(axis=0).tolist()), tuple(pts.max(axis=0).tolist())), outline=1, fill=1)
    elif shape.shape_type == "circle":
        draw.ellipse(corners, outline=1, fill=1)
    else:  # polygon, oriented_rectangle
        draw.polygon(corners, outline=1, fill=1)
    canvas[y0:y1, x0:x1] |= np.asarray(image.crop((x0, y0, x1, y1)))
