"""Image files over rtseg's pixel limit are refused from their header, before OpenCV decodes them."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, features

from rtseg.data.labelme import LabelmeDataset
from rtseg.errors import DatasetError
from rtseg.imageio import MAX_IMAGE_PIXELS, ImageReadError, decode_image, read_image_file
from rtseg.video.sources import open_source

BIG = (12_000, 12_000)  # 144 M pixels, over the limit
BIG_LINE = f"12000 x 12000 pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; scale it down first"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _black_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of ``width`` x ``height`` black pixels (a few kB for 144 M pixels)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(row * height, 9))
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def big_png() -> bytes:
    data = _black_png(*BIG)
    assert len(data) < 100_000
    return data


def test_the_big_png_is_a_real_image_opencv_decodes(big_png):
    """Without the limit the file decodes: the refusal below is rtseg's, not a broken file's."""
    image = cv2.imdecode(np.frombuffer(big_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape == BIG[::-1] and not image.any()


def test_an_image_over_the_limit_is_refused_before_decoding(big_png, tmp_path):
    with pytest.raises(ImageReadError, match=f"^{BIG_LINE}$"):
        decode_image(big_png)
    (tmp_path / "bomb.png").write_bytes(big_png)
    with pytest.raises(ImageReadError, match=f"^{BIG_LINE}$"):
        read_image_file(tmp_path / "bomb.png")


def test_an_image_at_the_limit_decodes():
    small = decode_image(_black_png(64, 48))
    assert small.shape == (48, 64, 3) and small.dtype == np.uint8
    assert 2**13 * 2**14 == MAX_IMAGE_PIXELS  # the widest a header may say and still be read
    assert decode_image(_black_png(2**13, 2**14), cv2.IMREAD_GRAYSCALE).shape == (2**14, 2**13)


def _gif_header(width: int, height: int) -> bytes:
    """A GIF's screen and first image descriptor of ``width`` x ``height`` (Pillow sizes it; no pixels)."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x2c"
            + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00\x3b")


def _jpeg_header(width: int, height: int) -> bytes:
    """A baseline JPEG's start, an EXIF segment and frame header of ``width`` x ``height`` (no pixels)."""
    frame = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([k, 0x11, 0]) for k in (1, 2, 3))
    exif = b"Exif\0\0II*\0" + struct.pack("<IH", 8, 0) + b"\xff\xc0"  # a frame marker's bytes inside it
    return (b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif
            + b"\xff\xc0" + struct.pack(">H", 2 + len(frame)) + frame + b"\xff\xd9")


def _ppm_header(width: int, height: int) -> bytes:
    """A binary PPM's header of ``width`` x ``height`` (Pillow sizes it; no pixels)."""
    return f"P6\n{width} {height}\n255\n".encode()


def test_pillow_s_own_limit_neither_refuses_nor_passes_an_image_here(monkeypatch):
    """Pillow's ``MAX_IMAGE_PIXELS`` is the user's (process-wide) setting: an image is refused by rtseg's limit alone.
    ``Image.open`` raised over twice Pillow's limit, which a user's lower setting made a refusal of small images."""
    small = cv2.imencode(".ppm", np.full((48, 64, 3), 7, np.uint8))[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(small.tobytes()).shape == (48, 64, 3)  # was "3,072 pixels, over the 134,217,728 rtseg reads"
    for limit in (1000, None, Image.MAX_IMAGE_PIXELS):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageReadError, match=f"^{BIG_LINE}$"):
            decode_image(_ppm_header(*BIG))
    with pytest.raises(ImageReadError, match=f"^20000 x 10000 pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; "):
        decode_image(_ppm_header(20_000, 10_000))  # was "200,000,000 pixels": Pillow's message, its size unsaid


