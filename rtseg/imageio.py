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

import io
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from rtseg.errors import PERMISSION_DENIED
from rtseg.userfiles import NotRegularFileError, read_regular_file

MAX_IMAGE_PIXELS = 2**27
"""Width x height above which an image file is refused unread (134 M pixels: a 100-megapixel camera's
11648 x 8736 still passes; 8K video is 33 M)."""


class ImageReadError(Exception):
    """An image file that cannot be read or decoded; the message says why (one phrase, e.g. "permission denied;
    check the file's permissions"). ``too_large``: refused for its size (:data:`MAX_IMAGE_PIXELS`).
    ``undecodable``: bytes that no decoder reads, with no reason of their own ("not a readable image file")."""

    def __init__(self, why: str, *, too_large: bool = False, undecodable: bool = False) -> None:
        super().__init__(why)
        self.too_large = too_large
        self.undecodable = undecodable


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 BGR image of the file (grey, alpha and 16-bit images converted, EXIF orientation
    applied); :class:`ImageReadError` saying why when it cannot be read or decoded. Never waits: a FIFO, device
    or folder is refused without reading it (:func:`rtseg.userfiles.read_regular_file`). OpenCV's own log
    messages stay off stderr, libjpeg's warnings do not (:func:`decode_image`)."""
    return decode_image(read_image_bytes(path))


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the image file ``path``, for :func:`decode_image`; :class:`ImageReadError` saying why when it
    cannot be read (:func:`read_image_file`'s reasons)."""
    try:
        return read_regular_file(path)
    except PermissionError:
        raise ImageReadError(PERMISSION_DENIED) from None
    except FileNotFoundError:
        raise ImageReadError("file not found (or a symbolic link to nothing)") from None
    except NotRegularFileError as exc:
        raise ImageReadError(exc.strerror) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read it ({exc.strerror})") from None


def is_animated(data: bytes) -> bool:
    """Whether the PNG or WebP image in ``data`` is animated: an APNG (an ``acTL`` chunk before the image data)
    or an animated WebP (the animation flag of its ``VP8X`` header). Decoded as a still image, such a file gives
    its first frame only. (GIFs are read by FFmpeg, as videos.)"""
    if data.startswith(_PNG):
        pos = len(_PNG)
        while pos + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, pos)
            if kind in (b"acTL", b"IDAT"):
                return kind == b"acTL"
            pos += 12 + length  # length, type, data, CRC
        return False
    return data.startswith(b"RIFF") and data[8:16] == b"WEBPVP8X" and len(data) > 20 and bool(data[20] & 0x02)


def imread(path: str | os.PathLike) -> np.ndarray | None:
    """:func:`read_image_file`, or None when the file cannot be read or decoded."""
    try:
        return read_image_file(path)
    except ImageReadError:
        return None


def decode_image(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """The image encoded in ``data``: (H, W, 3) uint8 BGR for ``cv2.IMREAD_COLOR``, (H, W) uint8 for
    ``cv2.IMREAD_GRAYSCALE``. :class:`ImageReadError` when OpenCV cannot decode it (naming the samples of a TIFF
    whose samples are the reason: :func:`_tiff_samples_problem`) or its header says more than
    :data:`MAX_IMAGE_PIXELS` (then nothing is decoded). OpenCV's own log messages stay off stderr; libjpeg's
    warnings on a damaged JPEG that still decodes ("Corrupt JPEG data: 5 extraneous bytes before marker 0xda") do
    not: OpenCV prints them through libjpeg's default error manager, with no setting to silence them."""
    if not data:
        raise ImageReadError("not a readable image file (it is empty)", undecodable=True)
    size = _header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{size[0]} x {size[1]} pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; scale it "
                             "down first", too_large=True)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:  # e.g. a header over OpenCV's own size cap in a format read here by no one else
        image = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        problem = _tiff_samples_problem(data)
        raise ImageReadError(problem or "not a readable image file", undecodable=problem is None)
    return image


