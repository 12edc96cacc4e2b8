"""Sources: real PyAV files, real image files, the synthetic clip, pacing, errors, camera."""
from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.imageio import MAX_IMAGE_PIXELS
from rtseg.video.sources import ImageSource, Paced, SyntheticSource, open_source, redact_url, scrub
from rtseg.video import sources_av
from rtseg.video.sources_cam import CameraSource
from servers.helpers import clip_colour, make_clip
from servers.http_live import LiveHttpServer, live_ts


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=30, fps=10)


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[int]:
    """A real HTTP file server on loopback serving ``folder`` while the block runs; yields its port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _colour(frame) -> np.ndarray:
    return frame.image.reshape(-1, 3).mean(axis=0)


def test_file_all_frames_in_order_with_timestamps_and_colours(clip):
    with open_source(str(clip)) as source:
        assert not source.is_live and source.fps == pytest.approx(10.0) and source.num_frames == 30
        frames = list(source)
    assert len(frames) == 30
    assert [f.seq for f in frames] == list(range(30))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(30)])
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.source_id == str(clip) for f in frames)
    for i, f in enumerate(frames):  # BGR order survives the round trip (yuv420p: a few levels off)
        assert np.abs(_colour(f) - clip_colour(i)).max() < 6, i
    times = [f.capture_time for f in frames]
    assert times == sorted(times)


def test_file_vid_stride_start_end(clip):
    with open_source(str(clip), vid_stride=4, start=1.05, end=2.5) as source:
        assert source.fps == pytest.approx(2.5)
        assert source.num_frames == 4
        frames = list(source)
    # frames with pts in [1.05, 2.5): 11..24, every 4th of them: 11, 15, 19, 23
    assert [round(f.pts, 3) for f in frames] == [1.1, 1.5, 1.9, 2.3]
    for f, i in zip(frames, (11, 15, 19, 23)):
        assert np.abs(_colour(f) - clip_colour(i)).max() < 6
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert [f.index for f in frames] == [11, 15, 19, 23]  # the frames' numbers in the file (sought: key frame 10)


def test_frames_are_numbered_in_their_file_folder_or_clip_whatever_start_and_stride_pass_over(clip, tmp_path):
    """``Frame.index`` (a COCO results file's image_id - 1): was only ``seq``, the count of frames yielded, so that
    frame 2 of a run with --vid-stride 2 took the id of the file's frame 1."""
    raw = _encode(tmp_path / "raw.h264", [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20)],
                  fmt="h264")  # cannot seek: --start decodes from the beginning
    _write_images(tmp_path, 5)
    (tmp_path / "img_01.png").write_bytes(b"not a PNG")  # skipped, still counted
    cases = [(open_source(str(clip), vid_stride=7), [0, 7, 14, 21, 28]),
             (open_source(str(raw), start=1.25, vid_stride=3), [13, 16, 19]),
             (open_source(str(tmp_path), vid_stride=2), [0, 2, 4]), (open_source(str(tmp_path)), [0, 2, 3, 4]),
             (open_source("synthetic", vid_stride=3, synthetic={"width": 64, "height": 48, "num_frames": 7}),
              [0, 3, 6]),
             (open_source("synthetic", realtime=True, vid_stride=3,
                          synthetic={"width": 64, "height": 48, "num_frames": 7}), [0, 3, 6])]  # paced: passed on
    for source, numbers in cases:
        with source:
            assert [f.index for f in source] == numbers, source.source_id


def test_truncated_file_ends_with_a_notice(clip, tmp_path):
    whole = make_clip(tmp_path / "whole.mp4", frames=40, fps=10, faststart=True)
    data = whole.read_bytes()
    media = data.find(b"mdat")  # the index comes first: cut the media data in half
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:(media + len(data)) // 2])
    with open_source(str(cut)) as source:
        frames = list(source)
    assert 5 < len(frames) < 35
    assert len(source.notices) == 1 and "the 4.00 s its header announces; the file may be truncated" in source.notices[0]
    with open_source(str(whole)) as source:
        assert len(list(source)) == 40 and source.notices == []


@pytest.mark.parametrize("fmt, codec", [("matroska", "libx264"), ("webm", "libvpx"), ("nut", "libx264"),
                                        ("asf", "mpeg4"), ("mpegts", "mpeg2video"), ("mp4", "libx264")])