def test_pillow_s_size_warning_neither_reaches_the_user_nor_touches_the_warning_filters():
    """An image under rtseg's limit and over Pillow's (89 M pixels) passes silently. The warning was silenced with
    ``warnings.catch_warnings``, which swaps the process-wide filters: the warnings a user's "default" filter shows
    once per place were shown again after each image read (the filters' change resets that memory), and a filter
    another thread set during a read was dropped at its end."""
    def warn() -> None:
        warnings.warn("the user's own warning", UserWarning)

    header = _ppm_header(10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Pillow's warning, had it passed, would be caught too
        warn()
        with pytest.raises(ImageReadError, match="^not a readable image file$"):  # sized, then OpenCV finds no pixels
            decode_image(header)
        warn()
    assert [str(w.message) for w in caught] == ["the user's own warning"]


def test_a_filter_another_thread_sets_during_a_read_is_kept(monkeypatch):
    """Pillow's PPM reader registered anew, to set a filter from another thread while rtseg reads the header."""
    Image.init()
    factory, accept = Image.OPEN["PPM"]

    def set_filter_elsewhere(fp, filename):
        thread = threading.Thread(target=warnings.filterwarnings, args=("ignore", "set by another thread"))
        thread.start()
        thread.join()
        return factory(fp, filename)

    small = cv2.imencode(".ppm", np.full((48, 64, 3), 7, np.uint8))[1]
    with warnings.catch_warnings():
        monkeypatch.setitem(Image.OPEN, "PPM", (set_filter_elsewhere, accept))
        assert decode_image(small.tobytes()).shape == (48, 64, 3)
        assert any(f[1] and f[1].pattern == "set by another thread" for f in warnings.filters)


def test_a_folder_source_skips_the_big_image_naming_it(big_png, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((8, 8, 3), 7, np.uint8))
    (tmp_path / "b.png").write_bytes(big_png)
    source = open_source(str(tmp_path))
    events: list[str] = []
    source.on_event = events.append
    assert [f.image[0, 0, 0] for f in source] == [7]
    assert events == [f"skipped {tmp_path / 'b.png'}: {BIG_LINE}"]


def test_a_labelme_image_embedded_over_the_limit_is_one_line(big_png, tmp_path):
    record = {"version": "5.5.0", "imagePath": "gone.png", "imageHeight": BIG[1], "imageWidth": BIG[0],
              "shapes": [{"label": "cat", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon",
                          "group_id": None, "flags": {}}],
              "imageData": base64.b64encode(big_png).decode()}
    (tmp_path / "a.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match=f"a.json: the image in imageData \\(no image file beside it\\) is {BIG_LINE}$"):
        LabelmeDataset(tmp_path, class_names=["cat"])[0]
    record["imageData"] = 123  # was a TypeError's traceback
    (tmp_path / "a.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match="a.json: imageData is not a base64 image and no image file was found"):
        LabelmeDataset(tmp_path, class_names=["cat"])[0]


def test_a_labelme_mask_shape_over_the_limit_says_its_size(big_png, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 10, 3), np.uint8))
    shape = {"label": "cat", "points": [[1, 1], [9, 9]], "shape_type": "mask", "group_id": None, "flags": {},
             "mask": base64.b64encode(big_png).decode()}
    (tmp_path / "a.json").write_text(json.dumps({"version": "5.5.0", "imagePath": "a.png", "imageHeight": 10,
                                                 "imageWidth": 10, "shapes": [shape], "imageData": None}))
    with pytest.raises(DatasetError, match=f"shape 0: the PNG of this mask shape is {BIG_LINE}$"):
        LabelmeDataset(tmp_path, class_names=["cat"])


def _with_bad_text_chunk(png: bytes) -> bytes:
    """``png`` with a tEXt chunk of a wrong checksum after IHDR: libpng (OpenCV) only warns, Pillow refuses it."""
    bad = struct.pack(">I", 4) + b"tEXta\0bc" + b"\0\0\0\0"
    return png[:33] + bad + png[33:]


def _webp(chunk: bytes, body: bytes) -> bytes:
    """A WebP file whose first chunk is ``chunk`` with ``body`` (only the size fields need be right)."""
    return b"RIFF" + struct.pack("<I", 12 + len(body)) + b"WEBP" + chunk + struct.pack("<I", len(body)) + body


def _box(kind: bytes, body: bytes) -> bytes:
    """An ISO base media (MP4, AVIF) box."""
    return struct.pack(">I", 8 + len(body)) + kind + body


def _avif_header(width: int, height: int) -> bytes:
    """An AVIF's file type and item properties: a 1 x 1 thumbnail's extent, then ``width`` x ``height`` (no pixels)."""
    ipco = b"".join(_box(b"ispe", bytes(4) + struct.pack(">II", *size)) for size in ((1, 1), (width, height)))
    return (_box(b"ftyp", b"avif" + bytes(4) + b"avifmif1")
            + _box(b"meta", bytes(4) + _box(b"hdlr", bytes(25)) + _box(b"iprp", _box(b"ipco", ipco))))


def _tiff_header(order: str, big: bool, width: int, height: int) -> bytes:
    """A TIFF's (BigTIFF's) header and first directory: a NewSubfileType field, then the width as a SHORT (LONG8),
    the height as a LONG; ``order`` "<" or ">" (no pixels)."""
    fields = ((254, 4, 0), (256, 16 if big else 3, width), (257, 4, height))
    entries = b"".join(struct.pack(order + ("HHQ" if big else "HHI"), tag, kind, 1)
                       + struct.pack(order + {3: "H", 4: "I", 16: "Q"}[kind], value).ljust(8 if big else 4, b"\0")
                       for tag, kind, value in fields)
    magic = (b"II" if order == "<" else b"MM") + struct.pack(order + "H", 43 if big else 42)
    head = struct.pack(order + "HHQQ", 8, 0, 16, len(fields)) if big else struct.pack(order + "IH", 8, len(fields))
    return magic + head + entries


def _tiff_fields(order: str, *fields: tuple[int, int, str, int]) -> bytes:
    """A classic TIFF's header and first directory of ``fields`` (tag, type, struct format, value), no pixels."""
    entries = b"".join(struct.pack(order + "HHI", tag, kind, 1) + struct.pack(order + fmt, value).ljust(4, b"\0")
                       for tag, kind, fmt, value in fields)
    magic = (b"II" if order == "<" else b"MM") + struct.pack(order + "H", 42)
    return magic + struct.pack(order + "IH", 8, len(fields)) + entries


HEADERS = {  # formats whose size is read here (Pillow cannot tell it, checks it against its own limit, or warns)
    "png with a bad chunk checksum": lambda big: _with_bad_text_chunk(big),
    "bmp, 48-byte info header": lambda big: (b"BM" + struct.pack("<IHHI", 0, 0, 0, 62) + struct.pack("<Iii", 48, *BIG)
                                             + struct.pack("<HH", 1, 24) + bytes(36)),
    "radiance hdr": lambda big: b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12000 +X 12000\n" + bytes(64),
    "pfm": lambda big: b"PF\n12000 12000\n-1.0\n" + bytes(64),
    "pam": lambda big: b"P7\nWIDTH 12000\nHEIGHT 12000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(64),
    "gif": lambda big: _gif_header(*BIG),
    "gif whose first image reaches past its screen": lambda big: (  # a comment extension before it
        b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0, 0, 0) + b"\x21\xfe\x03abc\x00" + b"\x2c"
        + struct.pack("<HHHHB", 11_990, 11_990, 10, 10, 0) + b"\x02\x02\x4c\x01\x00\x3b"),
    "webp lossy": lambda big: _webp(b"VP8 ", bytes(3) + b"\x9d\x01\x2a" + struct.pack("<HH", *BIG) + bytes(16)),
    "webp lossless": lambda big: _webp(b"VP8L", b"\x2f" + struct.pack("<I", (BIG[0] - 1) | (BIG[1] - 1) << 14)
                                       + bytes(16)),
    "webp extended": lambda big: _webp(b"VP8X", bytes(4) + (BIG[0] - 1).to_bytes(3, "little")
                                       + (BIG[1] - 1).to_bytes(3, "little")),
    "jpeg after an exif segment": lambda big: _jpeg_header(*BIG),
    "tiff little-endian": lambda big: _tiff_header("<", False, *BIG),
    "tiff big-endian": lambda big: _tiff_header(">", False, *BIG),
    "bigtiff little-endian": lambda big: _tiff_header("<", True, *BIG),
    "bigtiff big-endian": lambda big: _tiff_header(">", True, *BIG),
    # libtiff takes signed sizes too, and the first of a repeated field (the second said 10 wide: let through)
    "tiff of signed sizes": lambda big: _tiff_fields("<", (256, 8, "h", 12_000), (257, 9, "i", 12_000)),
    "tiff repeating its width": lambda big: _tiff_fields(">", (256, 4, "I", 12_000), (256, 3, "H", 10),
                                                         (257, 4, "I", 12_000)),
    "avif": lambda big: _avif_header(*BIG),
}


