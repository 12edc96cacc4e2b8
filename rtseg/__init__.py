"""rtseg: real-time video segmentation (YOLACT and friends), from decode to overlay.

Public API::

    import rtseg
    seg = rtseg.load("yolact", weights="yolact_base_54_800000.pth", device="cpu")
    dets = seg(frame)                      # frame: H×W×3 uint8 BGR
    out = rtseg.annotate(frame, dets)
"""
from __future__ import annotations

from rtseg.engines import load
from rtseg.errors import ConfigError, DatasetError, RtsegError, SinkError, SourceError, WeightsError
from rtseg.types import Detections, Frame, Panoptic, SemanticMap, Superpixels

__all__ = [
    "load", "annotate", "Detections", "Frame", "SemanticMap", "Superpixels", "Panoptic",
    "RtsegError", "WeightsError", "SourceError", "SinkError", "ConfigError", "DatasetError",
]


def __getattr__(name: str):
    if name == "annotate":
        from rtseg.ops.overlay import annotate

        return annotate
    raise AttributeError(f"module 'rtseg' has no attribute {name!r}")