def test_a_file_whose_clock_starts_late_is_neither_longer_nor_truncated(tmp_path, fmt, codec):
    """Timestamps from 11.4 s (``ffmpeg -copyts``, a cut of a recording): Matroska / WebM, NUT and ASF give the end
    time as their duration, which was taken for the length (``ended at 2.90 s of the 14.40 s its header announces;
    the file may be truncated``, a progress total of 144 frames, a --start past the end let through); MPEG-TS and
    MP4 give the length. A Matroska file cut short is still told."""
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(30)]
    path = _encode(tmp_path / f"late.{fmt}", images, fmt=fmt, codec=codec, first=114)
    with open_source(str(path)) as source:
        assert source.num_frames in (29, 30)  # (NUT's end is the last frame's time: 2.9 s)
        frames = list(source)
    assert len(frames) == 30 and frames[0].pts == 0.0 and source.notices == []
    with pytest.raises(ConfigError, match=r"start 3\.5 s is past the end of .* \((2\.90|3\.00) s long\)"):
        open_source(str(path), start=3.5)
    if fmt == "matroska":
        long = _encode(tmp_path / "long.mkv", images * 3, fmt=fmt, first=114)
        cut = tmp_path / "cut.mkv"
        cut.write_bytes(long.read_bytes()[:long.stat().st_size // 2])
        with open_source(str(cut)) as source:
            assert 20 < len(list(source)) < 80
        assert len(source.notices) == 1 and "of the 9.00 s its header announces; the file may be truncated" in \
            source.notices[0]


def test_a_start_within_the_frames_of_a_header_that_announces_too_little_is_let_through(tmp_path):
    """An MP4 of variable frame rate with B-frames whose header says 1.8 s (FFmpeg's muxer) for frames up to 2.5 s:
    --start 2 was refused as past the end; the packets past the header's end are read before refusing."""
    times = [0, 100, 200, 300, 400, 500, 1000, 1500, 2000, 2500]
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(len(times))]
    path = _encode(tmp_path / "vfr.mp4", images, times=times)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert float(stream.duration * stream.time_base) == pytest.approx(1.8)  # (the header this test is about)
    with open_source(str(path), start=2.0) as source:
        assert [f.pts for f in source] == pytest.approx([2.0, 2.5])
    with pytest.raises(ConfigError, match=r"start 2\.6 s is past the end of .*vfr\.mp4 \(2\.60 s long\)"):
        open_source(str(path), start=2.6)


def test_file_start_past_the_end_is_a_config_error(clip):
    with pytest.raises(ConfigError, match=r"start 10 s is past the end of .*clip.*\(3\.00 s long\); choose an earlier start"):
        open_source(str(clip), start=10.0)
    with open_source(str(clip), start=2.85) as source:  # a frame at or after start: the last one, at 2.9 s
        assert [f.pts for f in source] == pytest.approx([2.9])
    with open_source(str(clip), start=2.95) as source:  # within the header's 3 s, past the last frame: was a run of
        with pytest.raises(ConfigError, match=r"start 2\.95 s is past the last frame of .*clip.* \(at 2\.900 s\); "
                                              "choose an earlier start"):  # no frames that ended as if all was well
            list(source)
    with open_source(str(clip), start=1.01, end=1.05) as source:
        with pytest.raises(ConfigError, match=r"no frame of .*clip.* from start 1\.01 s to end 1\.05 s \(one at "
                                              r"1\.100 s\); widen the range"):
            list(source)


@pytest.mark.parametrize("kwargs, match", [
    ({"vid_stride": 0}, "open_source: vid_stride must be an integer >= 1, got 0"),
    ({"start": 2.0, "end": 1.0}, r"open_source: end must be after start \(2.0 seconds\), got 1.0"),
    ({"start": 1.5, "end": 1.5}, r"open_source: end must be after start \(1.5 seconds\), got 1.5"),
    ({"start": -1.0}, r"open_source: start must be a finite number >= 0, got -1.0"),
    ({"start": float("nan")}, "open_source: start must be a finite number >= 0, got nan"),  # was a traceback
    ({"end": float("nan")}, "open_source: end must be a finite number > 0, got nan"),
])
def test_bad_ranges(clip, kwargs, match):
    with pytest.raises(ConfigError, match=rf"^{match}$"):
        open_source(str(clip), **kwargs)


@pytest.mark.parametrize("name, value, expected", [
    ("start", True, ">= 0"), ("start", float("inf"), ">= 0"), ("start", -0.5, ">= 0"), ("start", "1", ">= 0"),
    ("start", np.float64("nan"), ">= 0"), ("end", True, "> 0"), ("end", float("inf"), "> 0"), ("end", 0, "> 0"),
    ("end", -2.0, "> 0"), ("end", np.bool_(True), "> 0"),
])
def test_start_and_end_that_are_no_finite_seconds_are_one_line(clip, name, value, expected):
    """Was accepted (True as 1 second, an infinite end as no end) or a TypeError traceback ("1")."""
    for spec in (str(clip), "synthetic"):
        with pytest.raises(ConfigError, match=rf"^open_source: {name} must be a finite number {expected}, got "
                                              rf"{re.escape(repr(value))}$"):
            open_source(spec, **{name: value})


def test_start_and_end_of_numpy_and_integer_seconds_still_cut(clip):
    with open_source(str(clip), start=np.float32(1.0), end=2) as source:
        assert 9 <= len(list(source)) <= 11


@pytest.mark.parametrize("fps", [0, -25.0, float("nan"), float("inf"), True, "30"])
def test_paced_fps_that_is_no_positive_number_is_one_line(fps):
    """Was accepted (0 and False as "the inner rate", True as 1 fps, -25 or NaN as a broken clock)."""
    inner = SyntheticSource(seed=1, width=64, height=48, num_frames=2, fps=40.0)
    with pytest.raises(ConfigError, match=rf"^Paced: fps must be a finite number > 0, got {re.escape(repr(fps))}$"):
        Paced(inner, fps=fps)
    assert Paced(inner, fps=np.float32(20.0)).fps == 20.0 and Paced(inner, fps=15).fps == 15


@pytest.mark.parametrize("stride", [0, -2, 1.5, 2.0, True, float("nan"), "2"])
def test_vid_stride_that_is_no_integer_from_1_is_one_line(clip, stride):
    """Was accepted (True as 1) or a TypeError traceback (1.5, NaN, "2") from the Python API."""
    for spec in (str(clip), "synthetic"):
        with pytest.raises(ConfigError, match=rf"^open_source: vid_stride must be an integer >= 1, got "
                                              rf"{re.escape(repr(stride))}$"):
            open_source(spec, vid_stride=stride)
    with open_source("synthetic", vid_stride=np.int64(3), synthetic={"width": 64, "height": 64,
                                                                     "num_frames": 7}) as source:
        assert len(list(source)) == 3


@pytest.mark.parametrize("fps", [0, -30.0, float("nan"), float("inf"), True])
def test_synthetic_fps_that_is_no_positive_number_is_one_line(fps):
    """Was a ZeroDivisionError traceback (0) or a clip of negative or NaN rate."""
    with pytest.raises(ConfigError, match=rf"^SyntheticSource: fps must be a finite number > 0, got {fps!r}$"):
        open_source("synthetic", synthetic={"width": 64, "height": 64, "num_frames": 4, "fps": fps})


def test_errors_are_one_line(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(garbage.read_bytes())
    (tmp_path / "loop_a.mp4").symlink_to(tmp_path / "loop_b.mp4")
    (tmp_path / "loop_b.mp4").symlink_to(tmp_path / "loop_a.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    cases = {
        str(tmp_path / "missing.mp4"): "source not found",
        str(tmp_path / "loop_a.mp4"): "a symbolic link to nothing",
        str(tmp_path / "dangling.mp4"): "a symbolic link to nothing",
        str(videos): "no images in folder .*; found 1 video file\\(s\\): pass one video at a time as --source",
        str(videos / "*.mp4"): "matches no images; found 1 video file",
        str(garbage): "cannot read video file",
        str(audio_only): "no video stream",
        "ftp://user:pw@host/x.mp4": "unsupported URL scheme 'ftp'",
        str(tmp_path / "*.png"): "no files match",
        "synthetic:abc": "bad synthetic source",
        "synthetic:": "bad synthetic source",  # was the default seed: an unset variable went unnoticed
        "synthetic:\u00b2": "bad synthetic source",  # a digit to str.isdigit, not to int(): was a ValueError traceback
        "": "--source is empty",
        "  ": "--source is empty",
    }
    for spec, match in cases.items():
        with pytest.raises(SourceError, match=match) as info:
            open_source(spec)
        assert "\n" not in str(info.value)
        assert "pw@" not in str(info.value)


def test_image_names_that_are_not_utf8_are_read(tmp_path):
    """A Latin-1 file name (Windows, zip archives, cameras): OpenCV's imread crashed the process (segfault)."""
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, :8] = (0, 0, 255)
    ok, data = cv2.imencode(".png", image)
    name = os.fsdecode(b"bild\xe9.png")  # 'bild\udce9.png': not encodable as UTF-8
    (tmp_path / name).write_bytes(data.tobytes())
    for spec in (str(tmp_path / name), str(tmp_path)):
        with open_source(spec) as source:
            (frame,) = list(source)
        assert np.array_equal(frame.image, image)


def test_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="no images in folder"):
        open_source(str(tmp_path))


def test_a_folder_of_an_animated_gif_says_to_pass_it_as_the_source(tmp_path):
    """A folder's images are stills and GIF is not among their suffixes: a folder holding only an animated GIF was
    "no images in folder" without a word that the GIF itself plays as --source (videos got that hint)."""
    gif = tmp_path / "anim.gif"
    gif.write_bytes(_gif(40, 30, frames=3))
    with pytest.raises(SourceError) as info:
        open_source(str(tmp_path))
    assert str(info.value).endswith(f"; found 1 video file(s): pass one video at a time as --source (e.g. {gif})")
    assert len(list(open_source(str(gif)))) == 3  # (as the hint says)


def test_unreachable_host_fails_within_timeout():
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:9/none", open_timeout=2)  # port 9 (discard): nothing listens
    assert time.monotonic() - t0 < 5


def test_redaction():
    assert redact_url("rtsp://bob:pa55@cam.local:554/live") == "rtsp://***@cam.local:554/live"
    assert redact_url("rtsp://cam.local/live") == "rtsp://cam.local/live"
    url = "rtmp://bob:pa55@h/app"
    assert scrub(f"failed to open {url}: pa55 rejected", url) == "failed to open rtmp://***@h/app: *** rejected"
    assert redact_url("rtsp://bob:pa55@[::1]:554/live") == "rtsp://***@[::1]:554/live"  # was ***@::1:554
    assert redact_url("rtsp://bob:pa55@[bad/live") == "rtsp://***@[bad/live"  # one that does not parse: no traceback
    assert scrub("pa55 at rtsp://bob:pa55@[bad", "rtsp://bob:pa55@[bad") == "*** at rtsp://***@[bad"
    # a short user name or password inside other words is left there ("Conn***ction r***fus***d" before)
    assert scrub("send failed (Connection refused) as e, on", "rtmp://e:on@h/a") == \
        "send failed (Connection refused) as ***, ***"
    assert scrub("u=bob;pw=pa55.", url) == "u=***;pw=***."


FORM = "write it as scheme://host:port/path (an IPv6 host in brackets: [::1])"


