"""Image files in and out through OpenCV's codecs, for any file name.

``cv2.imread`` / ``cv2.imwrite`` take the name as UTF-8 and crash (a segfault in OpenCV 5.0) on names
that are not valid UTF-8 — Latin-1 names from Windows, zip archives or cameras, which Python hands over
with surrogate escapes. Here Python reads and writes the bytes and OpenCV only decodes / encodes them
(``imdecode`` applies the EXIF orientation as ``imread`` does).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def imread(path: str | os.PathLike) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR image of the file (grey, alpha and 16-bit images converted, EXIF orientation
    applied); None when it cannot be read or decoded. OpenCV's own warnings stay off stderr."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data:
        return None
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(level)


def imwrite(path: str | os.PathLike, image: np.ndarray) -> bool:
    """Write ``image`` in the format of the file's extension; False when it cannot be encoded or written."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        return False
    try:
        path.write_bytes(data.tobytes())
    except OSError:
        return False
    return True
