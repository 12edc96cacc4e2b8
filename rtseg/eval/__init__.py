"""Evaluation: COCO mask and box AP (``evaluate``) and the ``rtseg eval`` command."""
from __future__ import annotations

from rtseg.eval.coco import METRICS, CocoEvaluator, evaluate

__all__ = ["METRICS", "CocoEvaluator", "evaluate"]