@pytest.mark.parametrize("url, line", [
    ("http://[bad", f"cannot open stream http://[bad: cannot parse URL (Invalid IPv6 URL); {FORM}"),
    ("rtsp://[::1", f"cannot open stream rtsp://[::1: cannot parse URL (Invalid IPv6 URL); {FORM}"),
    ("http://]x[/", "cannot open stream http://]x[/: cannot parse URL ("),
    ("rtsp://bob:pa55@[bad/x", f"cannot open stream rtsp://***@[bad/x: cannot parse URL (Invalid IPv6 URL); {FORM}"),
    ("http://", f"cannot open stream http://: the URL has no host; {FORM}"),
    ("RTSP://", f"cannot open stream RTSP://: the URL has no host; {FORM}"),
    ("rtsp://bob:pa55@/x", f"cannot open stream rtsp://***@/x: the URL has no host; {FORM}"),
    ("rtsp://127.0.0.1:-1/x", "cannot open stream rtsp://127.0.0.1:-1/x: invalid port '-1'; give a port from 1 to "
                              "65535 (or none, for the scheme's default)"),
    ("http://127.0.0.1:99999/x", "cannot open stream http://127.0.0.1:99999/x: invalid port '99999'; give a port"),
    ("rtmp://127.0.0.1:0/x", "cannot open stream rtmp://127.0.0.1:0/x: invalid port '0'; give a port"),
])
def test_malformed_stream_urls_are_one_line_before_connecting(url, line):
    """Were a traceback (urlsplit's 'Invalid IPv6 URL') or 'nothing listens at  (Connection refused)' with a blank
    host, or 'nothing listens at 127.0.0.1:-1', after trying to connect."""
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        open_source(url, open_timeout=5)
    assert str(info.value).startswith(line) and "\n" not in str(info.value) and "pa55" not in str(info.value)
    assert time.monotonic() - t0 < 1


def test_malformed_stream_url_is_one_line_in_the_cli(capsys):
    from rtseg.cli import main

    assert main(["--source", "http://u:pw@[bad", "--max-frames", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"rtseg: error: cannot open stream http://***@[bad: cannot parse URL (Invalid IPv6 URL); {FORM}"]


def test_url_schemes_are_case_insensitive(clip):
    """RFC 3986: 'HTTP://' is 'http://' (was FFmpeg's 'Protocol not found')."""
    with serving(clip.parent) as port, open_source(f"HTTP://127.0.0.1:{port}/{clip.name}", open_timeout=5) as source:
        assert len(list(source)) == 30


def _write_images(folder, n):
    for i in range(n):
        img = np.full((20, 30, 3), clip_colour(i), np.uint8)
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), img)


def test_image_folder_glob_and_single(tmp_path):
    _write_images(tmp_path, 5)
    (tmp_path / "notes.txt").write_text("not an image")
    folder = list(open_source(str(tmp_path)))
    assert [tuple(f.image[0, 0]) for f in folder] == [clip_colour(i) for i in range(5)]
    assert [f.pts for f in folder] == pytest.approx([i / 25 for i in range(5)])  # nominal 25 FPS (FFmpeg's)
    glob_frames = list(open_source(str(tmp_path / "img_0[13]*.png")))
    assert [tuple(f.image[0, 0]) for f in glob_frames] == [clip_colour(1), clip_colour(3)]
    strided = list(open_source(str(tmp_path), vid_stride=2))
    assert [tuple(f.image[0, 0]) for f in strided] == [clip_colour(i) for i in (0, 2, 4)]
    single = open_source(str(tmp_path / "img_04.png"))
    assert isinstance(single, ImageSource) and single.num_frames == 1
    assert tuple(next(iter(single)).image[0, 0]) == clip_colour(4)


def _animation(path, durations_ms):
    """An animated PNG or WebP (by ``path``'s suffix, OpenCV's encoder) of frames coloured clip_colour(0, 1 …)."""
    animation = cv2.Animation()
    animation.frames = [np.full((30, 40, 3), clip_colour(i), np.uint8) for i in range(len(durations_ms))]
    animation.durations = list(durations_ms)
    ok, data = cv2.imencodeanimation(path.suffix, animation)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def test_an_animated_png_alone_plays_every_frame_at_its_times(tmp_path):
    """Was its first frame only, without a word (OpenCV reads an APNG as a still image); FFmpeg plays it."""
    with open_source(str(_animation(tmp_path / "a.png", [100, 200, 100, 300]))) as source:
        frames = list(source)
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.1, 0.3, 0.4])
    assert [tuple(f.image[0, 0]) for f in frames] == [clip_colour(i) for i in range(4)]


def test_frames_say_how_long_they_are_shown_as_their_source_times_them(tmp_path):
    """``Frame.duration`` (was not carried: a recording gave the last frame 1 / fps, 0.25 s for this GIF of average
    rate 4 fps): a GIF's own delays, its last one too; with --vid-stride a frame lasts until the last of the frames it
    stands for ends, at most until --end; an image folder's and a synthetic clip's frame period (a clip's last frame
    with a stride: its own)."""
    gif = _animation(tmp_path / "a.gif", [100, 100, 100, 700])
    with open_source(str(gif)) as source:
        frames = list(source)
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [f.duration for f in frames] == pytest.approx([0.1, 0.1, 0.1, 0.7])
    with open_source(str(gif), vid_stride=3) as source:
        assert [f.duration for f in source] == pytest.approx([0.3, 0.7])
    with open_source(str(gif), vid_stride=2, end=0.5) as source:
        assert [f.duration for f in source] == pytest.approx([0.2, 0.3])
    folder = tmp_path / "images"
    folder.mkdir()
    _write_images(folder, 3)
    assert [f.duration for f in open_source(str(folder), vid_stride=2)] == [1 / 25, 1 / 25]
    clip = open_source("synthetic", vid_stride=2, synthetic={"width": 64, "height": 48, "num_frames": 7, "fps": 10.0})
    assert [f.duration for f in clip] == pytest.approx([0.2, 0.2, 0.2, 0.1])


def test_an_animated_image_read_as_a_still_is_warned_of(tmp_path):
    """An animated WebP (FFmpeg cannot decode those) and an APNG among other images give their first frame, now
    with a warning saying so and what to do (was silent)."""
    webp = _animation(tmp_path / "w.webp", [100, 100, 100])
    events: list[str] = []
    with open_source(str(webp), on_event=events.append) as source:
        assert [tuple(f.image[0, 0]) for f in source] == [clip_colour(0)]
    assert events == [f"{webp} is an animated image: only its first frame is read; convert it to a video or to one "
                      f"image per frame to read them all"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    apng = _animation(folder / "b.png", [100, 100])
    cv2.imwrite(str(folder / "a.png"), np.zeros((30, 40, 3), np.uint8))
    events.clear()
    with open_source(str(folder), on_event=events.append) as source:
        assert len(list(source)) == 2
    assert events == [f"{apng} is an animated image: only its first frame is read; pass it alone as --source to "
                      f"play it"]


def test_an_unpadded_image_folder_and_glob_play_in_number_order(tmp_path):
    """frame1, frame2 … frame10, frame11 (plain sorting played frame1, frame10, frame11, frame2 …)."""
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"frame{i + 1}.png"), np.full((20, 30, 3), clip_colour(i), np.uint8))
    for spec in (str(tmp_path), str(tmp_path / "frame*.png")):
        frames = list(open_source(spec))
        assert [Path(f.file).name for f in frames] == [f"frame{i + 1}.png" for i in range(12)]
        assert [tuple(f.image[0, 0]) for f in frames] == [clip_colour(i) for i in range(12)]


def test_time_range_and_file_options_are_refused_where_they_cannot_apply(tmp_path):
    """--start / --end on images or a synthetic clip, file-only options on a camera: one error each (were silently
    ignored). The camera is refused before it is opened (no webcam here)."""
    _write_images(tmp_path, 2)
    for spec, what in ((str(tmp_path), f"the images of {tmp_path}"), ("synthetic", "a synthetic clip")):
        for kw in ({"start": 0.5}, {"end": 1.0}):
            with pytest.raises(ConfigError, match=rf"--start / --end cut video files, not {what}: use --max-frames"):
                open_source(spec, **kw)
    for kw in ({"vid_stride": 2}, {"start": 1.0}, {"end": 2.0}, {"realtime": True}):
        with pytest.raises(ConfigError, match="camera 0 is a live source: --vid-stride, --start, --end and --realtime"):
            open_source("0", **kw)