@pytest.mark.parametrize("kind", list(HEADERS))
def test_headers_read_here_are_refused_over_the_limit(kind, big_png):
    """OpenCV decoded those Pillow cannot size (an 8.5 MB HDR of 16384 x 8200 took 2 GB), since only Pillow's header
    reader was asked; Pillow's WebP reader refused a WebP's bare header (it decodes the frame's start)."""
    data = HEADERS[kind](big_png)
    with pytest.raises(ImageReadError, match=f"^{BIG_LINE}$"):
        decode_image(data)


@pytest.mark.parametrize("suffix, channels, params", [
    (".gif", 3, []), (".webp", 3, []), (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 50]),
    (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 50]), (".jpg", 3, []), (".tif", 3, []), (".jp2", 3, []), (".ppm", 3, []),
    (".pgm", 1, []), (".pbm", 1, []), (".ras", 3, []),
    pytest.param(".avif", 3, [], marks=pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")),
])
def test_every_format_opencv_writes_is_sized_exactly(suffix, channels, params):
    """The header readers (here and Pillow's) against OpenCV's own files: lossless, lossy and (with alpha) extended
    WebP among them; the sizes odd, so that no width is taken for a height."""
    from rtseg.imageio import _header_size

    image = np.random.default_rng(0).integers(0, 256, (37, 53, channels), np.uint8)
    ok, data = cv2.imencode(suffix, image, params)
    assert ok and _header_size(data.tobytes()) == (53, 37)
    assert decode_image(data.tobytes()).shape == (37, 53, 3)


