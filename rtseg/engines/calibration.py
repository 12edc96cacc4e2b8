"""TensorRT's precisions and the frames of an INT8 calibration folder (:func:`calibration_files`), found without
torch: ``rtseg`` checks ``--precision`` / ``--calib`` with them before a run imports torch, and
:mod:`rtseg.engines.trt` calibrates on the files it returns and keys its engine on their bytes
(:func:`calibration_digest`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from rtseg.errors import ConfigError
from rtseg.userfiles import in_name_order

PRECISIONS = ("fp16", "int8")
"""TensorRT's precisions (``--precision``); int8 calibrates on the frames of :func:`calibration_files`."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""File name endings (lower case) of the calibration frames a folder offers."""
CALIBRATION_FRAMES = 64
"""Frames used for INT8 calibration, at most."""


def calibration_files(folder: str | Path) -> list[Path]:
    """The first :data:`CALIBRATION_FRAMES` image files of a calibration folder, in the order an image folder plays
    (:func:`~rtseg.userfiles.in_name_order`); ConfigError if none."""
    root = Path(folder)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"INT8 calibration folder {str(root)!r} {what}; pass a folder of frames")
    files = in_name_order(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:CALIBRATION_FRAMES]
    if not files:
        raise ConfigError(f"INT8 calibration folder {str(root)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


def calibration_digest(files: list[Path]) -> str:
    """sha256 (hex) over the calibration frames' names and bytes, in order: what an INT8 engine is keyed on, so that
    other frames under the same names (and sizes) give another engine. Reads every file (at most
    :data:`CALIBRATION_FRAMES`); ConfigError naming the first that cannot be read."""
    h = hashlib.sha256()
    for p in files:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"INT8 calibration frame {str(p)!r}: cannot read it ({exc.strerror}); check the "
                              "file or leave it out of the folder") from None
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