def test_unreadable_images_in_a_folder_are_skipped_with_a_warning(tmp_path):
    _write_images(tmp_path, 4)
    (tmp_path / "img_01.png").write_bytes(b"not a png")
    (tmp_path / "img_02.png").write_bytes((tmp_path / "img_03.png").read_bytes()[:60])  # truncated
    source = open_source(str(tmp_path))
    events = []
    source.on_event = events.append
    frames = list(source)
    assert [tuple(f.image[0, 0]) for f in frames] == [clip_colour(0), clip_colour(3)]
    assert [f.seq for f in frames] == [0, 1] and [f.pts for f in frames] == pytest.approx([0, 1 / 25])
    assert events == [f"skipped {tmp_path / 'img_01.png'}: not a readable image file",
                      f"skipped {tmp_path / 'img_02.png'}: not a readable image file"]
    assert source.notices == []  # each was named in its warning: no second line about the same files


def test_many_unreadable_images_are_warned_about_by_name_only_five_times(tmp_path):
    _write_images(tmp_path, 1)
    for i in range(1, 9):
        (tmp_path / f"img_{i:02d}.png").write_bytes(b"broken")
    source = open_source(str(tmp_path))
    events = []
    source.on_event = events.append
    assert len(list(source)) == 1
    assert len(events) == 5 and events[-1].endswith("; further ones are only counted")
    assert "skipped 8 unreadable image(s)" in source.notices[0]


def test_a_source_of_unreadable_images_only_is_an_error(tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    source = open_source(str(tmp_path))
    with pytest.raises(SourceError, match="cannot read any image of") as info:
        list(source)
    assert "\n" not in str(info.value)


def test_synthetic_matches_scene():
    from rtseg.data.synthetic import TEST_SEED, SyntheticScene

    source = open_source("synthetic", vid_stride=2, synthetic={"width": 96, "height": 64, "num_frames": 7})
    assert isinstance(source, SyntheticSource) and source.source_id == f"synthetic:{TEST_SEED}"
    frames = list(source)
    scene = SyntheticScene(TEST_SEED, width=96, height=64, num_frames=7)
    assert len(frames) == 4
    for f, i in zip(frames, (0, 2, 4, 6)):
        assert np.array_equal(f.image, scene.frame(i)[0])
        assert f.pts == pytest.approx(i / 30)
    other = open_source("synthetic:5", synthetic={"width": 64, "height": 48, "num_frames": 1})
    assert next(other).source_id == "synthetic:5"


def test_synthetic_source_hands_out_the_truth_rendered_with_each_frame_once():
    from rtseg.data.synthetic import SyntheticScene

    def same(a, b) -> bool:
        return [(x.track_id, x.class_id) for x in a] == [(x.track_id, x.class_id) for x in b] and all(
            np.array_equal(x.mask, y.mask) for x, y in zip(a, b))

    scene = SyntheticScene(3, width=96, height=64, num_frames=7)
    source = SyntheticSource(seed=3, width=96, height=64, num_frames=7, vid_stride=3, keep_truth=True)
    frames = list(source)
    assert [f.seq for f in frames] == [0, 1, 2] and len(source._truth) == 3
    kept = source.truth(1)
    assert same(kept, scene.frame(3)[1]) and kept and 1 not in source._truth  # frame 1 is scene frame 3
    assert same(source.truth(1), kept)  # asked again: rendered again, the same
    plain = SyntheticSource(seed=3, width=96, height=64, num_frames=7)
    list(plain)
    assert plain._truth is None and same(plain.truth(6), scene.frame(6)[1])


def test_paced_source_is_live_and_keeps_the_clock():
    inner = SyntheticSource(seed=1, width=64, height=48, num_frames=12, fps=40.0)
    source = Paced(inner)
    assert source.is_live and source.fps == 40.0
    t0 = time.monotonic()
    frames = list(source)
    elapsed = time.monotonic() - t0
    assert len(frames) == 12
    assert elapsed >= 11 / 40 - 0.01
    assert [f.pts for f in frames] == pytest.approx([i / 40 for i in range(12)])
    assert {f.duration for f in frames} == {1 / 40}  # replayed at its rate: each frame lasts a period
    # a consumer that falls behind does not slow the clock: frames are due at fixed times
    source = Paced(SyntheticSource(seed=1, width=64, height=48, num_frames=8, fps=40.0))
    t0 = time.monotonic()
    for _ in source:
        time.sleep(0.05)
    assert time.monotonic() - t0 < 8 * 0.05 + 0.15


def test_realtime_paces_a_folder_at_its_nominal_rate_and_needs_a_rate(tmp_path):
    _write_images(tmp_path, 3)
    paced = open_source(str(tmp_path), realtime=True)
    assert paced.is_live and paced.fps == 25.0
    frames = list(paced)
    assert 1 <= len(frames) <= 3
    names = sorted(str(p) for p in tmp_path.glob("*.png"))
    files = [f.file for f in frames]
    assert set(files) <= set(names) and files == sorted(files)
    assert [f.file for f in open_source(str(tmp_path))] == names  # each frame names its image, paced or not
    unknown = ImageSource(sorted(tmp_path.glob("*.png")), source_id="x")
    for rate in (None, 0, float("nan"), float("inf")):  # NaN and inf were accepted as a rate
        unknown.fps = rate
        with pytest.raises(ConfigError, match="frame rate is unknown"):
            Paced(unknown)


def test_request_stop_ends_iteration():
    source = open_source("synthetic", realtime=True, synthetic={"width": 64, "height": 48, "num_frames": 1000})
    next(source)
    source.request_stop()
    with pytest.raises(StopIteration):
        next(source)


def test_camera_absent_is_a_one_line_error():
    # No camera exists on this machine: the real OpenCV capture fails to open.
    for spec in ("7", "/dev/video7"):
        with pytest.raises(SourceError, match="not present") as info:
            open_source(spec)
        assert "\n" not in str(info.value)


class _FakeCapture:
    """MOCK of cv2.VideoCapture: no webcam can run on this machine, so the read loop is fed by this stand-in.

    Delivers ``frames`` (None = a failed read), then fails forever.
    """

    def __init__(self, frames, fps=25.0):
        self._frames, self._fps, self.props, self.released = list(frames), fps, {}, False

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self._fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self._frames:
            image = self._frames.pop(0)
            return image is not None, image
        return False, None

    def release(self):
        self.released = True


def test_camera_read_loop_with_a_mock_capture():
    colour = np.full((4, 6, 3), 200, np.uint8)
    gray = np.full((4, 6), 90, np.uint8)
    fake = _FakeCapture([colour, None, gray])
    source = CameraSource("0", read_timeout=0.3, capture_factory=lambda *a: fake)
    assert source.is_live and source.fps == 25.0 and source.source_id == "camera:0"
    assert fake.props[cv2.CAP_PROP_BUFFERSIZE] == 1  # newest frame only
    first, second = next(source), next(source)  # the failed read in between is retried, not yielded
    assert first.image.shape == (4, 6, 3) and second.image.shape == (4, 6, 3)
    assert second.image[0, 0].tolist() == [90, 90, 90]  # grey converted to BGR
    with pytest.raises(SourceError, match="delivered no frame for 0.3s"):
        next(source)
    source.close()
    assert fake.released


def test_http_file_is_read_like_a_file(clip):
    """A real HTTP server on loopback serving the clip: every frame, then the end (no reconnect loop)."""
    with serving(clip.parent) as port:
        with open_source(f"http://127.0.0.1:{port}/{clip.name}", open_timeout=5) as source:
            assert not source.is_live and source.fps == pytest.approx(10.0)
            frames = list(source)
        assert len(frames) == 30 and source.reconnects == 0
        assert all(np.abs(_colour(f) - clip_colour(i)).max() < 6 for i, f in enumerate(frames))
        with pytest.raises(SourceError, match="404"):
            open_source(f"http://127.0.0.1:{port}/missing.mp4", open_timeout=5)
        # --start / --end / --vid-stride hold for an HTTP file as for a local one (were ignored)
        url = f"http://user:secret@127.0.0.1:{port}/{clip.name}"
        with open_source(url, open_timeout=5, start=1.0, end=2.0, vid_stride=2) as source:
            assert "secret" not in source.source_id
            cut = list(source)
        assert [round(f.pts, 2) for f in cut] == [1.0, 1.2, 1.4, 1.6, 1.8]
        assert all(np.abs(_colour(f) - clip_colour(10 + 2 * i)).max() < 6 for i, f in enumerate(cut))


# --- odd but valid files: orientation, stream choice, missing timestamps, imprecise seeking, damage ---

def _quadrants(width=64, height=32) -> np.ndarray:
    """BGR image with four distinct flat quadrants (red, green / blue, white): shows any turn or mirror."""
    image = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:] = (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)
    return image