def stored_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) in pixels of the image file ``path`` as stored, from its header: before its EXIF orientation is
    applied (an orientation of 5-8 turns the picture on its side: :func:`read_image_file` gives a (width, height, 3)
    array). None when the header does not tell it (:func:`_header_size`) or the file cannot be read."""
    try:
        return _header_size(read_image_bytes(path))
    except ImageReadError:
        return None


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
    does not know them), GIF and WebP too (Pillow's readers of those check the size against its own limit, and
    its WebP reader allocates the whole canvas), TIFF, JPEG and AVIF too (Pillow's readers of those parse the
    EXIF / TIFF directories whole and print "Corrupt EXIF data" warnings on stderr for a damaged or cut one);
    the other formats OpenCV decodes through Pillow's header readers (:func:`_pillow_size`)."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data.startswith(b"BM") and len(data) >= 26:
        (info,) = struct.unpack_from("<I", data, 14)  # the info header's size: 12 for OS/2's, 16-bit sizes
        width, height = struct.unpack_from("<HH" if info == 12 else "<ii", data, 18)
        return abs(width), abs(height)
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 13:
        return _gif_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(_TIFF):
        return _tiff_size(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    if data[4:8] == b"ftyp" and data[8:12] in _AVIF_BRANDS:
        return _avif_size(data)
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


def _gif_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the GIF in ``data``: its logical screen, grown to the first image's extent where that
    reaches further (as Pillow and browsers grow it)."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the global colour table
    while pos < len(data) and data[pos] == 0x21:  # an extension: its label, then sub-blocks up to an empty one
        pos += 2
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        pos += 1
    if data[pos:pos + 1] == b"," and len(data) >= pos + 9:  # the first image descriptor: left, top, width, height
        left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
        width, height = max(width, left + w), max(height, top + h)
    return width, height


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the WebP in ``data`` from its first chunk (lossy VP8, lossless VP8L or extended VP8X's
    canvas), None when the chunk is none of those or cut short."""
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f" and len(data) >= 25:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


_TIFF = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # little / big-endian TIFF, then BigTIFF
#: The field layout of a TIFF's image file directory (IFD), classic then BigTIFF: the IFD's offset (at byte 4 or 8),
#: its entry count, one entry (tag, type, count, value or offset).
_TIFF_LAYOUT = {False: ("I", 4, "H", "HHI4s"), True: ("Q", 8, "Q", "HHQ8s")}
#: The TIFF field types of a width or height libtiff (OpenCV's TIFF reader) takes: BYTE, SHORT, LONG, SBYTE, SSHORT,
#: SLONG, LONG8, SLONG8.
_TIFF_INTS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the TIFF (or BigTIFF) in ``data``: the ImageWidth and ImageLength fields of its first
    directory (the page OpenCV decodes), None when the directory is cut short, lies beyond the file or lacks them, or
    a size is not positive."""
    fields = _tiff_fields(data, (256, 257))
    width, height = fields.get(256, 0), fields.get(257, 0)
    return (width, height) if width > 0 and height > 0 else None


def _tiff_fields(data: bytes, tags: tuple[int, ...]) -> dict[int, int]:
    """The first value of each field of ``tags`` in the first directory of the TIFF (or BigTIFF) in ``data`` that
    holds whole numbers (the first of a repeated field, as libtiff), read up to where the directory is cut short or
    points beyond the file: a tag that is absent, or comes after that point, is left out."""
    order = "<" if data.startswith(b"II") else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    offset_type, offset_at, count_type, entry_type = _TIFF_LAYOUT[big]
    entry = struct.Struct(order + entry_type)
    fields: dict[int, int] = {}
    try:
        (ifd,) = struct.unpack_from(order + offset_type, data, offset_at)
        (count,) = struct.unpack_from(order + count_type, data, ifd)
        if count > 0xFFFF:  # libtiff's own check: not a directory
            return fields
        first = ifd + struct.calcsize(count_type)
        for pos in range(first, first + count * entry.size, entry.size):
            tag, kind, values, value = entry.unpack_from(data, pos)
            if tag in tags and tag not in fields and kind in _TIFF_INTS:
                number = struct.Struct(order + _TIFF_INTS[kind])
                fields[tag] = (number.unpack_from(value) if values * number.size <= len(value) else  # else at an offset
                               number.unpack_from(data, struct.unpack_from(order + offset_type, value)[0]))[0]
                if len(fields) == len(tags):
                    break
    except (struct.error, OverflowError):  # cut short, or an offset beyond any file
        pass
    return fields


#: TIFF's SampleFormat values (field 339; unsigned integers where it is absent) and their names.
_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 4: "untyped",
                        5: "complex integer", 6: "complex floating-point"}


def _tiff_samples_problem(data: bytes) -> str | None:
    """Why OpenCV cannot decode the TIFF in ``data`` as an 8-bit picture when its samples are the reason: they are
    floating-point (32-bit ones are common: depth maps, scientific data, Pillow's mode "F"; they have no set range
    that maps them to 8 bits, and OpenCV's colour read refuses them), complex, or over 16 bits (BitsPerSample, field
    258). None when ``data`` is no TIFF or its samples are 8- or 16-bit integers: then something else is wrong."""
    if not data.startswith(_TIFF):
        return None
    fields = _tiff_fields(data, (258, 339))
    bits, kind = fields.get(258, 1), fields.get(339, 1)
    if bits <= 16 and kind not in (3, 5, 6):
        return None
    return (f"a TIFF of {bits}-bit {_TIFF_SAMPLE_FORMATS.get(kind, 'untyped')} samples, which rtseg does not read "
            "(only 8- and 16-bit integers); save it as an 8- or 16-bit image")


#: JPEG's start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC), whose segment holds the image's size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: The bytes after an 0xFF that make no marker with a length (libjpeg passes them and looks on): 0xFF (a fill byte:
#: the marker follows it), 0x00 (a stuffed zero: junk), TEM, RST0-RST7.
_JPEG_NO_LENGTH = frozenset({0x00, 0x01, 0xFF, *range(0xD0, 0xD8)})
#: The next 0xFF followed by none of them: a run of fill bytes, stuffed zeros, TEM or RST markers is passed in C (a
#: Python step per marker took 0.25-0.75 s per MB of them).
_JPEG_MARKER = re.compile(b"\xff[^" + re.escape(bytes(sorted(_JPEG_NO_LENGTH))) + b"]")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the JPEG in ``data`` from its frame header, found by skipping the segments before it
    (EXIF and thumbnails among them) by their lengths; None when it is cut short or a scan comes first. Junk and
    runs of markers without a length are passed in C, a segment takes a Python step: a few MB/s through a run of
    empty 4-byte segments, 50-100 MB/s through fill bytes or RST markers (benchmarks/jpeg_scan.py)."""
    pos = 2
    while 0 <= (pos := data.find(b"\xff", pos)) <= len(data) - 9:  # past junk, as libjpeg
        marker = data[pos + 1]
        if marker in _JPEG_NO_LENGTH:
            pos = found.start() if (found := _JPEG_MARKER.search(data, pos)) else len(data)
        elif marker in _JPEG_SOF:  # length, precision, height, width
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # the end, or a scan before any frame header
            return None
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]  # the length counts its own 2 bytes
    return None


