"""The 80 COCO detection classes in the order of the official YOLACT checkpoints.

``COCO_CATEGORY_IDS[i]`` is the COCO category id of class index ``i``.
"""
from __future__ import annotations

from typing import Sequence

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


def result_category_ids(class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> tuple[int, ...]:
    """The ``category_id`` a COCO results file gives each class index of a model with ``class_names``.

    ``category_ids`` when given (one per class: the ids of the COCO file the model was trained on, from its
    manifest); else COCO's own (non-contiguous, 1..90) ids for the official 80 COCO classes; else 1..N in
    order, the ids rtseg's COCO export (:mod:`rtseg.data.exporters`) gives its categories.
    """
    if category_ids is not None and len(category_ids) == len(class_names):
        return tuple(int(c) for c in category_ids)
    if tuple(class_names) == COCO_CLASSES:
        return COCO_CATEGORY_IDS
    return tuple(range(1, len(class_names) + 1))