def _corners(image: np.ndarray) -> list[tuple[int, ...]]:
    """Colours at the centres of the four quadrants, rounded to 0/255 (codec noise removed)."""
    h, w = image.shape[:2]
    return [tuple(int(v > 127) * 255 for v in image[y, x]) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]


def _encode(path, images, *, fmt=None, codec="libx264", fps=10, gop=None, pts=True, first=0, sar=None, times=None):
    """Encode (H, W, 3) BGR ``images`` with PyAV; ``pts=False`` leaves the frames without timestamps; ``first``: the
    first frame's timestamp, in frames (a clock that does not start at 0); ``sar``: the pixels' width over their
    height (anamorphic video), a Fraction; ``times``: each frame's timestamp in ms (variable frame rate)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if gop:
            stream.options = {"g": str(gop)}
        for k, image in enumerate(images, first):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = (k, Fraction(1, fps)) if times is None else (times[k - first], Fraction(1, 1000))
            for packet in stream.encode(frame):
                if not pts:
                    packet.pts = packet.dts = None
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _set_tkhd_matrix(path, matrix) -> None:
    """Write the display matrix into the MP4 track header, as phone cameras record their orientation."""
    import struct

    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    assert box > 0 and data[box + 4] == 0  # version 0: matrix 40 bytes after the version/flags field
    start = box + 8 + 20 + 8 + 8
    data[start:start + 36] = struct.pack(">9i", *matrix, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("matrix, expected", [
    ((0, 65536, 0, -65536, 0, 0), lambda im: np.rot90(im, -1)),  # portrait phone video: a quarter turn clockwise
    ((0, -65536, 0, 65536, 0, 0), lambda im: np.rot90(im, 1)),
    ((-65536, 0, 0, 0, -65536, 0), lambda im: im[::-1, ::-1]),  # upside down
    ((-65536, 0, 0, 0, 65536, 0), lambda im: im[:, ::-1]),  # mirrored (front camera)
])
def test_display_matrix_is_applied_like_players_do(tmp_path, matrix, expected):
    """Was: phone videos came out sideways (the rotation FFmpeg and every player apply was ignored)."""
    image = _quadrants()
    path = _encode(tmp_path / "phone.mp4", [image] * 3)
    _set_tkhd_matrix(path, matrix)
    frames = list(open_source(str(path)))
    want = expected(image)
    assert len(frames) == 3 and frames[0].image.shape == want.shape and frames[0].image.flags.c_contiguous
    assert _corners(frames[0].image) == _corners(want)


def test_plain_video_is_not_turned(tmp_path):
    image = _quadrants()
    frame = next(open_source(str(_encode(tmp_path / "plain.mp4", [image]))))
    assert _corners(frame.image) == _corners(image)


def _jpeg(image: np.ndarray, orientation: int | None = None, quality: int = 95) -> bytes:
    """JPEG of the (H, W, 3) BGR ``image`` (or (H, W) grey); with an ``orientation`` (1-8) as a camera writes it:
    pixels as the sensor saw them, the EXIF orientation tag (0x0112) saying how to show them."""
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(image[..., ::-1] if image.ndim == 3 else image).save(buffer, "JPEG", exif=exif, quality=quality)
    return buffer.getvalue()


def _motion_jpeg(path: Path, jpegs: list[bytes], fps: int = 5) -> Path:
    """An AVI of the ``jpegs`` as they are, one frame each (``ffmpeg -framerate 5 -i f%d.jpg -c copy x.avi``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuvj420p"  # (the header's; each JPEG has its own)
        for k, jpeg in enumerate(jpegs):
            packet = av.Packet(jpeg)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, k, k, Fraction(1, fps)
            container.mux(packet)
    return path


@pytest.mark.parametrize("orientation, expected", [
    (6, lambda im: np.rot90(im, -1)),  # a camera held upright: a quarter turn clockwise
    (2, lambda im: im[:, ::-1]),  # mirrored
    (5, lambda im: im.transpose(1, 0, 2)),  # mirrored and turned: rows become columns
    (1, lambda im: im),
])
def test_motion_jpeg_whose_frames_carry_exif_plays_as_its_exif_says(tmp_path, orientation, expected):
    """Was a traceback ('31 is not a valid Type': PyAV 18 knows no side data of type 31, EXIF, which its FFmpeg 8.1
    attaches to such frames), also for a photo renamed .mp4. FFmpeg 8.1 turns the EXIF orientation into a display
    matrix, which ffmpeg applies (autorotate) as rtseg applies it, and as rtseg reads the same JPEG as an image."""
    image = _quadrants()
    jpeg = _jpeg(image, orientation)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    want = expected(image)
    still = next(open_source(str(photo))).image
    assert _corners(still) == _corners(want)
    frames = list(open_source(str(_motion_jpeg(tmp_path / "photos.avi", [jpeg] * 3))))
    assert len(frames) == 3 and all(f.image.shape == want.shape and _corners(f.image) == _corners(want)
                                    for f in frames)
    renamed = tmp_path / "photo.mp4"
    renamed.write_bytes(jpeg)
    (frame,) = list(open_source(str(renamed)))
    assert _corners(frame.image) == _corners(want)


def test_a_motion_jpeg_http_camera_whose_frames_carry_exif_is_read(tmp_path):
    """An MJPEG camera over HTTP (multipart, endless) whose JPEGs carry EXIF: the same traceback at its first frame."""
    jpeg = _jpeg(_quadrants(), 6)

    def camera(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        request.end_headers()
        for _ in range(5):
            request.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                % (len(jpeg), jpeg))
            request.wfile.flush()
            time.sleep(0.05)
        time.sleep(30)  # (the connection stays open: the camera goes on)

    with LiveHttpServer(camera) as server, open_source(server.url("/video.mjpg"), open_timeout=5) as source:
        assert source.is_live
        frames = [next(source) for _ in range(2)]
    assert all(_corners(f.image) == _corners(np.rot90(_quadrants(), -1)) for f in frames)


def _disc(width: int, height: int) -> np.ndarray:
    """(height, width, 3) BGR: black with a white disc of radius height / 3 in the middle (square pixels)."""
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (width // 2, height // 2), height // 3, (255, 255, 255), -1, cv2.LINE_AA)
    return image


def _extent(image: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the bright part of ``image``."""
    ys, xs = np.nonzero(image.max(axis=2) > 127)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.mark.parametrize("sar, fmt, matrix", [
    (Fraction(2), "mp4", None),  # pixels twice as wide as tall: stored 48 wide, shown 96
    (Fraction(1, 2), "mp4", None),  # half as wide: stored 192 wide, shown 96
    (Fraction(16, 15), "matroska", None),  # DVD PAL's pixels (720x576 → 768x576)
    (Fraction(2), "mp4", (0, 65536, 0, -65536, 0, 0)),  # and a quarter turn: squared, then turned (64 wide, 96 high)
])
def test_anamorphic_video_comes_out_with_square_pixels(tmp_path, sar, fmt, matrix):
    """Was: frames as stored (a disc shown round by players came out as an ellipse to the model, the overlay, the
    JSON coordinates and the output video, which had lost the aspect and played squeezed)."""
    shown = _disc(96, 64)
    stored = cv2.resize(shown, (round(96 / sar), 64), interpolation=cv2.INTER_AREA)
    path = _encode(tmp_path / f"anamorphic.{fmt}", [stored] * 3, fmt=fmt, sar=sar)
    if matrix is not None:
        _set_tkhd_matrix(path, matrix)
    frames = list(open_source(str(path)))
    want = shown if matrix is None else np.rot90(shown, -1)
    assert len(frames) == 3 and frames[0].image.shape == want.shape and frames[0].image.flags.c_contiguous
    width, height = _extent(frames[0].image)
    assert abs(width - height) <= 2, (width, height)  # a disc again (stored: 2:1 or 1:2)
    assert np.abs(frames[0].image.astype(int) - want).mean() < 4


def test_a_pixel_aspect_ratio_beyond_reason_is_ignored(tmp_path):
    """16:1 (damaged metadata; H.264 can state up to 65535:1) would make frames 16 times wider: left as stored."""
    stored = _disc(32, 16)
    frames = list(open_source(str(_encode(tmp_path / "odd.mp4", [stored] * 2, sar=Fraction(16)))))
    assert [f.image.shape for f in frames] == [stored.shape] * 2


def _gif(width: int, height: int, *, aspect: int = 0, frames: int = 2) -> bytes:
    """A GIF animation of ``frames`` frames on a ``width`` x ``height`` canvas (the frames FFmpeg decodes are that
    size), each a 1x1 black image at its corner, 0.1 s apart; ``aspect``: the header's pixel aspect byte (pixels
    (aspect + 15) / 64 times as wide as tall; 0: square). A few dozen bytes, whatever the size."""
    import struct

    data = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, aspect) + bytes([0, 0, 0, 255, 255, 255])
    for _ in range(frames):
        data += b"\x21\xf9\x04\x00" + struct.pack("<H", 10) + b"\x00\x00"  # graphic control: 10 cs
        data += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # 1x1, LZW: clear 0 end
    return data + b"\x3b"


def _too_large(name: str, width: int, height: int, side: int) -> str:
    """The line that refuses the video ``name`` of frames ``width`` x ``height``, to be scaled to ``side`` % a side."""
    return (f"video {name} has frames of {width} x {height} pixels, over the {MAX_IMAGE_PIXELS:,} rtseg reads; "
            f"scale it down first, to {side}% a side or less (e.g. ffmpeg -i INPUT -vf "
            f"'scale=trunc(iw*0.{side}/2)*2:-2' OUTPUT)")


@pytest.mark.parametrize("width, height, aspect, shown, side", [
    (12000, 12000, 0, (12000, 12000), 96),
    (6000, 6000, 241, (24000, 6000), 96),  # pixels 4 times as wide as tall: 36 M pixels stored, 144 M shown
])
def test_a_video_whose_frames_are_over_the_image_pixel_limit_is_refused_at_open(tmp_path, width, height, aspect,
                                                                                 shown, side):
    """Was no limit: a 68-kB FFV1 file of 12000 x 12000 frames took 4.1 GB for two of them (an image that size is
    refused). Now the limit on images, from the header, before anything is decoded: one line that says what to do.
    A file, and the same served as a live stream."""
    path = tmp_path / "huge.gif"
    path.write_bytes(_gif(width, height, aspect=aspect))
    with pytest.raises(SourceError) as info:
        open_source(str(path))
    assert str(info.value) == _too_large(str(path), *shown, side)
    with LiveHttpServer(live_ts(path.read_bytes(), hold=0)) as server, pytest.raises(SourceError) as info:
        open_source(server.url("/huge.gif"), open_timeout=5)
    assert str(info.value) == _too_large(server.url("/huge.gif"), *shown, side)
    limit = tmp_path / "limit.gif"  # at the limit: read (frames 8192 x 16384 would be decoded: not here)
    limit.write_bytes(_gif(2**13, 2**14))
    open_source(str(limit)).close()


def test_a_video_whose_frames_grow_over_the_image_pixel_limit_ends_there(tmp_path):
    """Motion JPEG: every frame has its own size. Two small ones, then one of 11600 x 11600: that frame is refused
    before it is converted (it and the pipeline's copies of it took over a GB); the ones before come out."""
    small = _jpeg(np.zeros((32, 64), np.uint8))
    big = _jpeg(np.zeros((11600, 11600), np.uint8), quality=5)
    source = open_source(str(_motion_jpeg(tmp_path / "grows.avi", [small, small, big])))
    frames = [next(source), next(source)]
    with pytest.raises(SourceError) as info:
        next(source)
    source.close()
    assert [f.image.shape for f in frames] == [(32, 64, 3)] * 2
    assert str(info.value) == _too_large(str(tmp_path / "grows.avi"), 11600, 11600, 99)


def test_cover_picture_is_not_taken_for_the_video(tmp_path):
    """A file with cover art only is no video (was: a one-frame 'video' at 90000 FPS and a 'truncated' warning);
    with a video too, the video plays whichever stream comes first."""
    def write(path, with_video):
        with av.open(str(path), "w", format="mp4") as container:
            cover = container.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 32, 16, "yuvj444p"
            cover.disposition = av.stream.Disposition.attached_pic
            packets = [cover.encode(av.VideoFrame.from_ndarray(_quadrants(32, 16), format="bgr24")), cover.encode()]
            if with_video:
                video = container.add_stream("libx264", rate=10)
                video.width, video.height, video.pix_fmt = 64, 32, "yuv444p"
                frames = [av.VideoFrame.from_ndarray(_quadrants(), format="bgr24") for _ in range(5)]
                packets += [video.encode(f) for f in frames] + [video.encode()]
            for packet in chain(*packets):
                container.mux(packet)
        return path

    with open_source(str(write(tmp_path / "cover_and_video.mp4", True))) as source:
        frames = list(source)
    assert len(frames) == 5 and frames[0].image.shape == (32, 64, 3) and source.notices == []
    with pytest.raises(SourceError, match=r"no video stream in .*cover\.m4a \(only a cover picture\)"):
        open_source(str(write(tmp_path / "cover.m4a", False)))


def test_frames_without_timestamps_get_them_from_the_frame_rate(tmp_path):
    """Raw H.264 stores no timestamps: was pts None (an output timed by the wall clock) and a
    PermissionError traceback for --start (the file cannot seek)."""
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20)]
    path = _encode(tmp_path / "raw.h264", images, fmt="h264", fps=10)
    frames = list(open_source(str(path)))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(20)])
    later = list(open_source(str(path), start=1.0, end=1.5))
    assert [f.pts for f in later] == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4])
    assert np.abs(_colour(later[0]) - clip_colour(10)).max() < 6


