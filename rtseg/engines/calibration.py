"""TensorRT's precisions and the frames of an INT8 calibration folder (:func:`calibration_files`), found without
torch: ``rtseg`` checks ``--precision`` / ``--calib`` with them before a run imports torch, and
:mod:`rtseg.engines.trt` calibrates on the files it returns."""
from __future__ import annotations

from pathlib import Path

from rtseg.errors import ConfigError

PRECISIONS = ("fp16", "int8")
"""TensorRT's precisions (``--precision``); int8 calibrates on the frames of :func:`calibration_files`."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""File name endings (lower case) of the calibration frames a folder offers."""
CALIBRATION_FRAMES = 64
"""Frames used for INT8 calibration, at most."""


def calibration_files(folder: str | Path) -> list[Path]:
    """The (sorted, at most :data:`CALIBRATION_FRAMES`) image files of a calibration folder; ConfigError if none."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"INT8 calibration folder {str(root)!r} does not exist; pass a folder of frames")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:CALIBRATION_FRAMES]
    if not files:
        raise ConfigError(f"INT8 calibration folder {str(root)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    return files
