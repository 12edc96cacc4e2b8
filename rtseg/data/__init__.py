"""Data sets for training and evaluation: COCO, labelme, and the synthetic video benchmark.

Every data set is a ``Sequence[Sample]``-like object with ``class_names``. The names below load at their first
use (:func:`rtseg.entry.lazy_attributes`), so that importing a module of this package (the light entry
``python -m rtseg.data.export``) imports only that module.
"""
from __future__ import annotations

from rtseg.entry import lazy_attributes

_WHERE = {
    "CocoDataset": "rtseg.data.coco", "InstanceDataset": "rtseg.data.dataset", "Sample": "rtseg.data.dataset",
    "masks_to_boxes": "rtseg.data.dataset", "LabelmeDataset": "rtseg.data.labelme", "CLASSES": "rtseg.data.synthetic",
    "SyntheticDataset": "rtseg.data.synthetic", "SyntheticScene": "rtseg.data.synthetic",
    "scene_to_samples": "rtseg.data.synthetic",
}

__all__ = ["CLASSES", "CocoDataset", "InstanceDataset", "LabelmeDataset", "Sample", "SyntheticDataset",
           "SyntheticScene", "masks_to_boxes", "scene_to_samples"]

__getattr__, __dir__ = lazy_attributes(globals(), _WHERE)