def test_start_in_mpeg_ts_loses_no_frame(tmp_path):
    """MPEG-TS seeks land past the key frame before the target: was the first 0.4 s after --start missing."""
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(40)]
    path = _encode(tmp_path / "clip.ts", images, fmt="mpegts", codec="mpeg2video", fps=20, gop=12)
    frames = list(open_source(str(path), start=1.0, end=1.3))
    assert [f.pts for f in frames] == pytest.approx([1.0, 1.05, 1.1, 1.15, 1.2, 1.25])
    assert all(np.abs(_colour(f) - clip_colour(20 + k)).max() < 8 for k, f in enumerate(frames))


def test_damaged_middle_is_skipped_like_ffmpeg_does(tmp_path):
    """Garbage in the middle of a file: was the end of the run at the first bad packet."""
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(40)]
    path = _encode(tmp_path / "whole.mp4", images, gop=100)
    with av.open(str(path)) as container:
        where = [(p.pos, p.size) for p in container.demux(video=0) if p.size][15:18]
    data = bytearray(path.read_bytes())
    for pos, size in where:  # NAL unit lengths the decoder must reject
        data[pos:pos + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    source = open_source(str(path))
    events = []
    source.on_event = events.append
    frames = list(source)
    assert len(frames) == 37 and frames[-1].pts == pytest.approx(3.9)
    assert len(events) == 1 and "damaged data in" in events[0] and "skipping it" in events[0]
    assert len(source.notices) == 1 and "damaged packet(s) of" in source.notices[0]


def test_empty_file_is_named_as_empty(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.mp4 is empty \(0 bytes\)"):
        open_source(str(empty))


def test_standard_input_whose_writer_sends_nothing_is_named_as_empty(tmp_path):
    """``true | rtseg --source -``: FFmpeg's "invalid data ... damaged or incomplete" blamed a file (standard input
    was said to be empty only when it was /dev/null). Now one line saying that nothing came."""
    run = subprocess.run([sys.executable, "-m", "rtseg", "--source", "-", "--engine", "slic", "--no-progress",
                          "--json", str(tmp_path / "o.jsonl")], input=b"", capture_output=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (run.returncode, run.stderr.decode().splitlines()) == (2, [
        "rtseg: error: source /dev/stdin: standard input is empty (nothing was piped in); pipe a video in "
        "(producer | rtseg --source -) or give the file"]), run.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_fifo_whose_writer_sends_nothing_is_named_as_empty(tmp_path):
    """A FIFO whose writer opens it and closes it without writing: was "invalid data ... damaged or incomplete"."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)  # (waits for the reader)
    writer.start()
    with pytest.raises(SourceError) as info:
        open_source(str(fifo), read_timeout=30, reconnect_timeout=30)
    writer.join(10)
    assert str(info.value) == (f"cannot read video file {fifo}: nothing was written to it (its writer closed it "
                               "without writing); write a video to it, or give the file")


def test_http_file_without_duration_is_read_once(tmp_path):
    """A real loopback server with an MPEG-TS file (no duration in its header): was taken for a live
    stream whose end triggered a reconnection that replayed the file, forever."""
    images = [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(10)]
    _encode(tmp_path / "clip.ts", images, fmt="mpegts", codec="mpeg2video", fps=10, gop=5)
    with serving(tmp_path) as port, open_source(f"http://127.0.0.1:{port}/clip.ts", open_timeout=5) as source:
        assert not source.is_live
        frames = list(source)
    assert len(frames) == 10 and source.reconnects == 0


def test_concatenated_mpeg_ts_is_timed_on_across_the_jump_back(tmp_path):
    """Two MPEG-TS files joined (``cat a.ts b.ts``): the second's clock starts again. As FFmpeg does, its frames
    continue one frame after the first's: the recording squeezed all 20 of them into 2 ms."""
    first = _encode(tmp_path / "a.ts", [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20)],
                    fmt="mpegts", fps=10)
    second = _encode(tmp_path / "b.ts", [np.full((24, 48, 3), clip_colour(i), np.uint8) for i in range(20, 40)],
                     fmt="mpegts", fps=10)
    joined = tmp_path / "ab.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with open_source(str(joined)) as source:
        frames = list(source)
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(40)])
    assert [f.image.shape[:2] for f in frames] == [(16, 32)] * 20 + [(24, 48)] * 20
    assert np.abs(_colour(frames[25]) - clip_colour(25)).max() < 8
    assert source.notices == [f"the timestamps of {joined} jumped 1 time(s) (spliced or concatenated video): "
                              "frames were timed on across each jump"]
    with open_source(str(joined), end=2.5) as source:  # --end counts on the continuous timeline
        assert len(list(source)) == 25
    with open_source(str(joined), start=2.5) as source:  # --start too: was refused as past the header's 2 s
        frames = list(source)  # (a seek by timestamp would land in the first part, whose clock says 0.5 s)
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(25, 40)])
    assert [f.image.shape[:2] for f in frames] == [(24, 48)] * 15
    assert np.abs(_colour(frames[0]) - clip_colour(25)).max() < 8
    with pytest.raises(ConfigError, match=r"start 4\.5 s is past the end of .*ab\.ts \(4\.00 s long\)"):
        open_source(str(joined), start=4.5)


