"""Evaluation: COCO mask and box AP (``evaluate``) and the ``rtseg eval`` command.

The names below load at their first use (:func:`rtseg.entry.lazy_attributes`), so that importing a module of this
package (``rtseg eval``'s light :mod:`rtseg.eval.cli`) does not import torch.
"""
from __future__ import annotations

from rtseg.entry import lazy_attributes

__all__ = ["METRICS", "CocoEvaluator", "evaluate"]

__getattr__, __dir__ = lazy_attributes(globals(), dict.fromkeys(__all__, "rtseg.eval.coco"))