def test_the_bad_checksum_png_is_one_opencv_decodes():
    """The PNG case above is a real one: small, OpenCV reads it whole."""
    image = decode_image(_with_bad_text_chunk(_black_png(64, 48)))
    assert image.shape == (48, 64, 3) and not image.any()


def test_an_opencv_error_while_decoding_is_an_unreadable_image(monkeypatch):
    """A header over OpenCV's own 2^30-pixel cap in a format no one here sizes: cv2.error's traceback ended the run."""
    from rtseg import imageio

    monkeypatch.setattr(imageio, "_header_size", lambda data: None)
    with pytest.raises(ImageReadError, match="^not a readable image file$"):
        decode_image(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 40000 +X 30000\n" + bytes(64))


def _pillow_image(format: str, **params) -> bytes:
    """A 53 x 37 RGB image as Pillow writes it in ``format``, with EXIF: a camera maker (text held outside the
    directory), an orientation that leaves the image as it is."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Camera maker", 1
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    Image.fromarray(pixels).save(out, format, exif=exif, **params)
    return out.getvalue()


def _damaged_tiffs(data: bytes) -> dict[str, bytes]:
    """``data`` (a TIFF) cut at 10 points (in the header, its directory, the field data after it, the pixels), and
    with its directory damaged: its offset, entry count, or the offset of the camera maker's text past the end."""
    order = "<" if data.startswith(b"II") else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    offset, count, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
    (ifd,) = struct.unpack_from(order + offset, data, 8 if big else 4)
    first = ifd + struct.calcsize(count)
    (n,) = struct.unpack_from(order + count, data, ifd)
    make = next(first + k * entry for k in range(n) if struct.unpack_from(order + "H", data, first + k * entry)[0] == 271)
    past_end = struct.pack(order + offset, len(data) + 1000)
    cuts = (4, 7, ifd + 1, first + 2 * entry + 3, first + n * entry + 10, len(data) // 3, len(data) // 2,
            len(data) - 100, len(data) - 10, len(data) - 1)
    return {**{f"cut at {cut}": data[:cut] for cut in cuts},
            "directory past the end": data[:8 if big else 4] + past_end + data[16 if big else 8:],
            "entry count 0xFFFF": data[:ifd] + struct.pack(order + count, 0xFFFF) + data[first:],
            "camera maker's text past the end": data[:make + entry - len(past_end)] + past_end + data[make + entry:]}


TIFFS = {"uncompressed (directory first)": {}, "lzw (directory last)": {"compression": "tiff_lzw"},
         "bigtiff": {"big_tiff": True}}


@pytest.mark.parametrize("kind", list(TIFFS))
def test_a_cut_or_damaged_tiff_is_the_image_or_one_line_and_no_warning(kind, tmp_path):
    """Pillow's TIFF reader, which sized TIFFs, printed "Corrupt EXIF data", "Truncated File Read" or "Possibly corrupt
    EXIF data" warnings on stderr for a cut or damaged directory, beside rtseg's line (or a good image)."""
    data = _pillow_image("TIFF", **TIFFS[kind])
    assert decode_image(data).shape == (37, 53, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, bad in _damaged_tiffs(data).items():
            try:
                assert decode_image(bad).shape == (37, 53, 3), name
            except ImageReadError as exc:
                assert str(exc) == "not a readable image file", name
        (tmp_path / "a.tif").write_bytes(data[:60])
        with pytest.raises(ImageReadError, match="^not a readable image file$"):
            read_image_file(tmp_path / "a.tif")
    assert [str(w.message) for w in caught] == []


def _exif_past_the_end(data: bytes, label: bytes) -> bytes:
    """``data`` with the first directory's offset in the TIFF structure (EXIF, an MPO's index) after ``label``
    pointed past the end of it."""
    little, big = data.find(label + b"II*\0"), data.find(label + b"MM\0*")
    assert max(little, big) >= 0
    at = max(little, big) + len(label)
    order = "<" if little >= 0 else ">"
    return data[:at + 4] + struct.pack(order + "I", 0xFF00) + data[at + 8:]


@pytest.mark.parametrize("name, data", [
    ("jpeg's exif", lambda: _exif_past_the_end(_pillow_image("JPEG"), b"Exif\0\0")),
    ("mpo's index", lambda: _exif_past_the_end(
        _pillow_image("MPO", save_all=True, append_images=[Image.new("RGB", (53, 37))]), b"MPF\0")),
    pytest.param("avif's exif", lambda: _exif_past_the_end(_pillow_image("AVIF"), b"Exif\0\0"),
                 marks=pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")),
])
def test_a_damaged_exif_in_a_jpeg_or_avif_is_read_without_a_warning(name, data):
    """The image decodes (OpenCV passes over the EXIF it cannot read); Pillow's JPEG and AVIF readers, which sized
    them, parsed the EXIF (an MPO's index) and printed "Corrupt EXIF data" warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(data()).shape == (37, 53, 3)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("offset", [2**31, 2**63, 2**64 - 1])
def test_a_bigtiff_whose_directory_lies_beyond_any_file_is_unreadable_not_a_crash(offset, tmp_path):
    """The directory's offset past what a C size can hold was an OverflowError traceback (the decode stage's
    error in a run)."""
    path = tmp_path / "far.tif"
    path.write_bytes(b"II+\0\x08\0\0\0" + struct.pack("<Q", offset) + bytes(16))
    with pytest.raises(ImageReadError, match="not a readable image file"):
        read_image_file(path)


def _tiff(pixels: np.ndarray, sample_format: int, order: str = "<") -> bytes:
    """An uncompressed one-strip classic TIFF of ``pixels`` ((H, W) grey or (H, W, 3) RGB, any dtype) in byte order
    ``order``, its SampleFormat field ``sample_format`` (1 unsigned, 2 signed integers, 3 floating-point); an RGB
    one's BitsPerSample and SampleFormat (3 values each) lie past the directory, at offsets."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    count = 10
    extra_at = 8 + 2 + count * 12 + 4  # past the header and the directory
    extra = b""  # field values of more than 4 bytes

    def shorts(value: int) -> tuple[int, int, int, bytes]:
        nonlocal extra
        packed = struct.pack(order + "H" * channels, *[value] * channels)
        if len(packed) > 4:
            packed, extra = struct.pack(order + "I", extra_at + len(extra)), extra + packed
        return 3, channels, 0, packed.ljust(4, b"\0")

    fields = {258: shorts(pixels.dtype.itemsize * 8), 339: shorts(sample_format)}
    data = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    for tag, value in ((256, width), (257, height), (273, extra_at + len(extra)), (278, height), (279, len(data))):
        fields[tag] = (4, 1, value, b"")
    for tag, value in ((259, 1), (262, 1 if channels == 1 else 2), (277, channels)):
        fields[tag] = (3, 1, value, b"")
    directory = b"".join(struct.pack(order + "HHI", tag, kind, n) + (packed or struct.pack(
        order + ("I" if kind == 4 else "H2x"), value)) for tag, (kind, n, value, packed) in sorted(fields.items()))
    magic = b"II*\0" if order == "<" else b"MM\0*"
    return magic + struct.pack(order + "I", 8) + struct.pack(order + "H", count) + directory + bytes(4) + extra + data


def _pillow_tiff(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "TIFF")
    return out.getvalue()


_GREY = np.random.default_rng(3).random((37, 53))  # (H, W) float64 in [0, 1)
FLOAT_LINE = ("a TIFF of 32-bit floating-point samples, which rtseg does not read (only 8- and 16-bit integers); save "
              "it as an 8- or 16-bit image")


@pytest.mark.parametrize("pixels, data, samples", [
    (_GREY.astype(np.float32), lambda p: _pillow_tiff(p), "32-bit floating-point"),  # Pillow's mode "F"
    ((_GREY * 1e6).astype(np.int32), lambda p: _pillow_tiff(p), "32-bit signed integer"),  # Pillow's mode "I"
    (np.dstack([_GREY] * 3).astype(np.float32), lambda p: _tiff(p, 3), "32-bit floating-point"),
    (np.dstack([_GREY] * 3).astype(np.float32), lambda p: _tiff(p, 3, ">"), "32-bit floating-point"),
    (_GREY, lambda p: _tiff(p, 3, ">"), "64-bit floating-point"),
    (np.dstack([_GREY * 1e9] * 3).astype(np.uint32), lambda p: _tiff(p, 1), "32-bit unsigned integer"),
], ids=["pillow F", "pillow I", "float rgb", "float rgb big-endian", "double", "uint32 rgb"])
def test_a_tiff_of_float_or_32_bit_samples_is_refused_naming_them(pixels, data, samples):
    """A valid TIFF (OpenCV reads its samples as they are) that OpenCV's colour read refuses: was 'not a readable
    image file', as for a damaged one. Its float samples have no set range that maps them to 8 bits."""
    data = data(pixels)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), pixels)
    with pytest.raises(ImageReadError) as caught:
        decode_image(data)
    assert str(caught.value) == (f"a TIFF of {samples} samples, which rtseg does not read (only 8- and 16-bit "
                                 "integers); save it as an 8- or 16-bit image")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("order", ["<", ">"])
