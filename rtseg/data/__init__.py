"""Data sets for training and evaluation: COCO, labelme, and the synthetic video benchmark.

Every data set is a ``Sequence[Sample]``-like object with ``class_names``.
"""
from __future__ import annotations

from rtseg.data.coco import CocoDataset
from rtseg.data.dataset import InstanceDataset, Sample, masks_to_boxes
from rtseg.data.labelme import LabelmeDataset
from rtseg.data.synthetic import CLASSES, SyntheticDataset, SyntheticScene, scene_to_samples

__all__ = ["CLASSES", "CocoDataset", "InstanceDataset", "LabelmeDataset", "Sample", "SyntheticDataset",
           "SyntheticScene", "masks_to_boxes", "scene_to_samples"]
