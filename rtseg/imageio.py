"""Image files in and out through OpenCV's codecs, for any file name.

``cv2.imread`` / ``cv2.imwrite`` take the name as UTF-8 and crash (a segfault in OpenCV 5.0) on names
that are not valid UTF-8 — Latin-1 names from Windows, zip archives or cameras, which Python hands over
with surrogate escapes. Here Python reads and writes the bytes and OpenCV only decodes / encodes them
(``imdecode`` applies the EXIF orientation as ``imread`` does).

Images over :data:`MAX_IMAGE_PIXELS` are refused from their header, before decoding: a PNG of a few kB can
say 32767 x 32767, which OpenCV (its own cap is 2^30 pixels) would decode into 3 GB before the pipeline's
float copies; a 10000 x 10000 PNG already took 2.8 GB and 25 s through ``rtseg``.
"""
from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
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
    check the file's permissions"). ``too_large``: refused for its size (:data:`MAX_IMAGE_PIXELS`)."""

    def __init__(self, why: str, *, too_large: bool = False) -> None:
        super().__init__(why)
        self.too_large = too_large


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
        raise _too_large(f"{size[0]} x {size[1]} pixels, over the")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:  # e.g. a header over OpenCV's own size cap in a format read here by no one else
        image = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise ImageReadError("not a readable image file")
    return image


_PNG = b"\x89PNG\r\n\x1a\n"
#: Radiance HDR's resolution line (after the header's blank line), PFM's and PAM's sizes: formats OpenCV
#: decodes and Pillow does not know.
_HDR_SIZE = re.compile(rb"\n\n([-+])([XY]) +(\d+) +([-+])([XY]) +(\d+)")
_PFM_SIZE = re.compile(rb"P[Ff]\s+(\d+)\s+(\d+)")
_PAM_SIZE = (re.compile(rb"\sWIDTH\s+(\d+)"), re.compile(rb"\sHEIGHT\s+(\d+)"))


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from the header of the image in ``data``, None when it cannot be told (OpenCV
    may still decode it, under its own 2^30-pixel cap). PNG and BMP are read here (Pillow refuses some that
    OpenCV decodes: a chunk with a bad checksum, an unusual BMP header), Radiance HDR, PFM and PAM too (Pillow
    does not know them); other formats through Pillow, which reads only the header."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data.startswith(b"BM") and len(data) >= 26:
        (info,) = struct.unpack_from("<I", data, 14)  # the info header's size: 12 for OS/2's, 16-bit sizes
        width, height = struct.unpack_from("<HH" if info == 12 else "<ii", data, 18)
        return abs(width), abs(height)
    head = data[:1 << 16]
    if head.startswith(b"#?") and (hdr := _HDR_SIZE.search(head)):
        first, second = int(hdr.group(3)), int(hdr.group(6))
        return (second, first) if hdr.group(2) == b"Y" else (first, second)
    if pfm := _PFM_SIZE.match(head):
        return int(pfm.group(1)), int(pfm.group(2))
    if head.startswith(b"P7"):
        width, height = (m.search(head) for m in _PAM_SIZE)
        if width and height:
            return int(width.group(1)), int(height.group(1))
    return _pillow_size(data)


def _too_large(size: str) -> ImageReadError:
    """The refusal of an image over :data:`MAX_IMAGE_PIXELS`; ``size`` opens its line ("W x H pixels, over the")."""
    return ImageReadError(f"{size} {MAX_IMAGE_PIXELS:,} rtseg reads; scale it down first", too_large=True)


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the image in ``data`` as Pillow reads it from the header, None when Pillow does not
    know the format or refuses the header. (``catch_warnings`` is process-wide: another thread's warnings are
    shown or not by its own filters, and at worst one of Pillow's size warnings passes.)"""
    from PIL import Image  # ~0.06 s, only when an image file is read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError as exc:  # over 2 x Pillow's MAX_IMAGE_PIXELS, above ours
            pixels = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit of ..."
            raise _too_large(f"{int(pixels.group(1)):,} pixels, over the" if pixels else "over the") from None
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
