"""rtseg: real-time video segmentation (YOLACT and friends), from decode to overlay.

Public API::

    import rtseg
    seg = rtseg.load("yolact", weights="yolact_base_54_800000.pth", device="cpu")
    dets = seg(frame)                      # frame: H×W×3 uint8 BGR
    out = rtseg.annotate(frame, dets)

``import rtseg`` is quick: the engines, types and overlay (torch, numpy, OpenCV) load at their first use, so
that the command line can answer Ctrl-C while they load (see :mod:`rtseg.__main__`).
"""
from __future__ import annotations

from rtseg.entry import lazy_attributes
from rtseg.errors import ConfigError, DatasetError, RtsegError, SinkError, SourceError, WeightsError

_LAZY = {
    "load": "rtseg.engines", "annotate": "rtseg.ops.overlay", "Detections": "rtseg.types", "Frame": "rtseg.types",
    "SemanticMap": "rtseg.types", "Panoptic": "rtseg.types", "Superpixels": "rtseg.types",
}

__all__ = [
    "load", "annotate", "Detections", "Frame", "SemanticMap", "Superpixels", "Panoptic",
    "RtsegError", "WeightsError", "SourceError", "SinkError", "ConfigError", "DatasetError",
]


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
