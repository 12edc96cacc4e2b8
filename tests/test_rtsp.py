"""Live streams through real servers on loopback, started by the tests.

RTSP: GStreamer's gst-rtsp-server serves scrolling SMPTE colour bars as H.264.
The tests kill and restart it (with another resolution) mid-run, freeze it, and
check that the pipeline reconnects and carries on without ever passing a black,
grey or repeated frame. RTMP: the FFmpeg CLI as a one-client RTMP server.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.video.metrics import Metrics
from rtseg.video.pipeline import Pipeline
from rtseg.video.sources import open_source
from servers.helpers import ListSink, RtspServer, free_port, rtsp_server_available, tiny_engine, wait_listening

_missing = rtsp_server_available()
needs_gst = pytest.mark.skipif(_missing is not None, reason=str(_missing))


def _identity(image, prediction, *, hud=None):
    return image


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _assert_real_frames(sink: ListSink) -> None:
    """Every frame shows the colour bars (not black, not a flat grey) and none repeats the previous one."""
    prev = None
    for frame in sink.frames:
        img = frame.image
        assert img.mean() > 60, f"frame {frame.seq} is (nearly) black: mean {img.mean():.1f}"
        assert img.std() > 40, f"frame {frame.seq} is flat (grey/concealed): std {img.std():.1f}"
        if prev is not None and prev.shape == img.shape:
            assert not np.array_equal(prev, img), f"frame {frame.seq} repeats the previous frame (stale)"
        prev = img


@pytest.fixture
def server():
    srv = RtspServer(free_port()).start()
    yield srv
    srv.stop()


@needs_gst
def test_stream_frames_pts_and_fps(server):
    with open_source(server.url) as source:
        assert source.is_live and source.fps == pytest.approx(30.0)
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 20:
                break
    assert [f.seq for f in frames] == list(range(20))
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0) and np.diff(pts).mean() == pytest.approx(1 / 30, abs=0.01)


@needs_gst
def test_a_camera_with_an_audio_track_gives_its_video_with_the_audio_discarded():
    """IP cameras send audio too (here A-law beside the H.264): the video comes at its rate, real frames, and the
    demuxer is told to drop the audio instead of handing every audio packet over to be skipped."""
    srv = RtspServer(free_port(), width=160, height=120, audio=True).start()
    try:
        with open_source(srv.url, open_timeout=5, read_timeout=3) as source:
            kinds = {s.type: s.discard.name for s in source._container.streams}
            sink = ListSink()
            for frame in source:
                sink.frames.append(frame)
                if len(sink.frames) == 30:
                    break
    finally:
        srv.stop()
    assert kinds == {"video": "default", "audio": "all"}
    assert all(f.image.shape == (120, 160, 3) for f in sink.frames)
    pts = np.array([f.pts for f in sink.frames])
    assert np.diff(pts).mean() == pytest.approx(1 / 30, abs=0.01)
    _assert_real_frames(sink)


@needs_gst
def test_file_only_options_are_refused_for_a_live_stream(server):
    """--start / --end / --vid-stride / --realtime mean nothing for a live stream: one line (were ignored)."""
    for options in ({"start": 1.0}, {"end": 5.0}, {"vid_stride": 2}, {"realtime": True}):
        with pytest.raises(ConfigError, match="is a live stream: --vid-stride, --start, --end and --realtime apply to"):
            open_source(server.url, open_timeout=5, **options)


@needs_gst
def test_pipeline_reconnects_after_server_restart_with_new_resolution(server):
    source = open_source(server.url, open_timeout=5, read_timeout=2, reconnect_timeout=30)
    events: list[str] = []
    source.on_event = events.append
    sink = ListSink()
    metrics = Metrics(warmup_frames=0)
    pipeline = Pipeline(source=source, engine=tiny_engine(), sinks=[sink], annotator=_identity, metrics=metrics)
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _run(pipeline, errors), daemon=True)
    runner.start()
    _wait(lambda: len(sink) >= 10, 30, "frames before the restart")
    server.stop()
    before = len(sink)
    time.sleep(1.0)
    server.width, server.height = 352, 288
    server.start()
    _wait(lambda: len(sink) > before and sink.frames[-1].image.shape == (288, 352, 3) and
          sum(f.image.shape[0] == 288 for f in sink.frames) >= 10, 40, "frames after the restart")
    pipeline.stop()
    runner.join(15)
    assert not runner.is_alive(), "pipeline did not stop"
    assert not errors, errors
    shapes = [f.image.shape for f in sink.frames]
    switch = shapes.index((288, 352, 3))
    assert switch >= 10 and all(s == (240, 320, 3) for s in shapes[:switch])
    assert all(s == (288, 352, 3) for s in shapes[switch:])
    assert source.reconnects == 1 and metrics.reconnects == 1
    assert len(events) == 2 and "lost" in events[0] and "reconnecting for up to 30s" in events[0], events
    assert events[1].startswith(f"stream {source.source_id} back after") and "(reconnection 1)" in events[1]
    pts = [f.pts for f in sink.frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), "pts must keep increasing across the reconnection"
    _assert_real_frames(sink)
    assert sink.closed


def _run(pipeline: Pipeline, errors: list) -> None:
    try:
        pipeline.run()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


@needs_gst
def test_stalled_stream_is_detected_and_reconnected(server):
    """SIGSTOP freezes the server with its connection open: the read timeout must notice and reconnect.

    Frames whose data was already received before the freeze may still come out (those the decoder holds when the
    read timeout ends the connection too; one it held through the stall, given only with a later packet, a second
    late, may be skipped as stale); after that, nothing until the server runs again, and then only new frames.
    """
    source = open_source(server.url, open_timeout=3, read_timeout=1, reconnect_timeout=30)
    frames, reconnects = [], []
    for frame in source:
        frames.append(frame)
        reconnects.append(source.reconnects)
        if len(frames) == 10:
            server.proc.send_signal(signal.SIGSTOP)
            threading.Timer(2.5, server.proc.send_signal, (signal.SIGCONT,)).start()
            stalled_at = time.monotonic()
            reconnects_at_stall = source.reconnects
        if len(frames) == 30:
            break
    source.close()
    assert reconnects_at_stall == 0 and source.reconnects == 1
    resumed = reconnects.index(1)  # the first frame of the new connection
    assert frames[resumed].capture_time - stalled_at > 2.5, "no frame may come from the frozen server"
    in_flight = 30 * np.diff([f.pts for f in frames[9:resumed]])  # in frame periods
    assert resumed - 10 <= 10 and np.all(np.abs(in_flight - np.round(in_flight)) < 0.3), in_flight
    assert np.all(in_flight > 0.5) and np.sum(np.round(in_flight) - 1) <= 1, \
        f"during the freeze only the next few frames (already received) may come out, in order: {in_flight}"
    assert frames[resumed].pts - frames[resumed - 1].pts > 2.0, "after the stall the stream must resume with new frames"
    images = [f.image for f in frames]
    assert all(img.mean() > 60 and img.std() > 40 for img in images)
    assert not any(np.array_equal(a, b) for a, b in zip(images, images[1:])), "a frame was repeated"


@needs_gst
def test_a_run_that_starts_reading_late_begins_with_a_current_frame(server):
    """rtseg connects to the camera (opening the source), then loads the engine: seconds in which the camera's
    frames pile up unread. The run skips that backlog: its frames come at the stream's pace from the first on, the
    recording timed from there. Was: the frame read at connection came first, frozen for the start-up (pts 0; the
    next one written, 0.1 s later, at pts 1.7: the decoder was still reading the backlog in a burst)."""
    engine = tiny_engine()
    source = open_source(server.url, open_timeout=5)
    time.sleep(3)  # (the engine loading)
    sink = ListSink(keep_images=False)
    Pipeline(source=source, engine=engine, sinks=[sink], annotator=_identity, max_frames=5).run()
    pts, captured = np.array([f.pts for f in sink.frames]), np.array([f.capture_time for f in sink.frames])
    assert sink.frames[0].seq == 0 and pts[0] == 0.0
    assert np.all(np.diff(pts) < 2 * np.diff(captured) + 0.3), (pts, captured - captured[0])


#: Reads the RTSP stream argv[1], printing each frame's pts and capture time (s).
_READER = ("import sys; from rtseg.video.sources import open_source\n"
           "for f in open_source(sys.argv[1]): print(f.pts, f.capture_time, flush=True)\n")


@needs_gst
def test_a_reader_stopped_for_seconds_goes_on_with_current_frames(server):
    """The reading process is stopped (SIGSTOP) for 3 s, the server sending on meanwhile: after SIGCONT it hands on
    current frames (the stream's time jumps the 3 s), not the backlog (capture time minus pts stays as it was). Was:
    the frames read at once after the stop, the oldest first (capture time minus pts 3 s more)."""
    reader = subprocess.Popen([sys.executable, "-c", _READER, server.url], stdout=subprocess.PIPE, text=True)
    try:
        lines = [reader.stdout.readline() for _ in range(15)]
        reader.send_signal(signal.SIGSTOP)
        time.sleep(3)
        reader.send_signal(signal.SIGCONT)
        lines += [reader.stdout.readline() for _ in range(15)]
    finally:
        reader.kill()
        reader.wait()
    pts, captured = np.array([[float(x) for x in line.split()] for line in lines]).T
    late = captured - pts
    assert np.max(np.diff(pts)) > 2.0, pts  # the stop is skipped over
    assert np.all(late - late.min() < 1.5), late - late.min()


@needs_gst
def test_credentials_are_never_shown():
    srv = RtspServer(free_port(), user="alice", password="s3cretpw").start()
    try:
        with open_source(srv.url) as source:
            assert "s3cretpw" not in source.source_id and "alice" not in source.source_id
            frame = next(iter(source))
            assert "s3cretpw" not in frame.source_id
        bad = srv.url.replace("s3cretpw", "wrongpw99")
        with pytest.raises(SourceError) as info:
            open_source(bad, open_timeout=5)
        assert "wrongpw99" not in str(info.value) and "alice" not in str(info.value)
    finally:
        srv.stop()


@needs_gst
def test_gives_up_when_the_stream_stays_down(server):
    source = open_source(server.url, open_timeout=2, read_timeout=1, reconnect_timeout=2)
    it = iter(source)
    next(it)
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="not back after 2s"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 15
    source.close()


def _ffmpeg_rtmp_server(port: int, *, sar: str = "1") -> subprocess.Popen:
    """FFmpeg as a one-client RTMP server (``-listen 1``) sending a live 30 FPS test pattern (pixels ``sar`` times
    as wide as tall)."""
    return subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=30",
         "-vf", f"setsar={sar}", "-c:v", "libx264", "-tune", "zerolatency", "-g", "15", "-f", "flv", "-listen", "1",
         f"rtmp://127.0.0.1:{port}/live/test"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI missing (apt-get install ffmpeg)")
def test_rtmp_stream_reconnects_after_the_server_restarts():
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/test"
    server = _ffmpeg_rtmp_server(port)
    try:
        wait_listening(port)  # a first connection refused is an error at once (a wrong URL)
        source = open_source(url, open_timeout=10, read_timeout=2, reconnect_timeout=20)
        assert source.is_live and source.fps == pytest.approx(30.0)
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 20:
                server.kill()
                server.wait()
                server = _ffmpeg_rtmp_server(port)
            if len(frames) == 50:
                break
        source.close()
    finally:
        server.kill()
        server.wait()
    assert source.reconnects == 1
    assert all(f.image.shape == (120, 160, 3) and f.image.std() > 20 for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI missing (apt-get install ffmpeg)")
def test_an_anamorphic_live_stream_comes_out_with_square_pixels():
    """A stream whose pixels are twice as wide as tall (SAR 2:1 in the H.264 stream) comes as players show it,
    320x120, as a file does (it came as stored, 160x120: shapes squashed for the model and the recording)."""
    port = free_port()
    server = _ffmpeg_rtmp_server(port, sar="2")
    try:
        wait_listening(port)
        with open_source(f"rtmp://127.0.0.1:{port}/live/test", open_timeout=10, read_timeout=5) as source:
            frames = [frame for frame, _ in zip(source, range(5))]
    finally:
        server.kill()
        server.wait()
    assert [f.image.shape for f in frames] == [(120, 320, 3)] * 5