def test_a_tiff_of_8_or_16_bit_integers_written_alike_is_read(dtype, order):
    """The files of :func:`_tiff` that differ only in their samples' size and format are read (BGR, 16 bits to 8)."""
    rgb = np.dstack([_GREY, _GREY[::-1], _GREY[:, ::-1]])
    image = decode_image(_tiff((rgb * np.iinfo(dtype).max).astype(dtype), 1, order))
    assert image.dtype == np.uint8 and np.abs(image - rgb[..., ::-1] * 255).max() <= 1


def test_a_float_tiff_is_named_as_a_source_in_a_folder_and_in_a_data_set(tmp_path):
    """Was 'cannot read image …: not a readable image file' (rtseg --source), 'skipped …: not a readable image file'
    (a folder) and '…: not a readable image file; fix or remove …' (a COCO data set, at the step that read it)."""
    from rtseg.data.coco import CocoDataset
    from rtseg.errors import SourceError

    (tmp_path / "f.tif").write_bytes(_pillow_tiff(_GREY.astype(np.float32)))
    cv2.imwrite(str(tmp_path / "g.png"), np.full((37, 53, 3), 7, np.uint8))
    with pytest.raises(SourceError) as caught:
        list(open_source(str(tmp_path / "f.tif")))
    assert str(caught.value) == f"cannot read image {tmp_path / 'f.tif'}: {FLOAT_LINE}"
    source = open_source(str(tmp_path))
    events: list[str] = []
    source.on_event = events.append
    assert [f.image[0, 0, 0] for f in source] == [7]
    assert events == [f"skipped {tmp_path / 'f.tif'}: {FLOAT_LINE}"]
    images = [{"id": k, "file_name": name, "width": 53, "height": 37} for k, name in enumerate(["g.png", "f.tif"])]
    annotations = [{"id": k, "image_id": k, "category_id": 1, "segmentation": [[5, 5, 20, 5, 20, 20]]} for k in (0, 1)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": [{"id": 1, "name": "cat"}]}))
    data = CocoDataset(tmp_path / "ann.json", tmp_path)
    assert data[0].image.shape == (37, 53, 3)
    with pytest.raises(DatasetError) as caught:
        data[1]
    assert str(caught.value) == f"{tmp_path / 'f.tif'}: {FLOAT_LINE}; fix or remove the file and its annotations"


def test_rtseg_source_of_a_float_tiff_is_one_line_naming_its_samples(tmp_path):
    import subprocess
    import sys

    (tmp_path / "f.tif").write_bytes(_pillow_tiff(_GREY.astype(np.float32)))
    r = subprocess.run([sys.executable, "-m", "rtseg", "--source", "f.tif", "--json", "out.json", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == f"rtseg: error: cannot read image f.tif: {FLOAT_LINE}", \
        r.stderr