def test_a_one_period_step_back_within_one_stream_is_no_jump(tmp_path):
    """An MPEG program stream with B-frames whose demuxer steps one frame's time back by one period (small frames
    sharing a PES packet): FFmpeg's 0.1 s rule keeps it the glitch it is. A rule that took a step back of a frame
    period for a jump (tried, to time on MPEG-TS parts joined with a frame in common) shifted every later frame by
    two periods and told of a splice that is not there."""
    path = tmp_path / "b.mpg"
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.max_b_frames, stream.codec_context.gop_size = 2, 12
        rng = np.random.default_rng(0)
        for i in range(300):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with open_source(str(path)) as source:
        frames = list(source)
    assert len(frames) == 300 and frames[-1].pts == pytest.approx(299 / 25)
    assert source.notices == [] and list(sources_av.video_shifts(str(path))) == []


@pytest.fixture(scope="module")
def three_parts(tmp_path_factory) -> Path:
    """Three 2-s MPEG-TS files joined, each with its clock starting at the same time (frames 0-59 at 10 fps;
    the middle part 24x48, the others 16x32)."""
    folder = tmp_path_factory.mktemp("ts3")
    parts = [_encode(folder / f"{k}.ts", [np.full(size, clip_colour(i), np.uint8) for i in range(20 * k, 20 * k + 20)],
                     fmt="mpegts", fps=10, gop=5)
             for k, size in enumerate([(16, 32, 3), (24, 48, 3), (16, 32, 3)])]
    joined = folder / "abc.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    return joined


@pytest.mark.parametrize("start", [0.5, 1.5, 2.3, 3.5, 4.0, 5.5])
def test_start_in_any_part_of_a_concatenated_mpeg_ts_lands_there(three_parts, start):
    """Every part has the times 0-2 s of its own clock: a seek by timestamp landed in whichever part FFmpeg's
    search met first (a start in the first part gave frames of the third). The packets' times are read up to the
    start and the file entered at the right key frame's byte position."""
    with open_source(str(three_parts), start=start, end=start + 0.35) as source:
        frames = list(source)
        assert source.num_frames == 4  # counted from the packets (was None past a jump: the header's is one part's)
    first = round(start * 10)
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(first, first + 4)])
    assert [f.index for f in frames] == list(range(first, first + 4))  # entered at a byte position: numbered on
    assert all(np.abs(_colour(f) - clip_colour(first + k)).max() < 8 for k, f in enumerate(frames))
    assert {f.image.shape[:2] for f in frames} == {(24, 48) if 20 <= first < 40 else (16, 32)}


@pytest.mark.parametrize("kwargs, frames", [({}, 60), ({"start": 0.5}, 55), ({"vid_stride": 4}, 15),
                                            ({"start": 2.5, "end": 4.05}, 16)])
def test_progress_total_of_a_concatenated_mpeg_ts_counts_every_part(three_parts, kwargs, frames):
    """FFmpeg's duration of a joined MPEG-TS spans its first timestamp to its last: one part's 2 s, so the progress
    total was 20 of 60 frames (15 of 55 from 0.5 s). The packets' times are read to the end (or to ``end``)."""
    with open_source(str(three_parts), **kwargs) as source:
        assert source.num_frames == frames
        assert len(list(source)) == frames


