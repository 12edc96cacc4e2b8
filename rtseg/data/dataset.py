"""The sample every instance-segmentation data set yields, and what a data set offers.

A data set is a ``Sequence[Sample]``-like object (``len(ds)``, ``ds[i]``) with a
``class_names`` attribute; class ids in samples are 0-based indices into it.
"""
from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from rtseg.errors import PERMISSION_DENIED, DatasetError, json_problem, one_line
from rtseg.imageio import ImageReadError, read_image_file, stored_size
from rtseg.types import _check
from rtseg.userfiles import read_regular_file

WARN_SKIPPED = 5  # skipped annotations named in a warning; the rest are counted
FAR_PIXELS = 1e6  # coordinates beyond this are no annotation (and overflow pycocotools' and OpenCV's rasterisers)


def read_image(path: Path | str) -> np.ndarray:
    """(H, W, 3) uint8 BGR image from ``path`` (grey, alpha and 16-bit images are converted);
    ``DatasetError`` when it cannot be read."""
    try:
        return read_image_file(path)
    except ImageReadError as exc:
        raise DatasetError(f"{path}: {exc}; fix or remove the file and its annotations") from None


def turned_size_error(file: Path, size: tuple[int, int], listed: tuple[int, int], listed_in: str, swap: str,
                      stored_shown_by: str | None = None) -> DatasetError | None:
    """The error of the image ``file``, read as ``size`` (width, height) pixels with its EXIF orientation applied,
    where the annotation file ``listed_in`` (its name) lists ``listed`` (width, height), when that is the file's size
    as stored (an orientation of 5-8 turned it on its side); None when it is not. The error says so and both ways
    out: ``swap`` (what to change in ``listed_in``) for annotations drawn on the turned picture, removing the file's
    orientation tag for ones drawn on the stored picture. The picture the annotating tool showed comes first:
    ``stored_shown_by`` says which tools showed the stored one (None: the turned one, as most annotation tools show
    it)."""
    if stored_size(file) != listed:
        return None
    untag = "remove the file's orientation tag (e.g. exiftool -Orientation= FILE)"
    ways = (f"if the annotations were drawn on the turned picture (as most annotation tools show it), {swap}, "
            f"if on the stored one, {untag}") if stored_shown_by is None else (
        f"if the annotations were drawn on the stored picture ({stored_shown_by}), {untag}, if on the turned one, "
        f"{swap}")
    return DatasetError(f"{file}: its EXIF orientation turns it on its side, from the stored {listed[0]}x{listed[1]} "
                        f"that {listed_in} gives to {size[0]}x{size[1]}; {ways}")


def check_printable_name(name: str, what: str) -> None:
    """DatasetError ``"<what> 'a\\nb' holds a line break …"`` when the class name ``name`` is not one printable line
    (outputs name classes by these, a line each; ``what`` says where it is, e.g. ``"x.json: label"``)."""
    if one_line(name) != name:
        raise DatasetError(f"{what} {name!r} holds a line break or another control character; give it a printable "
                           "one-line name")


def named_file(folder: Path, name: str) -> Path:
    """The file ``name`` (an annotation file's path of an image: COCO's ``file_name``, labelme's ``imagePath``)
    names relative to ``folder``: ``folder / name`` when that file exists or ``name`` holds no backslash, else
    ``name`` read as a Windows path (``images\\a.jpg`` -> ``folder/images/a.jpg``; tools on Windows write them).
    A name that exists as written wins: on Linux a backslash may be part of a file's name."""
    literal = folder / name
    if "\\" not in name or os.path.isfile(literal):  # (os.path: False for a name too long to look up)
        return literal
    return folder / name.replace("\\", "/")


def first_named_twice(files: Sequence[Path]) -> tuple[int, int] | None:
    """(i, j), i < j, of the first file ``files[j]`` that is ``files[i]`` too (the same absolute path once ``.``,
    ``..`` and repeated separators are collapsed: ``a.png``, ``./a.png``, ``../images/a.png`` from ``images``);
    None when each is named once."""
    seen: dict[str, int] = {}
    cwd = os.getcwd()  # (os.path.abspath asks for it once a file: twice the time over COCO's 118,287 images)
    for j, file in enumerate(files):
        i = seen.setdefault(os.path.normpath(os.path.join(cwd, file)), j)
        if i != j:
            return i, j
    return None