#: The major brands of an AVIF file's ``ftyp`` box (those Pillow's AVIF reader accepts).
_AVIF_BRANDS = (b"avif", b"avis", b"mif1", b"msf1")


def _avif_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the AVIF in ``data``: the largest image spatial extent (``ispe``) among its item
    properties (``meta/iprp/ipco``): the primary image's, a grid's canvas; its tiles' and alpha plane's are no
    larger. None when it has none (an image sequence without a still image) or they are cut short."""
    box = (0, len(data))
    for kind, skip in ((b"meta", 4), (b"iprp", 0), (b"ipco", 0)):  # meta is a full box: version and flags first
        box = next(((start + skip, end) for name, start, end in _boxes(data, *box) if name == kind), None)
        if box is None:
            return None
    sizes = [struct.unpack_from(">II", data, start + 4) for name, start, end in _boxes(data, *box)
             if name == b"ispe" and end - start >= 12]  # version and flags, width, height
    return max(sizes, key=lambda size: size[0] * size[1], default=None)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of each ISO base media (MP4, AVIF) box in ``data[start:end]``, up to one cut
    short or of an impossible size."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        head = 8
        if size == 1 and start + 16 <= end:  # a 64-bit size follows the type
            (size,), head = struct.unpack_from(">Q", data, start + 8), 16
        elif size == 0:  # up to the end
            size = end - start
        if size < head or start + size > end:
            return
        yield kind, start + head, start + size
        start += size


#: Pillow's names of the other formats OpenCV decodes (PPM: PBM, PGM and PPM). Their header readers run no size
#: check of Pillow's own; ``Image.open`` does, as do its readers of GIF, WebP and formats OpenCV does not decode.
#: Nor do they warn (its TIFF, JPEG and AVIF readers do, on a damaged EXIF / TIFF directory).
_PILLOW_FORMATS = ("JPEG2000", "PPM", "SUN")


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the image in ``data`` as Pillow's reader of its format reads it from the header, None when
    it is none of :data:`_PILLOW_FORMATS` (or this Pillow lacks that reader) or the reader refuses the header.

    The reader is called directly, not through ``Image.open``, whose check against Pillow's ``MAX_IMAGE_PIXELS``
    warns (DecompressionBombWarning) over it and raises over twice it: silencing that takes the process-wide
    warning filters (``warnings.catch_warnings``, not thread-safe: it drops the filters other threads set
    meanwhile); and a user's own lower setting of Pillow's limit made rtseg refuse images under its own."""
    from PIL import Image  # ~0.02 s, and ~0.07 s to register Pillow's readers: only when an image file is read

    Image.init()
    for name in _PILLOW_FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        known = factory is not None and (accept is None or accept(data[:16]))
        if known and not isinstance(known, str):  # a str: the format's, but its library is missing
            try:
                with factory(io.BytesIO(data), "") as image:
                    return image.size
            except Exception:  # noqa: BLE001 - Pillow's parsers raise many types on damaged headers; OpenCV decides
                return None
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