@pytest.mark.parametrize("start, frames, first", [(0.0, 20, 0), (3.5, None, 35)])
def test_a_joined_mpeg_ts_over_the_whole_scan_size_is_read_only_to_its_start(three_parts, monkeypatch, start, frames,
                                                                              first):
    """A file over SCAN_WHOLE_BYTES (a 9-GB recording would be read for tens of seconds before its first frame) is
    scanned only up to --start: the progress total is then the header's (20 frames: one part's 2 s) or, with the
    timestamps seen jumping before the start, unknown; the start still lands in its part."""
    monkeypatch.setattr(sources_av, "SCAN_WHOLE_BYTES", three_parts.stat().st_size - 1)
    with open_source(str(three_parts), start=start) as source:
        assert source.num_frames == frames
        got = [f.pts for f in source]
    assert got == pytest.approx([i / 10 for i in range(first, 60)])


def test_a_long_scan_of_an_mpeg_ts_says_so_once_before_the_first_frame(three_parts, clip, monkeypatch, capsys):
    """Reading a large file's packet times (1 GB: seconds) printed nothing before the first frame. Here every scan is
    long (SCAN_NOTICE_S = 0: the line comes at the first packet); a file that is not scanned says nothing."""
    monkeypatch.setattr(sources_av, "SCAN_NOTICE_S", 0.0)
    size = three_parts.stat().st_size / 1e6
    with open_source(str(three_parts), start=2.5) as source:
        said = capsys.readouterr().err
        assert len(list(source)) == 35
    assert said == (f"rtseg: reading the packet times of {three_parts} ({size:,.0f} MB) before decoding it (its "
                    "timestamps may jump: spliced or joined video)\n")
    assert capsys.readouterr().err == ""
    with open_source(str(clip)) as source:  # an MP4: no timestamp jumps, no scan
        assert len(list(source)) == 30
    assert capsys.readouterr().err == ""


def test_a_joined_mpeg_ts_from_a_pipe_with_a_start_plays_from_there(three_parts, tmp_path):
    """A FIFO can be neither sought nor reopened: the source reads on and drops the frames before the start. (It
    reopened the FIFO after the seek failed, and waited for a second writer for ever.)"""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(three_parts.read_bytes()), daemon=True)
    writer.start()
    got: list = []

    def read() -> None:
        with open_source(str(fifo), start=1.0) as source:
            got.extend(f.pts for f in source)

    reader = threading.Thread(target=read, daemon=True)  # (a hang must fail the test, not the suite)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "the source hung on the pipe"
    assert got == pytest.approx([i / 10 for i in range(10, 60)])


@pytest.mark.parametrize("start, end", [(2.5, 2.6), (0.3, 4.2), (2.0, 2.1)])
def test_progress_total_of_a_joined_mpeg_ts_range_is_what_plays(three_parts, start, end):
    """Entered by a byte seek, the timeline's offset carries float noise (2.5999999999999996): the frame at ``end``
    was yielded beyond the total (3 frames for a total of 2); the end is exclusive, within that noise."""
    with open_source(str(three_parts), start=start, end=end) as source:
        frames = [f.pts for f in source]
        assert source.num_frames == len(frames) == round((end - start) * 10)


def test_progress_total_of_mpeg_ts_parts_whose_clocks_lie_far_apart(tmp_path):
    """The second part's clock a minute on (a recorder's two sessions, joined): FFmpeg's duration spans the gap,
    a progress total of 620 frames for 40."""
    parts = [_encode(tmp_path / f"{k}.ts", [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20)],
                     fmt="mpegts", fps=10, first=first) for k, first in enumerate([0, 600])]
    joined = tmp_path / "ab.ts"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    with open_source(str(joined)) as source:
        assert source.num_frames == 40
        assert [f.pts for f in source] == pytest.approx([i / 10 for i in range(40)])


def _drop_video_packets(joined: Path, first: Path, middle: Path, out: Path) -> Path:
    """``joined`` (``first`` + ``middle`` + ...) with every other 188-byte MPEG-TS packet of the video lost in the
    ``middle`` part, as a bad transfer or reception loses them."""
    with av.open(str(joined)) as container:
        pid = container.streams.video[0].id
    data, begin = joined.read_bytes(), first.stat().st_size
    stop = begin + middle.stat().st_size
    kept = [data[i:i + 188] for i in range(0, len(data), 188)
            if not (begin <= i < stop and ((data[i + 1] & 0x1F) << 8 | data[i + 2]) == pid and i // 188 % 2 == 0)]
    out.write_bytes(b"".join(kept))
    return out


def test_a_start_where_playback_of_a_damaged_joined_mpeg_ts_reaches_is_not_refused(three_parts, tmp_path):
    """Frames decoded without their references come out of order, and the timeline bridges such a step back as a
    jump: playback ends later than the packets' times (6.0 s). A start in between was refused as past the end.
    Where the demuxer flagged more damaged packets than the joins explain, only decoding tells: it decodes from the
    beginning, as a whole run does, and refuses a start past the last frame once there."""
    folder = three_parts.parent
    damaged = _drop_video_packets(three_parts, folder / "0.ts", folder / "1.ts", tmp_path / "damaged.ts")
    with open_source(str(damaged)) as source:
        whole = list(source)
    last = whole[-1].pts
    assert last > 6.2  # as this damage decodes (6.7 s with FFmpeg 8)
    start = last - 0.15
    with open_source(str(damaged), start=start) as source:  # was "past the end of ... (6.00 s long)"
        late = list(source)
    tail = [f for f in whole if f.pts >= start]
    assert [f.pts for f in late] == [f.pts for f in tail] and len(late) == 2
    assert all(np.array_equal(a.image, b.image) for a, b in zip(late, tail))
    with open_source(str(damaged), start=last + 0.05) as source:
        with pytest.raises(ConfigError, match=rf"^start {last + 0.05:g} s is past the last frame of .*damaged\.ts "
                                              rf"\(at {last:.3f} s\); choose an earlier start$"):
            list(source)


def test_live_stream_whose_clock_restarts_keeps_a_continuous_timeline(tmp_path):
    """A live HTTP MPEG-TS stream (real loopback server, no length: read as live) whose timestamps start again
    mid-connection, as a restarted encoder's do: the frames after the jump were all stamped with one time."""
    import itertools

    first = _encode(tmp_path / "a.ts", [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20)],
                    fmt="mpegts", fps=10)
    second = _encode(tmp_path / "b.ts", [np.full((16, 32, 3), clip_colour(i), np.uint8) for i in range(20, 40)],
                     fmt="mpegts", fps=10)
    body = first.read_bytes() + second.read_bytes()

    class Live(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()  # no Content-Length: a live stream
            self.wfile.write(body)
            time.sleep(10)  # the stream stays open: no end, no reconnection while the test reads

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Live)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open_source(f"http://127.0.0.1:{server.server_address[1]}/live.ts", open_timeout=5) as source:
            assert source.is_live
            frames = list(itertools.islice(source, 30))  # the first connection's (FFmpeg drops the packet
            # the splice damaged, as a live source skips damaged packets)
            assert source.reconnects == 0
    finally:
        server.shutdown()
        server.server_close()
    steps = np.diff([f.pts for f in frames])
    assert len(frames) == 30 and (steps > 0.05).all() and (steps < 0.25).all(), steps


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in Linux's /proc")
def test_decoded_frames_do_not_hold_threads_until_a_garbage_collection(tmp_path):
    """Reading ``frame.side_data`` made a reference cycle (PyAV caches it on the frame): every decoded frame, its
    buffers and the two swscale threads of its own BGR conversion lived until a GC pass — hundreds of threads and
    +60 MB/min in a live soak with reconnections. With the collector off, threads must stay flat."""
    import gc

    images = [np.full((64, 96, 3), clip_colour(i), np.uint8) for i in range(120)]
    path = _encode(tmp_path / "clip.mp4", images)
    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731 - native threads too, not only Python's
    gc.collect()
    gc.disable()
    try:
        with open_source(str(path)) as source:
            it = iter(source)
            for _ in range(10):
                next(it)
            before = threads()
            rest = sum(1 for _ in it)
            after = threads()
    finally:
        gc.enable()
    assert rest == 110 and after - before <= 4, (before, after)
