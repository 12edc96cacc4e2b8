"""The JPEG size reader (``rtseg.imageio._jpeg_size``) takes the frame header libjpeg takes, past fill bytes, RST
markers, junk and any number of segments, and tells nothing from a file cut before the frame header ends. Its speed
on long runs of fill bytes or RST markers is measured by benchmarks/jpeg_scan.py (no timing asserted here)."""
from __future__ import annotations

import random
import struct

import cv2
import numpy as np
import pytest

from rtseg.imageio import MAX_IMAGE_PIXELS, ImageReadError, _header_size, _jpeg_size, decode_image

SOI = b"\xff\xd8"
SOS = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
EOI = b"\xff\xd9"
SOF_MARKERS = [m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)]
#: Markers with a length that are no frame header: DHT, JPG, DAC, DQT, DNL, DRI, APP0-APP15, COM.
SEGMENT_MARKERS = [0xC4, 0xC8, 0xCC, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE]


def segment(marker: int, body: bytes) -> bytes:
    """A marker segment: 0xFF, ``marker``, its length (counting itself), ``body``."""
    return bytes([0xFF, marker]) + struct.pack(">H", 2 + len(body)) + body


def frame(width: int, height: int, marker: int = 0xC0) -> bytes:
    """A frame header (SOFn) of ``width`` x ``height``, 8-bit, three components."""
    return segment(marker, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01")


def libjpeg_size(data: bytes) -> tuple[int, int] | None:
    """The reference: a byte at a time, as libjpeg's marker reader (jdmarker.c ``next_marker``) steps: up to an
    0xFF, past the 0xFF fill bytes after it, a stuffed 0x00 discarded as junk, TEM and RSTn passed (no length), a
    segment skipped by its length; the first frame header's size, None at a scan or the end first (or a frame
    header cut short)."""
    pos = 2
    while True:
        while pos < len(data) and data[pos] != 0xFF:
            pos += 1
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 1 >= len(data):
            return None
        marker = data[pos + 1]
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
        elif marker in SOF_MARKERS:  # length, precision, height, width
            return struct.unpack(">HH", data[pos + 7:pos + 9] + data[pos + 5:pos + 7]) if pos + 9 <= len(data) else None
        elif marker in (0xD9, 0xDA) or pos + 4 > len(data):
            return None
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])


