"""File and window sinks with real parts: PyAV encode -> decode round trips, SIGKILL mid-recording."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SinkError
from rtseg.types import Detections, Frame
from rtseg.video.sinks import ImageSink, JsonlSink, Mp4Sink, WindowSink
from rtseg.video.h264 import H264Encoder
from rtseg.video.sources_av import FileSource
from servers.helpers import tiny_weights

REPO = Path(__file__).resolve().parents[1]


def _frame(i: int, t: float | None, h: int = 120, w: int = 160) -> Frame:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, (i * 7) % w] = 255
    img[..., 1] = (i * 20) % 256
    return Frame(img, source_id="test", seq=i, pts=t, capture_time=100.0 + (t or 0.0))


def _decode_video(path: Path) -> tuple[av.video.stream.VideoStream, list[float], list[av.VideoFrame]]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return stream, [float(f.pts * f.time_base) for f in frames], frames


def _make_clip(path: Path, seconds: float, audio_codec: str, fps: int = 25) -> None:
    """A test clip with an H.264 video track and a sine audio track (``aac`` or ``pcm_s16le``)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream(audio_codec, rate=48000)
        a.layout = "mono"
        n_video = int(seconds * fps)
        for i in range(n_video):
            img = np.full((48, 64, 3), (i * 9) % 256, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        chunk = 1024
        total = int(seconds * 48000)
        fmt = "fltp" if audio_codec == "aac" else "s16"
        for start in range(0, total, chunk):
            t = (np.arange(start, min(start + chunk, total)) / 48000.0)
            wave = 0.3 * np.sin(2 * np.pi * 440 * t)
            data = wave.astype(np.float32) if fmt == "fltp" else (wave * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data[None], format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
            for p in a.encode(frame):
                c.mux(p)
        for s in (v, a):
            for p in s.encode(None):
                c.mux(p)


# --- MP4 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame_threads", [0, 4])
def test_mp4_round_trip_vfr_h264_yuv420p(tmp_path, frame_threads):
    out = tmp_path / "rec.mp4"
    times = [0.0, 0.04, 0.08, 0.5, 0.54, 1.7, 1.74, 1.78, 2.9, 3.0]
    sink = Mp4Sink(out, fps_hint=25, frame_threads=frame_threads)
    assert sink.partial.exists() and not out.exists()  # recording goes to the .partial file
    for i, t in enumerate(times):
        f = _frame(i, t + 5.0)  # source pts need not start at 0
        sink.write(f, None, f.image)
    sink.close()
    sink.close()  # idempotent
    assert out.exists() and not sink.partial.exists()
    stream, pts, frames = _decode_video(out)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(frames) == len(times)
    assert np.allclose(pts, times, atol=1e-3)  # irregular timing preserved
    # Content survives (the bright column of frame 3 is where it was drawn).
    img = frames[3].to_ndarray(format="bgr24")
    assert img[:, 21].mean() > img[:, 80].mean() + 100


@pytest.mark.parametrize("frame_threads", [0, 3])
def test_h264_encoder_holds_back_at_most_frame_threads_minus_one_frames(frame_threads):
    """zerolatency (the default, and the push sink's): a packet for every frame as it is encoded. With N frame
    threads x264 holds frames back, never more than N - 1 (fewer on small frames: it caps threads by the
    frame's height); flush gives the rest, one packet per frame."""
    encoder = H264Encoder(None, fps_hint=25, frame_threads=frame_threads)
    held, out = [], 0
    for i in range(12):
        out += len(encoder.encode(_frame(i, i / 25).image, i / 25))
        held.append(i + 1 - out)
    out += len(encoder.flush())
    assert out == 12
    assert (max(held) == 0) if frame_threads == 0 else (0 < max(held) <= frame_threads - 1)


@pytest.mark.parametrize("crf", [-1, 52, 100, 23.5, True, float("inf"), "23"])
def test_h264_crf_that_is_no_libx264_crf_is_one_line_before_a_file_is_made(crf, tmp_path):
    """Was passed to libx264, which encodes at -1 or 100 without a word."""
    shown = re.escape(repr(crf))
    with pytest.raises(ConfigError, match=rf"^H264Encoder: crf must be an integer in \[0, 51\], got {shown}$"):
        H264Encoder(None, fps_hint=25, crf=crf)
    with pytest.raises(ConfigError, match=rf"^Mp4Sink: crf must be an integer in \[0, 51\], got {shown}$"):
        Mp4Sink(tmp_path / "x.mp4", fps_hint=25, crf=crf)
    assert list(tmp_path.iterdir()) == []
    for good in (0, 51, np.int64(30)):
        assert len(H264Encoder(None, fps_hint=25, crf=good).encode(_frame(0, 0.0).image, 0.0)) == 1


def test_h264_slice_threads_reach_x264_and_keep_zerolatency(tmp_path):
    """slice_threads=N: x264 runs N sliced threads (its options, written into the stream's first SEI, say so)
    and still holds nothing back; a thread count of both kinds, or a negative one, is refused before a file
    is made."""
    def x264_threads(slice_threads: int) -> list[bytes]:
        encoder = H264Encoder(None, fps_hint=25, slice_threads=slice_threads)
        packets = [encoder.encode(_frame(i, i / 25, h=480, w=640).image, i / 25) for i in range(4)]
        assert all(len(p) == 1 for p in packets)  # nothing held back
        return re.findall(rb" ((?:sliced_)?threads=\d+)", bytes(packets[0][0]))

    assert x264_threads(3) == [b"threads=3", b"sliced_threads=1"]  # (x264 caps threads by the frame's height)
    assert x264_threads(1) == [b"threads=1", b"sliced_threads=0"]
    for bad in ({"frame_threads": 2, "slice_threads": 2}, {"slice_threads": -1}):
        with pytest.raises(ValueError, match="give one of them"):
            Mp4Sink(tmp_path / "x.mp4", fps_hint=25, **bad)
    assert list(tmp_path.iterdir()) == []


def test_mp4_odd_size_and_size_change(tmp_path):
    out = tmp_path / "odd.mp4"
    sink = Mp4Sink(out, fps_hint=10)
    for i in range(5):
        f = _frame(i, i / 10, h=75, w=99) if i < 3 else _frame(i, i / 10, h=80, w=120)
        sink.write(f, None, f.image)
    sink.close()
    stream, pts, frames = _decode_video(out)
    assert (frames[0].width, frames[0].height) == (100, 76)
    assert len(frames) == 5


@pytest.mark.parametrize("h, w", [(32, 16386), (16386, 32)])
def test_mp4_frames_larger_than_h264_takes_are_one_line_and_leave_no_file(tmp_path, h, w):
    """Was "write failed (Generic error in an external library); free space …" (libx264 refuses a side over 16384)
    and an empty .partial.mp4 left behind; a panorama hit it."""
    sink = Mp4Sink(tmp_path / "wide.mp4", fps_hint=10)
    frame = _frame(0, 0.0, h=h, w=w)
    with pytest.raises(SinkError, match=rf"^MP4 output .*wide\.mp4: frames of {w}x{h} are larger than H\.264 takes "
                                        r"\(at most 16384 pixels a side\); write images instead"):
        sink.write(frame, None, frame.image)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_mp4_pts_none_uses_capture_time_and_no_frames_leaves_no_file(tmp_path):
    out = tmp_path / "cap.mp4"
    sink = Mp4Sink(out, fps_hint=None)
    for i, t in enumerate([0.0, 0.1, 0.35]):
        f = Frame(_frame(i, None).image, seq=i, pts=None, capture_time=50.0 + t)
        sink.write(f, None, f.image)
    sink.close()
    assert np.allclose(_decode_video(out)[1], [0.0, 0.1, 0.35], atol=1e-3)
    empty = Mp4Sink(tmp_path / "none.mp4", fps_hint=25)
    empty.close()
    assert list(tmp_path.glob("none*")) == []


def _last_frame(path: Path) -> tuple[float, float]:
    """(duration of the last video packet, end of the video stream) of ``path``, in s."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        last = [p for p in c.demux(stream) if p.dts is not None][-1]
        return float(last.duration * last.time_base), float((stream.start_time + stream.duration) * stream.time_base)


@pytest.mark.parametrize("frame_threads", [0, 4])
@pytest.mark.parametrize("duration, shown", [(1.5, 1.5), (None, 1 / 25)])
def test_mp4_last_frame_lasts_its_duration_else_one_over_fps_hint(tmp_path, frame_threads, duration, shown):
    """``Frame.duration`` of the last frame written is how long the finished MP4 shows it (was 1 / fps_hint, as still
    where it is None: a live source's); also the last frame x264's frame threads held until the end."""
    out = tmp_path / "rec.mp4"
    sink = Mp4Sink(out, fps_hint=25, frame_threads=frame_threads)
    for i, t in enumerate([0.0, 0.04, 0.3]):
        f = replace(_frame(i, t), duration=duration if i == 2 else 0.04)
        sink.write(f, None, f.image)
    sink.close()
    assert _last_frame(out) == pytest.approx((shown, 0.3 + shown), abs=1e-4)


def _vfr_video(path: Path, times_ms: list[int], last_ms: int) -> Path:
    """An H.264 video of frames at ``times_ms`` (ms) whose last frame lasts ``last_ms`` ms (its packet's duration;
    MP4 without B-frames: there the last packet's duration is the last sample's, however the frames are ordered)."""
    ms = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"bf": "0"} if path.suffix == ".mp4" else {})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = ms
        packets = []
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = t, ms
            packets += stream.encode(frame)
        packets += stream.encode(None)
        max(packets, key=lambda p: p.pts).duration = round(Fraction(last_ms, 1000) / packets[0].time_base)
        for packet in packets:
            container.mux(packet)
    return path


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr.mp4"])
def test_a_recording_shows_the_last_frame_of_a_variable_rate_file_as_long_as_the_file(tmp_path, name):
    """The file's last frame lasts 0.9 s after frames 40 and 100 ms apart: so does the recording's (was 1 / fps_hint,
    the file's average rate)."""
    source = _vfr_video(tmp_path / name, [0, 40, 80, 120, 160, 200, 300], 900)
    out = tmp_path / "rec.mp4"
    with FileSource(str(source)) as frames:
        sink = Mp4Sink(out, fps_hint=frames.fps)
        for frame in frames:
            sink.write(frame, None, frame.image)
    sink.close()
    assert _last_frame(out) == pytest.approx((0.9, 1.2), abs=1e-3)


def test_rtseg_records_a_gif_with_its_last_frame_shown_for_its_delay(tmp_path):
    """``rtseg --source x.gif --output o.mp4`` of a GIF whose delays are 100/100/100/700 ms: the recording shows its
    last frame for 0.7 s (was 0.25 s: 1 / the GIF's average rate of 4 fps)."""
    animation = cv2.Animation()
    animation.frames = [np.full((48, 64, 3), 60 * i, np.uint8) for i in range(4)]
    animation.durations = [100, 100, 100, 700]
    ok, data = cv2.imencodeanimation(".gif", animation)
    assert ok
    gif, out = tmp_path / "x.gif", tmp_path / "o.mp4"
    gif.write_bytes(data.tobytes())
    weights = tiny_weights(tmp_path / "tiny.safetensors")
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "--source", str(gif), "--output", str(out),
                        "--no-progress", "--weights", str(weights)],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert np.allclose(_decode_video(out)[1], [0.0, 0.1, 0.2, 0.3], atol=1e-3)
    assert _last_frame(out) == pytest.approx((0.7, 1.0), abs=1e-3)


@pytest.mark.parametrize("frame_threads", [0, 4])
def test_mp4_abort_keeps_partial_only(tmp_path, frame_threads):
    """Also the frames x264's frame threads still held when the run failed."""
    out = tmp_path / "failed.mp4"
    sink = Mp4Sink(out, fps_hint=25, frame_threads=frame_threads)
    for i in range(10):
        f = _frame(i, i / 25)
        sink.write(f, None, f.image)
    sink.abort()
    sink.close()  # after abort: nothing more happens
    assert not out.exists()
    assert len(_decode_video(sink.partial)[2]) == 10


def test_mp4_user_errors(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        Mp4Sink(tmp_path / "nope" / "x.mp4", fps_hint=25)
    with pytest.raises(SinkError, match="cannot open"):
        Mp4Sink(tmp_path / "y.mp4", fps_hint=25, audio_from=str(tmp_path / "missing.mp4"))
    video_only = tmp_path / "v.mp4"
    s = Mp4Sink(video_only, fps_hint=25)
    f = _frame(0, 0.0)
    s.write(f, None, f.image)
    s.close()
    with pytest.raises(SinkError, match="has no audio track"):
        Mp4Sink(tmp_path / "y.mp4", fps_hint=25, audio_from=str(video_only))


@pytest.mark.parametrize("codec,expect", [("aac", "aac"), ("pcm_s16le", "aac")])
def test_mp4_audio_pass_through(tmp_path, codec, expect):
    src = tmp_path / ("src.mp4" if codec == "aac" else "src.mkv")
    _make_clip(src, 2.0, codec)
    out = tmp_path / "with_audio.mp4"
    sink = Mp4Sink(out, fps_hint=25, audio_from=str(src))
    start = 0.5  # the pipeline starts at source time 0.5 s: audio must be shifted to match
    for i in range(25):
        f = _frame(i, start + i / 25)
        sink.write(f, None, f.image)
    sink.close()
    with av.open(str(out)) as c:
        assert c.streams.audio and c.streams.video
        a = c.streams.audio[0]
        assert a.codec_context.name == expect
        packets = [p for p in c.demux(a) if p.pts is not None]
        first = float(packets[0].pts * a.time_base)
        last = float(packets[-1].pts * a.time_base)
        samples = np.concatenate([fr.to_ndarray().reshape(-1) for p in packets for fr in p.decode()])
    assert first < 0.05  # audio starts with the video, not 0.5 s late
    assert 0.85 < last < 1.1  # and stops with it (~1 s of video)
    if codec == "aac":  # copied, not re-encoded: the payload equals the source's from 0.5 s on
        with av.open(str(src)) as c:
            sa = c.streams.audio[0]
            src_packets = [bytes(p) for p in c.demux(sa) if p.pts is not None and p.pts * sa.time_base >= 0.5]
        assert [bytes(p) for p in packets][:5] == src_packets[:5]
    assert np.abs(samples).max() > 0.1  # a tone, not silence


_RECORDER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from rtseg.types import Frame
    from rtseg.video.coco_json import CocoJsonSink
    from rtseg.video.sink_mp4 import Mp4Sink
    from rtseg.video.sinks import JsonlSink
    from rtseg.types import Detections
    sink = Mp4Sink(sys.argv[1], fps_hint=25)
    jsonl = JsonlSink(sys.argv[2])
    coco = CocoJsonSink(sys.argv[3])
    rng = np.random.default_rng(0)
    masks = np.zeros((1, 240, 320), bool)
    masks[0, 10:20, 10:30] = True
    dets = Detections(boxes=np.array([[10, 10, 30, 20]], np.float32), scores=np.array([0.9], np.float32),
                      class_ids=np.array([0]), image_size=(240, 320), class_names=["a"], _masks=masks)
    start = time.monotonic()
    i = 0
    while True:
        img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = Frame(img, seq=i, pts=i / 25)
        sink.write(frame, None, img)
        jsonl.write(frame, Detections.empty((240, 320), ["a"]), img)
        coco.write(frame, dets, img)
        print(f"{i / 25:.3f}", flush=True)
        i += 1
        time.sleep(max(0.0, start + i / 25 - time.monotonic()))
    """
)


@pytest.mark.slow
def test_mp4_and_jsonl_survive_sigkill(tmp_path):
    """A recording killed (SIGKILL) plays up to about a second before the kill, and the JSON outputs hold whole
    records. The next sink for the same output (a 24/7 service restarted after a crash) failed with
    "crash.partial.mp4 is left from an interrupted run; move or delete it first"; now it moves the leftover aside (the
    cut COCO results made valid JSON there), says so in one warning per output, and records as usual."""
    from rtseg.errors import RtsegWarning
    from rtseg.video.coco_json import CocoJsonSink

    out, lines, results = tmp_path / "crash.mp4", tmp_path / "crash.jsonl", tmp_path / "crash.json"
    script = tmp_path / "recorder.py"
    script.write_text(_RECORDER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(lines), str(results)],
                            stdout=subprocess.PIPE, text=True)
    last = 0.0
    try:
        for line in proc.stdout:
            last = float(line)
            if last >= 3.0:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and last >= 3.0
    assert not out.exists() and not results.exists()  # never a complete-looking file at the final name
    partial = tmp_path / "crash.partial.mp4"
    _, pts, frames = _decode_video(partial)
    assert pts[-1] >= last - 1.0, f"recovered up to {pts[-1]:.2f}s of {last:.2f}s"
    assert np.all(np.diff(pts) > 0)
    records = [json.loads(x) for x in lines.read_bytes().splitlines()]  # every line is complete JSON
    assert records[-1]["seq"] >= int(last * 25) - 1
    cut = (tmp_path / "crash.partial.json").read_text()
    assert cut.endswith("}")  # (no closing bracket: not JSON)
    with pytest.warns(RtsegWarning) as said:
        sink, coco = Mp4Sink(out, fps_hint=25), CocoJsonSink(results)
    assert [str(w.message) for w in said] == [
        f"MP4 output {out}: {partial} was left by an interrupted run; moved it to "
        f"{tmp_path / 'crash.recovered-1.mp4'}",
        f"JSON output {results}: {tmp_path / 'crash.partial.json'} was left by an interrupted run; moved it to "
        f"{tmp_path / 'crash.recovered-1.json'}; added the closing ] that it lacked"]
    assert _decode_video(tmp_path / "crash.recovered-1.mp4")[1] == pts  # nothing recorded is lost
    kept = json.loads((tmp_path / "crash.recovered-1.json").read_text())
    assert (tmp_path / "crash.recovered-1.json").read_text() == cut + "]"
    assert [e["image_id"] for e in kept] == list(range(1, len(kept) + 1)) and len(kept) >= int(last * 25) - 1
    f = _frame(0, 0.0)
    sink.write(f, None, f.image)
    coco.write(f, _one_detection(class_id=0, class_names=["a"]), f.image)
    sink.close()
    coco.close()
    assert len(_decode_video(out)[1]) == 1 and [e["image_id"] for e in json.loads(results.read_text())] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crash.json", "crash.jsonl", "crash.mp4", "crash.recovered-1.json", "crash.recovered-1.mp4", "recorder.py"]


def test_a_leftover_recording_goes_to_the_lowest_free_name_and_an_empty_one_is_removed(tmp_path):
    """A failed run's recording (its lock free) is moved to ``o.recovered-N.mp4`` past the names that exist (a file
    of the user's is never replaced), with one warning; an empty leftover (a run killed before its first frame)
    holds nothing and is removed without a word. Both refused the run before."""
    from rtseg.errors import RtsegWarning

    out = tmp_path / "o.mp4"
    failed = Mp4Sink(out, fps_hint=10)
    for i in range(3):
        f = _frame(i, i / 10)
        failed.write(f, None, f.image)
    failed.abort()
    (tmp_path / "o.recovered-1.mp4").write_bytes(b"the user's")
    with pytest.warns(RtsegWarning, match=re.escape(
            f"MP4 output {out}: {tmp_path / 'o.partial.mp4'} was left by an interrupted run; moved it to "
            f"{tmp_path / 'o.recovered-2.mp4'}")):
        Mp4Sink(out, fps_hint=10).abort()  # (no frame: no file)
    assert len(_decode_video(tmp_path / "o.recovered-2.mp4")[1]) == 3
    assert (tmp_path / "o.recovered-1.mp4").read_bytes() == b"the user's"
    (tmp_path / "o.partial.mp4").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sink = Mp4Sink(out, fps_hint=10)
    f = _frame(0, 0.0)
    sink.write(f, None, f.image)
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "o.recovered-1.mp4", "o.recovered-2.mp4"]


def test_outputs_named_as_rtseg_names_a_file_being_written_are_refused(tmp_path):
    """``k9.partial.mp4`` as an output was accepted and replaced the recording that a crash left of ``k9.mp4``."""
    from rtseg.video.coco_json import CocoJsonSink

    leftover = tmp_path / "k9.partial.mp4"
    leftover.write_bytes(b"a crashed run's recording")
    for make, name, what, written in ((lambda p: Mp4Sink(p, fps_hint=10), "k9.partial.mp4", "MP4 output", "k9.mp4"),
                                      (CocoJsonSink, "r.partial.json", "JSON output", "r.json")):
        with pytest.raises(SinkError) as refused:
            make(tmp_path / name)
        assert str(refused.value) == (f"{what} {tmp_path / name}: a .partial name is rtseg's for {written} while "
                                      "that is written (an interrupted run leaves it); choose another name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k9.partial.mp4"]
    assert leftover.read_bytes() == b"a crashed run's recording"


def test_a_leftover_that_is_no_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "o.partial.mp4").mkdir()
    with pytest.raises(SinkError, match=re.escape(
            f"MP4 output {tmp_path / 'o.mp4'}: o.partial.mp4 is left from an interrupted run, but is no file rtseg "
            "wrote (a folder, link or device); move or delete it")):
        Mp4Sink(tmp_path / "o.mp4", fps_hint=10)


# --- image, JSON Lines, window -----------------------------------------------------------------


def test_image_sink_png_and_jpg(tmp_path):
    f = _frame(2, 0.0)
    for name in ("out.png", "out.jpg"):
        sink = ImageSink(tmp_path / name)
        sink.write(f, None, f.image)
        sink.close()
        back = cv2.imread(str(tmp_path / name))
        assert back.shape == f.image.shape
        assert np.abs(back.astype(int) - f.image.astype(int)).mean() < 3
    per_frame = ImageSink(tmp_path / "f_{seq:03d}.png")
    for i in range(2):
        per_frame.write(_frame(i, 0.0), None, _frame(i, 0.0).image)
    assert sorted(p.name for p in tmp_path.glob("f_*.png")) == ["f_000.png", "f_001.png"]
    assert list(tmp_path.glob(".*tmp")) == []


def test_image_sink_errors(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        ImageSink(tmp_path / "missing" / "a.png")
    with pytest.raises(SinkError, match="unknown image type"):
        ImageSink(tmp_path / "a.mp3")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match=f"{re.escape(str(blocker))} is a file, not a folder"):
        ImageSink(blocker / "a.png")  # a file where the folder should be
    bad_patterns = {"a_{seq}_{foo}.png": "{seq} is the only placeholder", "a_{seq.real}.png": "only placeholder",
                    "a_{seq:q}.png": "{seq:q}: only {seq}, {seq:d} or a zero-padded width",
                    "a_{seq.png": "expected '}'",
                    "a_{seq:>9999999999d}.png": "{seq:>9999999999d}: only", "a_{seq:0200d}.png": "above 32",
                    "a_{seq:-5d}.png": "{seq:-5d}: only", "a_{seq:5}.png": "{seq:5}: only", "a_{seq:+d}.png": "only",
                    "a_{seq: d}.png": "only", "a_{seq!r}.png": "{seq!r}: only", "a_{seq:_>5}.png": "only",
                    "a" * 246 + "_{seq}.png": "would be 261 bytes long",  # at frame 10**9
                    # escaped braces: was every frame written to one file named a_{seq}.png, without a warning
                    "a_{{seq}}.png": "({{ and }} are literal braces, so it has no {seq} field); write e.g. "
                                     "out_{seq:05d}.png"}
    for name, match in bad_patterns.items():  # refused when the output opens, not at the first frame
        with pytest.raises(SinkError, match=re.escape(match)) as info:
            ImageSink(tmp_path / name)
        assert str(info.value).startswith(f"image output {tmp_path / name}: bad {{seq}} pattern")
    with pytest.raises(SinkError, match=re.escape("{seq} is the only placeholder")):  # was a literal name
        ImageSink(tmp_path / "a_{foo}.png")
    assert not ImageSink(tmp_path / "a_{{foo}}.png").per_frame  # no field: a literal name
    assert all(ImageSink(tmp_path / name).per_frame for name in ("{seq}.png", "{seq:d}.png", "{seq:05d}.png",
                                                                 "{{{seq}}}.png"))  # (files named {0}.png ...)


def _one_detection(*, class_id: int, class_names: list[str]) -> Detections:
    """One 20×10 px box and its mask in a 160×120 frame, score 0.9."""
    masks = np.zeros((1, 120, 160), bool)
    masks[0, 10:20, 10:30] = True
    return Detections(boxes=np.array([[10, 10, 30, 20]], np.float32), scores=np.array([0.9], np.float32),
                      class_ids=np.array([class_id]), image_size=(120, 160), class_names=class_names, _masks=masks)


def test_jsonl_sink_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    sink = JsonlSink(path)
    dets = _one_detection(class_id=1, class_names=["a", "b"])
    for i in range(3):
        f = _frame(i, i / 10)
        sink.write(f, dets if i == 1 else Detections.empty((120, 160), ["a", "b"]), f.image)
    sink.close()
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["seq"] for r in recs] == [0, 1, 2]
    assert recs[1]["detections"][0]["class_name"] == "b" and recs[0]["detections"] == []


def test_jsonl_sink_into_a_fifo_whose_reader_leaves_asks_to_stop(tmp_path):
    """A named pipe as the .jsonl path (`mkfifo d.jsonl; head -1 d.jsonl`): whole lines reach the reader, and once it
    has gone the sink asks the run to stop instead of raising (a pipe cannot seek, so nothing is taken back)."""
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").readline()))
    reader.start()
    sink = JsonlSink(fifo)  # opens once the reader has
    empty = Detections.empty((120, 160), ["a"])
    for i in range(10_000):
        sink.write(_frame(i, i / 10), empty, _frame(i, i / 10).image)
        if sink.stop_requested:
            break
    reader.join(timeout=10)
    sink.close()
    assert sink.stop_requested and json.loads(got[0])["seq"] == 0



def _open_in_thread(fifo: Path, **kwargs) -> tuple[threading.Thread, list]:
    """A thread opening ``JsonlSink(fifo, **kwargs)``; its result (the sink or the exception) lands in the list."""
    result: list = []

    def open_sink() -> None:
        try:
            result.append(JsonlSink(fifo, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            result.append(exc)

    thread = threading.Thread(target=open_sink, daemon=True)
    thread.start()
    return thread, result


def test_jsonl_sink_into_a_fifo_nobody_reads_ends_with_one_line(tmp_path):
    """`mkfifo d.jsonl; rtseg … --json d.jsonl` with no reader: the open for writing waited without end, before the run
    began and without a word. Now the FIFO is waited for as long as a reader that takes no data (stall_timeout), then
    one SinkError line."""
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    thread, result = _open_in_thread(fifo, stall_timeout=0.5)
    thread.join(timeout=20)
    if thread.is_alive():  # (the old open: let it go, then fail)
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
        pytest.fail("the sink waited for a reader without end")
    assert isinstance(result[0], SinkError), result
    assert str(result[0]) == (f"JSON Lines output {fifo}: a FIFO no program opened for reading in 0.5s; start its "
                              "reader first, or write to a file")


def test_jsonl_sink_into_a_fifo_says_it_waits_and_writes_to_a_reader_that_comes_later(tmp_path, monkeypatch):
    """A reader that comes after the warning gets the lines; the descriptor is blocking again (as stdout's)."""
    import rtseg.video.sinks as sinks

    monkeypatch.setattr(sinks, "READER_WARN_S", 0.2)
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    events: list[str] = []
    thread, result = _open_in_thread(fifo, stall_timeout=30, on_event=events.append)
    deadline = time.monotonic() + 20
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events == [f"JSON Lines output {fifo}: a FIFO no program reads yet; waiting for a reader for up to 30s"]
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    thread.join(timeout=20)
    sink = result[0]
    assert isinstance(sink, JsonlSink) and os.get_blocking(sink._file.fileno())
    empty = Detections.empty((120, 160), ["a"])
    sink.write(_frame(0, 0.0), empty, _frame(0, 0.0).image)
    sink.close()
    reader.join(timeout=10)
    assert json.loads(got[0])["seq"] == 0 and sink.frames_written == 1


_FILE_LIMIT = textwrap.dedent(
    """
    import json, resource, signal, sys, numpy as np
    from rtseg.errors import SinkError
    from rtseg.types import Detections, Frame
    from rtseg.video.sinks import JsonlSink
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    sink = JsonlSink(sys.argv[1])
    masks = np.zeros((3, 120, 160), bool)
    masks[:, ::12, :] = True  # many runs: lines of a few kB
    dets = Detections(boxes=np.tile(np.array([[1, 1, 150, 110]], np.float32), (3, 1)), scores=np.ones(3, np.float32),
                      class_ids=np.zeros(3, np.int64), image_size=(120, 160), class_names=["a"], _masks=masks)
    try:
        for i in range(1000):
            sink.write(Frame(np.zeros((120, 160, 3), np.uint8), seq=i, pts=i / 10), dets, None)
    except SinkError as exc:
        print(exc)
    """
)


def test_jsonl_full_disk_keeps_only_complete_lines(tmp_path):
    """The file size limit (a full disk) hit in the middle of a line: that partial line is taken back,
    every line left parses, and the error says the earlier lines are kept."""
    script, path = tmp_path / "limit.py", tmp_path / "d.jsonl"
    script.write_text(_FILE_LIMIT)
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert "write failed" in r.stdout and "the lines before it are kept" in r.stdout, r.stdout + r.stderr
    data = path.read_bytes()
    assert data and data.endswith(b"\n")
    assert [json.loads(x)["seq"] for x in data.decode().splitlines()] == list(range(len(data.splitlines())))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_jsonl_into_a_device_fails_with_one_line_not_a_traceback(tmp_path):
    """--json on a link to a device (/dev/full: always full): the sink must not truncate it (EINVAL was
    a traceback) and a failed write is the sink's one-line error."""
    link = tmp_path / "full.jsonl"
    link.symlink_to("/dev/full")
    sink = JsonlSink(link)
    frame = Frame(np.zeros((8, 8, 3), np.uint8), source_id="t", seq=0, pts=0.0, capture_time=0.0)
    with pytest.raises(SinkError, match=r"full.jsonl: write failed \(No space left on device\)"):
        sink.write(frame, Detections.empty((8, 8), ["a"]), frame.image)
    sink.close()


def test_mp4_frames_of_another_size_are_fitted_whole_not_stretched(tmp_path):
    """An image folder of mixed sizes: a portrait frame in a landscape stream keeps its aspect ratio, centred
    between black bars (was stretched to the stream's size)."""
    path = tmp_path / "mixed.mp4"
    sink = Mp4Sink(path, fps_hint=10)
    first = Frame(np.full((120, 160, 3), 200, np.uint8), source_id="t", seq=0, pts=0.0, capture_time=0.0)
    portrait = np.full((120, 60, 3), 200, np.uint8)
    portrait[:, :30] = (0, 0, 255)  # left half red, right half grey
    second = Frame(portrait, source_id="t", seq=1, pts=0.1, capture_time=0.1)
    for f in (first, second):
        sink.write(f, Detections.empty(f.image.shape[:2], ["a"]), f.image)
    sink.close()
    _, _, frames = _decode_video(path)
    image = frames[1].to_ndarray(format="bgr24")
    assert image.shape == (120, 160, 3)
    assert image[:, :45].max() < 30 and image[:, 115:].max() < 30  # black bars, 50 px each side
    assert np.abs(image[10:110, 55:70].mean(axis=(0, 1)) - (0, 0, 255)).max() < 40  # red half, undistorted
    assert np.abs(image[10:110, 90:105].mean() - 200) < 15


def test_coco_json_sink_keeps_a_failed_runs_results_as_partial(tmp_path):
    from rtseg.video.coco_json import CocoJsonSink

    path = tmp_path / "res.json"
    sink = CocoJsonSink(path)
    dets = _one_detection(class_id=0, class_names=["a"])
    for i in range(2):
        f = _frame(i, i / 10)
        sink.write(f, dets, f.image)
    sink.abort()
    sink.abort()  # idempotent
    assert not path.exists() and sink.partial == tmp_path / "res.partial.json"
    assert [e["image_id"] for e in json.loads(sink.partial.read_text())] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.partial.json"]


def test_coco_json_sink_streams_its_entries_to_the_claimed_partial_file(tmp_path):
    """Entries reach ``res.partial.json`` frame by frame (a long run holds nothing in memory; a crash keeps
    them, short of the closing bracket); a second run on the same file is refused; no detection → ``[]``."""
    from rtseg.video.coco_json import CocoJsonSink

    path = tmp_path / "res.json"
    sink = CocoJsonSink(path)
    with pytest.raises(SinkError, match="another run is writing res.partial.json right now"):
        CocoJsonSink(path)
    dets, empty = _one_detection(class_id=0, class_names=["a"]), Detections.empty((120, 160), ["a"])
    for i, d in enumerate((empty, dets, empty, dets)):
        f = _frame(i, i / 10)
        sink.write(f, d, f.image)
        written = [e["image_id"] for e in json.loads(sink.partial.read_text() + "]")] if i else []
        assert written == [2, 4][: (i + 1) // 2]
    sink.close()
    assert [e["image_id"] for e in json.loads(path.read_text())] == [2, 4] and not sink.partial.exists()
    none = CocoJsonSink(tmp_path / "none.json")
    f = _frame(0, 0.0)
    none.write(f, empty, f.image)
    none.close()
    assert json.loads((tmp_path / "none.json").read_text()) == []


@pytest.mark.parametrize("cut, said", [
    (0, ""),
    (1, "; added the closing ] that it lacked"),
    (40, "; ended its list after the last complete entry (dropped the {dropped} bytes of a cut one)"),
    ("all but 30", "; ended its list after the last complete entry (dropped the {dropped} bytes of a cut one)"),
], ids=["complete", "no closing bracket", "cut within an entry", "cut within the first entry"])
def test_coco_results_left_by_an_interrupted_run_are_moved_aside_as_valid_json(tmp_path, cut, said):
    """A results file that a crash left (no closing ``]``, or a power loss cut within an entry: the file's last
    bytes gone) refused every next run; now the next sink moves it aside and ends its list after its last complete
    entry, so that it loads, keeping every complete entry; a failed run's (its list ended) is moved as it is."""
    from rtseg.errors import RtsegWarning
    from rtseg.video.coco_json import CocoJsonSink

    path, partial = tmp_path / "res.json", tmp_path / "res.partial.json"
    failed = CocoJsonSink(path)
    for i in range(3):
        f = _frame(i, i / 10)
        failed.write(f, _one_detection(class_id=0, class_names=["a"]), f.image)
    failed.abort()
    whole = partial.read_bytes()
    cut = len(whole) - 30 if cut == "all but 30" else cut  # ('[{"image_id":1,"category_id":1,')
    partial.write_bytes(whole[: len(whole) - cut])
    kept = {0: 3, 1: 3, 40: 2, len(whole) - 30: 0}[cut]
    with pytest.warns(RtsegWarning) as warned:
        CocoJsonSink(path).discard()
    recovered = tmp_path / "res.recovered-1.json"
    dropped = len(whole) - cut - (len(recovered.read_bytes()) - 1)
    assert [str(w.message) for w in warned] == [
        f"JSON output {path}: {partial} was left by an interrupted run; moved it to {recovered}"
        + said.format(dropped=dropped)]
    assert json.loads(recovered.read_text()) == json.loads(whole)[:kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.recovered-1.json"]


def test_coco_results_being_finished_are_no_leftover_for_a_run_starting_then(tmp_path, monkeypatch):
    """``close`` ended the list and closed the file (its claim) before moving it to its name: a run claiming the same
    output in between took the finished results for a crash's leftover, moved them aside with a false warning, and
    the first run's move then put the second's empty file at the name. Now the claim is held until the results are
    in place: a run starting in between is refused, as one starting while the results are written."""
    from rtseg.video.coco_json import CocoJsonSink

    path = tmp_path / "r.json"
    first = CocoJsonSink(path)
    f = _frame(0, 0.0)
    first.write(f, _one_detection(class_id=0, class_names=["a"]), f.image)
    replace, starts = os.replace, []

    def start_another_run_then_replace(src: Path, dst: Path) -> None:  # (the moment before close moves the file)
        with pytest.raises(SinkError, match="another") as refused:
            CocoJsonSink(path)
        starts.append(refused)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", start_another_run_then_replace)
    first.close()
    assert len(starts) == 1
    assert [e["image_id"] for e in json.loads(path.read_text())] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("end", ["close", "abort", "discard"])
def test_coco_json_sink_that_wrote_no_frame_leaves_no_file_and_an_existing_one_alone(tmp_path, end):
    """A run that failed or was stopped before its first frame: was ``[]`` in place of the earlier results (close),
    or a ``[]`` ``.partial.json`` that refused the next run (abort); now like the MP4 and image outputs."""
    from rtseg.video.coco_json import CocoJsonSink

    kept, fresh = tmp_path / "kept.json", tmp_path / "fresh.json"
    kept.write_text('[{"image_id": 1}]')
    for path in (kept, fresh):
        getattr(CocoJsonSink(path), end)()
    assert kept.read_text() == '[{"image_id": 1}]'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]  # no .partial.json to refuse the next run


def test_coco_json_category_ids_are_cocos_for_the_80_classes_and_one_based_otherwise(tmp_path):
    """Results files are scored against annotation files: the official 80 classes get COCO's own ids (stop sign,
    index 11, is category 13), other models 1..N like rtseg's COCO export; pycocotools then matches them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from rtseg.data.coco_names import COCO_CLASSES
    from rtseg.video.coco_json import CocoJsonSink

    for names, class_id, category_id in ((list(COCO_CLASSES), 11, 13), (["a", "b"], 1, 2)):
        path = tmp_path / f"res{len(names)}.json"
        sink = CocoJsonSink(path)
        f = _frame(0, 0.0)
        dets = _one_detection(class_id=class_id, class_names=names)
        sink.write(f, dets, f.image)
        sink.close()
        (entry,) = json.loads(path.read_text())
        assert (entry["category_id"], entry["category_name"]) == (category_id, names[class_id])
        gt = COCO()
        gt.dataset = {"images": [{"id": 1, "height": 120, "width": 160}],
                      "categories": [{"id": category_id, "name": names[class_id]}],
                      "annotations": [{"id": 1, "image_id": 1, "category_id": category_id, "iscrowd": 0,
                                       "segmentation": dets.rles()[0], "area": 200.0, "bbox": [10, 10, 20, 10]}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(str(path)), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)


def test_window_sink_after_pyav_was_imported_first_is_one_line_error():
    """In a process that imported PyAV before OpenCV, OpenCV's Qt window hangs (seen under Xvfb): refused in one
    line instead. A fresh interpreter, since this one imports cv2 first."""
    code = ("import av\nfrom rtseg.errors import SinkError\nfrom rtseg.video.sinks import WindowSink\n"
            "try:\n    WindowSink('x')\nexcept SinkError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DISPLAY": ":99"})
    assert r.stdout.startswith("window output: PyAV was imported before OpenCV"), r.stdout + r.stderr


def test_window_sink_on_a_display_that_is_gone_is_one_line_error(monkeypatch):
    """DISPLAY names no X server (a stale ssh -X session): OpenCV's Qt aborted the whole process (exit 134,
    outputs left unfinished); a child process tries a window first."""
    if not sys.platform.startswith("linux"):
        pytest.skip("X11 display names are Linux-only here")
    if cv2.getBuildInformation().split("GUI:", 1)[-1].split("\n", 1)[0].strip().upper() in ("NONE", ""):
        pytest.skip("this OpenCV build has no GUI (headless)")
    monkeypatch.setenv("DISPLAY", ":77")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="cannot open a window on display ':77'") as info:
        WindowSink("rtseg")
    assert "\n" not in str(info.value)


def test_window_sink_without_display_is_one_line_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection by environment is Linux-only")
    with pytest.raises(SinkError) as info:
        WindowSink("rtseg")
    assert "\n" not in str(info.value) and ("no display" in str(info.value) or "no GUI" in str(info.value))


# --- ugly conditions: folders as outputs, two runs on one output, full disks, stalled readers ----------------


def test_an_output_path_that_is_a_folder_is_refused_before_the_run(tmp_path):
    """Was: the MP4 and COCO sinks recorded the whole run, then failed at the rename (and the COCO error then
    claimed the frames were 'kept in' the folder)."""
    from rtseg.video.coco_json import CocoJsonSink

    for name, make in (("d.mp4", lambda p: Mp4Sink(p, fps_hint=25)), ("d.png", ImageSink), ("d.jsonl", JsonlSink),
                       ("d.json", CocoJsonSink)):
        (tmp_path / name).mkdir()
        with pytest.raises(SinkError, match=re.escape(f"{tmp_path / name}: is a folder; give a file name such as "
                                                      f"{tmp_path / name / ('out' + Path(name).suffix)}")):
            make(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.jsonl", "d.mp4", "d.png"]  # nothing created


def test_an_output_inside_a_file_is_said_to_be_inside_a_file_not_a_missing_folder(tmp_path):
    """Was: ``--output base.mp4/x.mp4`` with base.mp4 a file said "folder base.mp4 does not exist" (it does: as a
    file); now the line says that it is a file, also when it lies further up (``base.mp4/sub/x.mp4``)."""
    from rtseg.video.coco_json import CocoJsonSink

    base = tmp_path / "base.mp4"
    base.write_bytes(b"a recording")
    for name, make in (("x.mp4", lambda p: Mp4Sink(p, fps_hint=25)), ("x.png", ImageSink), ("x.jsonl", JsonlSink),
                       ("sub/x.json", CocoJsonSink)):
        with pytest.raises(SinkError, match=re.escape(f"{base / name}: {base} is a file, not a folder; choose "
                                                      "another path")):
            make(base / name)
    with pytest.raises(SinkError, match=re.escape(f"folder {tmp_path / 'none'} does not exist; create it")):
        JsonlSink(tmp_path / "none" / "x.jsonl")  # a missing folder is still said to be missing
    assert list(tmp_path.iterdir()) == [base] and base.read_bytes() == b"a recording"


def test_two_runs_on_one_mp4_or_jsonl_the_second_is_refused(tmp_path):
    """Was: a second JSON Lines writer truncated the first run's file (which still reported success); a second
    MP4 run was told the live recording of the first was 'left from an interrupted recording'."""
    first = Mp4Sink(tmp_path / "o.mp4", fps_hint=25)
    f = _frame(0, 0.0)
    first.write(f, None, f.image)
    with pytest.raises(SinkError, match="another run is writing o.partial.mp4 right now; choose another path"):
        Mp4Sink(tmp_path / "o.mp4", fps_hint=25)
    first.close()
    assert len(_decode_video(tmp_path / "o.mp4")[2]) == 1
    Mp4Sink(tmp_path / "o.mp4", fps_hint=25).close()  # free again once the first is done
    lines = JsonlSink(tmp_path / "o.jsonl")
    lines.write(f, Detections.empty((120, 160), ["a"]), f.image)
    with pytest.raises(SinkError, match="another run is writing it right now"):
        JsonlSink(tmp_path / "o.jsonl")
    lines.close()
    assert json.loads((tmp_path / "o.jsonl").read_text())["seq"] == 0  # not truncated by the refused second run
    JsonlSink(tmp_path / "o.jsonl").close()


def test_mp4_without_room_for_the_remuxed_copy_moves_the_finished_recording(tmp_path):
    """Finalising writes a second (faststart) copy; when that fails (a nearly full disk: the earlier behaviour
    left only ``.partial`` and exit 2 after a complete run) the finished fragmented file becomes the output."""
    out = tmp_path / "o.mp4"
    sink = Mp4Sink(out, fps_hint=25)
    (tmp_path / f".o.mp4.{os.getpid()}.tmp").mkdir()  # the remux target cannot be created
    for i in range(30):
        f = _frame(i, i / 25)
        sink.write(f, None, f.image)
    sink.close()
    assert not sink.partial.exists()
    _, pts, frames = _decode_video(out)
    assert len(frames) == 30 and pts[-1] == pytest.approx(29 / 25, abs=1e-3)


_FULL_DISK_RECORDER = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    from rtseg.errors import SinkError
    from rtseg.types import Frame
    from rtseg.video.sinks import ImageSink, Mp4Sink
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG (a full disk)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    rng = np.random.default_rng(0)
    sink = Mp4Sink(sys.argv[1], fps_hint=25)
    try:
        for i in range(10_000):
            img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            sink.write(Frame(img, seq=i, pts=i / 25), None, img)
    except SinkError as exc:
        print(i, exc)
    sink.abort()
    try:
        ImageSink(sys.argv[2]).write(Frame(img), None, rng.integers(0, 256, (800, 800, 3), dtype=np.uint8))
    except SinkError as exc:
        print(exc)
    """
)


def test_full_disk_keeps_the_recording_up_to_the_failure_and_no_half_image(tmp_path):
    script, out, image = tmp_path / "rec.py", tmp_path / "full.mp4", tmp_path / "big.png"
    script.write_text(_FULL_DISK_RECORDER)
    r = subprocess.run([sys.executable, str(script), str(out), str(image)], capture_output=True, text=True,
                       timeout=120)
    mp4_line, image_line = r.stdout.splitlines()
    failed_at = int(mp4_line.split()[0])
    assert mp4_line.endswith(f"MP4 output {tmp_path / 'full.partial.mp4'}: write failed (File too large); free space "
                             "or choose another path (the frames before it are kept in that file)"), r.stdout + r.stderr
    assert image_line == f"image output {image}: write failed (File too large); free space or choose another " \
                         "path (the images before it are kept)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.partial.mp4", "rec.py"]  # no half image, no tmp
    pts = []  # decoded as a player does: the fragment cut short by the full disk is skipped
    with av.open(str(tmp_path / "full.partial.mp4")) as c:
        for packet in c.demux(c.streams.video[0]):
            try:
                pts += [float(f.pts * f.time_base) for f in packet.decode()]
            except av.error.InvalidDataError:
                break
    assert pts[-1] >= failed_at / 25 - 1.0, f"kept up to {pts[-1]:.2f}s of {failed_at / 25:.2f}s"


_FULL_AT_CLOSE_RECORDER = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    from rtseg.errors import SinkError
    from rtseg.types import Frame
    from rtseg.video.sinks import Mp4Sink
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG (a full disk)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    rng = np.random.default_rng(0)
    sink = Mp4Sink(sys.argv[1], fps_hint=25)
    try:
        for i in range(int(sys.argv[3])):
            img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            sink.write(Frame(img, seq=i, pts=i / 25), None, img)
    except SinkError as exc:
        print("write:", exc)
    try:
        sink.close()  # close, not abort: a caller that goes on after a failed write
    except SinkError as exc:
        print("close:", exc)
    """
)


@pytest.mark.parametrize("frames, limit, failed_write", [(4, 20_000, False), (200, 150_000, True)])
def test_full_disk_at_close_is_an_error_and_leaves_the_existing_output_alone(tmp_path, frames, limit, failed_write):
    """A full disk while the last fragment is written (at close: 4 frames, all in the first fragment), or
    after a write has already failed: FFmpeg's fragmented MP4 trailer reports success after a failed write, so
    close() used to finalise the cut-off ``.partial`` file over the existing output (exit 0, an unplayable
    MP4). Now close raises, the recording stays ``.partial`` and the existing output is untouched."""
    script, out = tmp_path / "rec.py", tmp_path / "out.mp4"
    script.write_text(_FULL_AT_CLOSE_RECORDER)
    out.write_bytes(b"an earlier recording")
    r = subprocess.run([sys.executable, str(script), str(out), str(limit), str(frames)], capture_output=True,
                       text=True, timeout=120)
    partial = tmp_path / "out.partial.mp4"
    lines = r.stdout.splitlines()
    assert lines[-1] == (f"close: MP4 output {out}: writing the end of the recording failed (File too large); free "
                         f"space or choose another path (what was written before is kept in {partial})"), \
        r.stdout + r.stderr
    assert len(lines) == 1 + failed_write and lines[0].startswith("write:" if failed_write else "close:")
    assert out.read_bytes() == b"an earlier recording"
    assert partial.stat().st_size == limit  # everything up to the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.partial.mp4", "rec.py"]  # no tmp file


@pytest.mark.parametrize("stall_timeout, interrupt_after, took", [(1.0, None, (1.0, 5.0)), (30.0, 2.0, (2.0, 6.0))])
def test_jsonl_reader_that_stalls_ends_the_run_instead_of_blocking_it(tmp_path, stall_timeout, interrupt_after, took):
    """`rtseg ... --json - | reader` whose reader stops reading: was a run that neither Ctrl-C nor SIGTERM could
    end (the output thread blocked in write for ever). Now a SinkError after ``stall_timeout``, or 1 s after a
    stop request (Ctrl-C, SIGTERM: ``Pipeline.stop`` calls ``interrupt``) without waiting out the 30 s default."""
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    opened = threading.Event()

    def stalled_reader() -> None:
        with open(fifo, "rb"):
            opened.set()
            time.sleep(20)

    threading.Thread(target=stalled_reader, daemon=True).start()
    sink = JsonlSink(fifo, stall_timeout=stall_timeout)
    opened.wait(10)
    empty = Detections.empty((120, 160), ["a"])
    if interrupt_after is not None:
        threading.Timer(interrupt_after, sink.interrupt).start()
    t0 = time.monotonic()
    with pytest.raises(SinkError, match=re.escape(f"JSON Lines output {fifo}: the reader took no data for 1s")):
        for i in range(100_000):  # ~150 B lines: the pipe's 64 KiB fill after a few hundred
            sink.write(_frame(i, i / 10), empty, None)
    assert took[0] <= time.monotonic() - t0 < took[1]


def test_jsonl_closed_without_a_frame_leaves_no_new_file_and_an_old_one_as_it_was(tmp_path):
    """A run that failed before its first frame (in the pipeline, e.g. a start past the last frame) left a new
    empty .jsonl behind; only a failure before the pipeline (``discard``) removed it."""
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    old.write_text('{"seq": 0}\n')
    for path in (new, old):
        sink = JsonlSink(path)
        sink.close()
        sink.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jsonl"] and old.read_text() == '{"seq": 0}\n'
    sink = JsonlSink(new)
    for i in range(2):
        sink.write(_frame(i, i / 10), Detections.empty((120, 160), ["a"]), _frame(i, i / 10).image)
    sink.close()
    assert sink.frames_written == 2 and len(new.read_text().splitlines()) == 2


# --- outputs written whole through symbolic links; FIFOs, devices and descriptors refused ---------------------


def test_image_and_coco_json_outputs_write_through_a_symbolic_link(tmp_path):
    """Was: the rename of the finished file replaced the link itself with a regular file and left its target
    stale; now the link stays and its target (created when missing) gets the output."""
    from rtseg.video.coco_json import CocoJsonSink

    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(b"stale")
    (real / "res.json").write_text("stale")
    links = {name: tmp_path / name for name in ("a.png", "res.json", "new.png", "f_001.png")}
    links["a.png"].symlink_to(real / "a.png")
    links["res.json"].symlink_to(real / "res.json")
    links["new.png"].symlink_to(real / "new.png")  # dangling: its target is made
    links["f_001.png"].symlink_to(real / "f_001.png")  # one frame's file of a {seq} pattern
    f = _frame(1, 0.0)
    for sink in (ImageSink(links["a.png"]), ImageSink(links["new.png"]), ImageSink(tmp_path / "f_{seq:03d}.png")):
        sink.write(f, None, f.image)
        sink.close()
    coco = CocoJsonSink(links["res.json"])
    coco.write(f, _one_detection(class_id=0, class_names=["a"]), f.image)
    coco.close()
    assert all(link.is_symlink() for link in links.values())
    for name in ("a.png", "new.png", "f_001.png"):
        assert cv2.imread(str(real / name)).shape == f.image.shape, name
    assert [e["image_id"] for e in json.loads((real / "res.json").read_text())] == [2]
    assert sorted(p.name for p in real.iterdir()) == ["a.png", "f_001.png", "new.png", "res.json"]  # no .partial


def test_image_and_coco_json_outputs_refuse_a_fifo_a_device_or_a_descriptor_before_the_run(tmp_path):
    """Was: the rename at the first frame (image) or at the end (COCO results) replaced a FIFO, a device node or
    the link /dev/stdout (for every program of the machine, as root) with a regular file."""
    from rtseg.video.coco_json import CocoJsonSink

    fifo_png, fifo_json = tmp_path / "f.png", tmp_path / "f.json"
    os.mkfifo(fifo_png)
    os.mkfifo(fifo_json)
    stdout_png, stdout_json, loop = tmp_path / "o.png", tmp_path / "o.json", tmp_path / "loop.png"
    stdout_png.symlink_to("/proc/self/fd/1")
    stdout_json.symlink_to("/dev/stdout")
    loop.symlink_to(loop)
    cases = [(ImageSink, fifo_png, "image output", "is a FIFO, not a regular file"),
             (CocoJsonSink, fifo_json, "JSON output", "is a FIFO, not a regular file"),
             (ImageSink, stdout_png, "image output", "names an open descriptor, not a file"),
             (CocoJsonSink, stdout_json, "JSON output", "names an open descriptor, not a file"),
             (ImageSink, loop, "image output", "a symbolic link that loops")]
    for make, path, what, problem in cases:
        with pytest.raises(SinkError, match=f"^{re.escape(f'{what} {path}: {problem}')}"):
            make(path)
    assert all(p.is_fifo() for p in (fifo_png, fifo_json)) and stdout_png.is_symlink() and stdout_json.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.png", "loop.png", "o.json", "o.png"]


def test_image_and_coco_json_outputs_refuse_a_device_node(tmp_path):
    """``--output null.png`` naming a character device (1, 3: /dev/null's): refused, the node left as it was."""
    from rtseg.video.coco_json import CocoJsonSink

    for name, make in (("null.png", ImageSink), ("null.json", CocoJsonSink)):
        node = tmp_path / name
        try:
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:
            pytest.skip("this user cannot make a device node here")
        with pytest.raises(SinkError, match=re.escape(f"{node}: is a character device, not a regular file")):
            make(node)
        assert node.is_char_device()


def test_mp4_output_writes_through_a_symbolic_link_and_refuses_a_fifo(tmp_path):
    """Was: the final rename of the finished recording replaced a link ``out.mp4 -> real/out.mp4`` with a regular
    file (its target left stale), and a FIFO named out.mp4 with a file; now the link stays and its target gets the
    recording, and a FIFO is refused before anything is written (as the image and COCO outputs do)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "out.mp4").write_bytes(b"stale")
    link = tmp_path / "out.mp4"
    link.symlink_to(real / "out.mp4")
    sink = Mp4Sink(link, fps_hint=10)
    for i in range(3):
        f = _frame(i, i / 10)
        sink.write(f, None, f.image)
    sink.close()
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == ["out.mp4"]
    with av.open(str(real / "out.mp4")) as recording:
        assert sum(1 for _ in recording.decode(video=0)) == 3
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    with pytest.raises(SinkError, match=r"^MP4 output .*fifo\.mp4: is a FIFO, not a regular file"):
        Mp4Sink(fifo, fps_hint=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.mp4", "out.mp4", "real"]


def test_image_output_through_a_link_is_encoded_as_the_name_given_says(tmp_path):
    """A link ``latest.png -> snapshot`` (no suffix) or ``b.png -> real.jpg``: the encoder was chosen by the
    target's suffix, an OpenCV traceback for none, JPEG bytes for a .png asked for; now the type of the name given."""
    (tmp_path / "latest.png").symlink_to(tmp_path / "snapshot")
    (tmp_path / "b.png").symlink_to(tmp_path / "real.jpg")
    f = _frame(1, 0.0)
    for link in ("latest.png", "b.png"):
        sink = ImageSink(tmp_path / link)
        sink.write(f, None, f.image)
        sink.close()
    for target in ("snapshot", "real.jpg"):
        assert (tmp_path / target).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", target
