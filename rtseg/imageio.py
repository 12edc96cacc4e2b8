"""Image files in and out through OpenCV's codecs, for any file name.

``cv2.imread`` / ``cv2.imwrite`` take the name as UTF-8 and crash (a segfault in OpenCV 5.0) on names
that are not valid UTF-8 — Latin-1 names from Windows, zip archives or cameras, which Python hands over
with surrogate escapes. Here Python reads and writes the bytes and OpenCV only decodes / encodes them
(``imdecode`` applies the EXIF orientation as ``imread`` does).

Images over :data:`MAX_IMAGE_PIXELS` are refused from their header, before decoding: a small PNG can say
65535 x 65535, which OpenCV (its own cap is 2^30 pixels) would decode into 12 GB before the pipeline's
float copies; a 10000 x 10000 PNG already took 2.8 GB and 25 s through ``rtseg``.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np

from rtseg.errors import PERMISSION_DENIED

MAX_IMAGE_PIXELS = 2**27
"""Width x height above which an image file is refused unread (134 M pixels: a 100-megapixel camera's
11648 x 8736 still passes; 8K video is 33 M)."""


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
    return decode_image(data)


def imread(path: str | os.PathLike) -> np.ndarray | None:
    """:func:`read_image_file`, or None when the file cannot be read or decoded."""
    try:
        return read_image_file(path)
    except ImageReadError:
        return None


def decode_image(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """The image encoded in ``data``: (H, W, 3) uint8 BGR for ``cv2.IMREAD_COLOR``, (H, W) uint8 for
    ``cv2.IMREAD_GRAYSCALE``. :class:`ImageReadError` when OpenCV cannot decode it or its header says more than
    :data:`MAX_IMAGE_PIXELS` (then nothing is decoded). OpenCV's own warnings stay off stderr."""
    if not data:
        raise ImageReadError("not a readable image file (it is empty)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        width, height = size
        raise ImageReadError(f"{width} x {height} pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; "
                             "scale it down first")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise ImageReadError("not a readable image file")
    return image


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from the header of the image in ``data`` (Pillow reads only the header), None
    for a format Pillow does not know (OpenCV may still decode it, under its own 2^30-pixel cap)."""
    from PIL import Image  # ~0.06 s, only when an image file is read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError:  # over 2 x Pillow's MAX_IMAGE_PIXELS, above ours
            raise ImageReadError(f"over the {MAX_IMAGE_PIXELS:,} pixels rtseg reads; scale it down first") from None
        except Exception:  # noqa: BLE001 - Pillow's parsers raise many types on damaged headers; OpenCV decides
            return None


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