CASES = {
    "fill bytes before the frame header": (SOI + b"\xff" * 5000 + frame(640, 480), (640, 480)),
    "RST markers, each after fill bytes": (SOI + b"".join(b"\xff" * k + bytes([0xD0 + k % 8]) for k in range(1, 900))
                                           + frame(640, 480), (640, 480)),
    "stuffed zeros, TEM and junk": (SOI + b"\xff\x00junk\xff\x01\xff\xff\x00\x00" + frame(640, 480), (640, 480)),
    "the frame header after 2000 APPn and COM segments": (
        SOI + b"".join(segment(0xE0 + k % 16 if k % 17 else 0xFE, bytes(k % 5)) for k in range(2000))
        + frame(640, 480), (640, 480)),
    "a frame header's bytes inside a segment": (SOI + segment(0xE1, b"\xff\xc0\x00\x11\x08\x01\x00\x01\x00\xff")
                                                + frame(640, 480), (640, 480)),
    "DHT, JPG and DAC are not frame headers": (
        SOI + b"".join(segment(m, b"\x08\x01\x00\x01\x00") for m in (0xC4, 0xC8, 0xCC)) + frame(640, 480), (640, 480)),
    "segments of length 0 and 1 (only the length is skipped)": (SOI + b"\xff\xfe\x00\x00\xff\xe0\x00\x01"
                                                                + frame(640, 480), (640, 480)),
    "progressive, lossless, arithmetic frame headers": (SOI + frame(33, 44, 0xCF), (33, 44)),
    "the first frame header wins": (SOI + frame(640, 480) + frame(12_000, 12_000), (640, 480)),
    "a scan before any frame header": (SOI + SOS + frame(640, 480), None),
    "the end before any frame header": (SOI + EOI + frame(640, 480), None),
    "a frame header cut short": (SOI + b"\xff" * 100 + frame(640, 480)[:8], None),
    "fill bytes to the end": (SOI + segment(0xE0, bytes(14)) + b"\xff" * 5000, None),
    "RST markers to the end": (SOI + b"\xff\xd0" * 5000, None),
    "an 0xFF as the last byte": (SOI + bytes(20) + b"\xff", None),
    "a segment reaching past the end": (SOI + b"\xff\xe1\xff\xff" + frame(640, 480), None),
    "a segment's length cut": (SOI + b"\xff" * 10 + b"\xff\xe1\x00", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_frame_header_libjpeg_takes(name):
    data, size = CASES[name]
    assert _jpeg_size(data) == size == libjpeg_size(data)


def test_a_file_cut_anywhere_before_the_frame_header_ends_tells_nothing():
    """Every cut of a header whose markers come after fill bytes, RST markers and junk: the size only from the cut
    that keeps the whole frame header (its last byte the width's), at every split of a marker or a run."""
    head = (SOI + segment(0xE0, b"JFIF\0\xff\xc0") + b"\xff\xff\xd3\xff\x00\x12\xff\xff\xff\xd7\xff\x01"
            + segment(0xDB, bytes(65)) + b"\xff\xff")
    data = head + frame(1920, 1080) + SOS
    end = len(head) + 9
    sizes = [_jpeg_size(data[:cut]) for cut in range(len(data) + 1)]
    assert sizes == [None] * end + [(1920, 1080)] * (len(data) + 1 - end)


def _token(rng: random.Random) -> bytes:
    """One random piece of a JPEG header: fill bytes, a marker without a length, junk, a segment (its length
    sometimes wrong), a frame header, a scan or the end."""
    kind = rng.randrange(9)
    if kind == 0:
        return b"\xff" * rng.randint(1, 4)
    if kind == 1:
        return bytes([0xFF, rng.choice([0x00, 0x01, *range(0xD0, 0xD8)])])
    if kind == 2:
        return bytes(rng.choice([0x00, 0x12, 0xC0, 0xD9, 0xFF]) for _ in range(rng.randint(1, 4)))
    if kind in (3, 4, 5):
        body = bytes(rng.choice([0x00, 0x08, 0xC0, 0xD0, 0xDA, 0xFF]) for _ in range(rng.randint(0, 12)))
        length = 2 + len(body) if rng.random() < 0.7 else rng.randint(0, len(body) + 4)
        return bytes([0xFF, rng.choice(SEGMENT_MARKERS)]) + struct.pack(">H", length) + body
    if kind in (6, 7):
        return frame(rng.randint(1, 65_535), rng.randint(1, 65_535), rng.choice(SOF_MARKERS))
    return rng.choice([SOS, EOI])


def test_random_headers_and_their_cuts_agree_with_libjpeg_s_rules():
    rng = random.Random(0)
    sized = 0
    for _ in range(3000):
        data = SOI + b"".join(_token(rng) for _ in range(rng.randint(1, 8)))
        for cut in (len(data), rng.randint(2, len(data))):
            expected = libjpeg_size(data[:cut])
            assert _jpeg_size(data[:cut]) == expected, data[:cut].hex()
            sized += expected is not None
    assert sized > 1000  # most cases reach a frame header: the rules are exercised, not only the cut-short ones


def _opencv_jpeg() -> bytes:
    """A 53 x 37 baseline JPEG as OpenCV writes it (JFIF, quantisation tables, frame header, Huffman tables, scan)."""
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


RUNS = {"fill bytes": b"\xff" * 2**20, "RST markers": b"\xff\xd5" * 2**19,
        "empty COM segments": b"\xff\xfe\x00\x02" * 2**16}


@pytest.mark.parametrize("run", list(RUNS))
def test_a_long_run_before_the_frame_header_is_read_through(run):
    """libjpeg passes over these without a word: the image decodes as without them, and a run does not hide a
    frame header over the limit."""
    data = _opencv_jpeg()
    at = data.find(b"\xff\xc0")
    padded = data[:at] + RUNS[run] + data[at:]
    assert _header_size(padded) == (53, 37)
    assert np.array_equal(decode_image(padded), decode_image(data))
    with pytest.raises(ImageReadError, match=f"^12000 x 12000 pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; "):
        decode_image(SOI + RUNS[run] + frame(12_000, 12_000) + SOS)
