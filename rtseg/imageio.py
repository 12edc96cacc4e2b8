"""Image files in and out through OpenCV's codecs, for any file name.

``cv2.imread`` / ``cv2.imwrite`` take the name as UTF-8 and crash (a segfault in OpenCV 5.0) on names
that are not valid UTF-8 — Latin-1 names from Windows, zip archives or cameras, which Python hands over
with surrogate escapes. Here Python reads and writes the bytes and OpenCV only decodes / encodes them
(``imdecode`` applies the EXIF orientation as ``imread`` does).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import cv2
import numpy as np

from rtseg.errors import PERMISSION_DENIED


class ImageReadError(Exception):
    """An image file that cannot be read or decoded; the message says why (one phrase, e.g. "permission denied;
    check the file's permissions")."""


class NotRegularFileError(OSError):
    """A FIFO, socket, device or folder where a file is expected (refused unread: reading it could block)."""


def read_regular_file(path: str | os.PathLike) -> bytes:
    """All bytes of the file ``path``; never waits: a FIFO, socket, device or folder is refused unread with
    :class:`NotRegularFileError`. Other failures raise the ``OSError`` of opening or reading it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once (and is refused below)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file (a FIFO, socket, device or folder)")
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 BGR image of the file (grey, alpha and 16-bit images converted, EXIF orientation
    applied); :class:`ImageReadError` saying why when it cannot be read or decoded. Never waits: a FIFO, device
    or folder is refused without reading it. OpenCV's own warnings stay off stderr."""
    try:
        data = read_regular_file(path)
    except PermissionError:
        raise ImageReadError(PERMISSION_DENIED) from None
    except FileNotFoundError:
        raise ImageReadError("file not found (or a symbolic link to nothing)") from None
    except NotRegularFileError as exc:
        raise ImageReadError(exc.strerror) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read it ({exc.strerror})") from None
    image = _decode(data) if data else None
    if image is None:
        raise ImageReadError("not a readable image file")
    return image


def imread(path: str | os.PathLike) -> np.ndarray | None:
    """:func:`read_image_file`, or None when the file cannot be read or decoded."""
    try:
        return read_image_file(path)
    except ImageReadError:
        return None


def _decode(data: bytes) -> np.ndarray | None:
    """The image encoded in ``data`` as (H, W, 3) uint8 BGR, None when OpenCV cannot decode it (silently)."""
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