def read_json(path: Path, what: str) -> Any:
    """The JSON value in ``path`` (UTF-8, with or without a byte-order mark); ``DatasetError`` naming ``what``
    the file should be when it cannot be read or parsed. Never waits: a FIFO or device is refused unread."""
    try:
        return _parse_json(read_regular_file(path).decode("utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except PermissionError:
        raise DatasetError(f"{path}: {PERMISSION_DENIED}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc.strerror}); give the path of the {what}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {json_problem(exc)}; save the file as UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: {json_problem(exc)}; repair or remove the {what}") from None


def _parse_json(text: str) -> Any:
    """``json.loads`` with the cyclic garbage collector paused: a parse makes millions of lists and dicts, none of
    them garbage, and the collector's passes over them were a third of a COCO file's parse time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text)
    finally:
        if enabled:
            gc.enable()


def skipped_warning(source: Path, what: str, reasons: Sequence[str]) -> str:
    """One warning line for the ``reasons`` ("file: shape k: why") ``what`` (e.g. "shapes") were left out:
    the first :data:`WARN_SKIPPED` named, the rest counted."""
    named = "; ".join(reasons[:WARN_SKIPPED])
    more = f"; and {len(reasons) - WARN_SKIPPED} more" if len(reasons) > WARN_SKIPPED else ""
    return f"{source}: left out {len(reasons)} {what} that are no instances: {named}{more}"


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes around masks.

    masks: (N, H, W) bool. Returns (N, 4) float32 xyxy in pixels, x2/y2 exclusive
    (a one-pixel mask at column 3 gives x1=3, x2=4, so width = x2 - x1 as in COCO).
    Empty masks give an all-zero box.
    """
    n = len(masks)
    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = np.argmax(cols, axis=1)
    boxes[:, 1] = np.argmax(rows, axis=1)
    boxes[:, 2] = w - np.argmax(cols[:, ::-1], axis=1)
    boxes[:, 3] = h - np.argmax(rows[:, ::-1], axis=1)
    boxes[~nonempty] = 0.0
    return boxes


@dataclass(frozen=True)
class Sample:
    """One annotated image.

    image: (H, W, 3) uint8 BGR.
    boxes: (N, 4) float32 xyxy pixels.
    class_ids: (N,) int64, 0-based index into the data set's ``class_names``.
    masks: (N, H, W) bool.
    iscrowd: (N,) bool; True marks a COCO crowd region (an area to ignore in
        evaluation, never a training target). Loaders leave crowd regions out
        unless asked; ``None`` means no crowd regions.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray
    iscrowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        _check("Sample.image", self.image, (None, None, 3), np.uint8)
        _check("Sample.boxes", self.boxes, (n, 4), np.float32)
        _check("Sample.class_ids", self.class_ids, (n,), np.int64)
        _check("Sample.masks", self.masks, (n, *self.image.shape[:2]), np.bool_)
        if self.iscrowd is not None:
            _check("Sample.iscrowd", self.iscrowd, (n,), np.bool_)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[0], self.image.shape[1]

    @classmethod
    def from_masks(cls, image: np.ndarray, masks: np.ndarray, class_ids: Sequence[int]) -> "Sample":
        """A sample whose boxes are the tight boxes of ``masks`` ((N, H, W) bool)."""
        masks = np.asarray(masks, dtype=bool).reshape(-1, *image.shape[:2])
        return cls(
            image=image,
            boxes=masks_to_boxes(masks),
            class_ids=np.asarray(class_ids, dtype=np.int64).reshape(-1),
            masks=masks,
        )


@runtime_checkable
class InstanceDataset(Protocol):
    """What the trainer and evaluator need from a data set.

    A data set that knows the classes of its objects without reading its images (COCO: every annotation's category
    is read at open) may also offer ``classes_with_objects(n) -> frozenset[int]``: see :func:`classes_with_objects`.
    """

    class_names: Sequence[str]
    #: The image files the samples are read from (none for generated ones), which may lie outside the folder the
    #: data set was given as (``../images/a.png``): what a command must not write over.
    image_files: Sequence[Path]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def classes_with_objects(dataset: InstanceDataset, n: int) -> frozenset[int] | None:
    """Class ids (into ``dataset.class_names``) with at least one non-crowd object in samples ``0 .. n-1``, as the
    data set's ``classes_with_objects(n)`` says them without reading an image; None when it offers no such method
    (the classes would be known only by reading every sample)."""
    say = getattr(dataset, "classes_with_objects", None)
    return None if say is None else frozenset(say(n))
