"""Push sink against a real receiving server on loopback (Debian's ffmpeg binary as RTMP/RTSP listener)."""
from __future__ import annotations

import errno
import gc
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import ConfigError, SinkError
from rtseg.types import Frame
from rtseg.video.pipeline import Pipeline
from rtseg.video.sink_push import PushSink
from rtseg.video.sinks import JsonlSink, Mp4Sink
from rtseg.video.sources import Paced, SyntheticSource
from servers.helpers import FFMPEG, free_port, make_clip, push_receiver, tiny_engine, wait_listening

REPO = Path(__file__).resolve().parents[1]


def _bar(i: int) -> np.ndarray:
    """Frame ``i`` of the test clip: black, with a white column at x = 2i mod 128."""
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, (i * 2) % 128] = 255
    return img


def _feed_until(sink: PushSink, start: int, done, timeout: float, image=_bar) -> int:
    """Write frames ``image(start), image(start+1), …`` (pts i/25, about 50 a second) until ``done()``; the
    next index."""
    deadline = time.monotonic() + timeout
    i = start
    while not done():
        assert time.monotonic() < deadline, "timed out"
        img = image(i)
        sink.write(Frame(img, seq=i, pts=i / 25), None, img)
        i += 1
        time.sleep(0.02)
    return i


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_to_real_server(tmp_path, scheme):
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/live/cam"
    received = tmp_path / ("got.flv" if scheme == "rtmp" else "got.mkv")
    server = push_receiver(scheme, url, received)
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25)
        for i in range(50):
            img = _bar(i)
            sink.write(Frame(img, seq=i, pts=i / 25), None, img)
        sink.close()
        assert sink.sent == 50
        _, err = server.communicate(timeout=15)  # the session's end is the receiver's input's end: it finishes
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    with av.open(str(received)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert stream.codec_context.name == "h264", err
    assert (frames[0].width, frames[0].height) == (128, 96)
    assert len(frames) == 50  # close() ends the session only once the server has every frame
    img = frames[10].to_ndarray(format="bgr24")
    assert img[:, 20].mean() > img[:, 80].mean() + 100  # the moving bar of frame 10 is at x=20


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_works_in_a_process_with_many_open_files(tmp_path):
    """The sender's socket numbered above 1023 (a process with many files open): select() refused it."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs a descriptor limit of at least 1200 (ulimit -n)")
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25)
        for i in range(20):
            sink.write(Frame(_bar(i), seq=i, pts=i / 25), None, _bar(i))
        sink.close()
        assert sink.sent == 20
    finally:
        for fd in held:
            os.close(fd)
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=15)


def test_push_errors():
    with pytest.raises(SinkError, match="unsupported scheme 'http'"):
        PushSink("http://127.0.0.1:1/x")
    sink = PushSink(f"rtmp://127.0.0.1:{free_port()}/live/x")  # nobody listens there
    events: list[str] = []
    sink.on_event = events.append
    img = np.zeros((32, 32, 3), np.uint8)
    t0 = time.monotonic()
    with pytest.raises(SinkError, match=r"send failed \(Connection refused\)"):  # by the first write: it connects
        sink.write(Frame(img, pts=0.0), None, img)
    took = time.monotonic() - t0
    with pytest.raises(SinkError, match=r"send failed \(Connection refused\)"):
        sink.close()
    sink.close()  # (once)
    assert events == [] and took < 1.0  # a first connection refused is not retried


def test_a_push_refused_at_its_first_connection_leaves_earlier_outputs_as_they_were(tmp_path):
    """A wrong or dead --push URL is a start-up error, as a busy --serve port is: one line, exit 2, and the
    recordings of an earlier run are as they were. (The other outputs had recorded meanwhile: a.jsonl was emptied
    and the MP4's stub renamed over a.mp4, "...; the 3 frames written before it are kept in a.mp4, a.jsonl".)"""
    clip = make_clip(tmp_path / "clip.mp4", frames=30, width=96, height=64)
    earlier = {"a.mp4": b"an earlier recording", "a.jsonl": b'{"seq":0}\n'}
    for name, data in earlier.items():
        (tmp_path / name).write_bytes(data)
    url = f"rtmp://127.0.0.1:{free_port()}/live/cam"  # nobody listens there
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "--source", str(clip), "--engine", "slic", "--output",
                        str(tmp_path / "a.mp4"), "--json", str(tmp_path / "a.jsonl"), "--push", url, "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (r.returncode, r.stderr) == (2, f"rtseg: error: push output {url}: send failed (Connection refused); is "
                                           "the server running and accepting this path?\n"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.mp4", "clip.mp4"]
    assert {name: (tmp_path / name).read_bytes() for name in earlier} == earlier


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_a_push_lost_for_good_mid_run_keeps_what_was_recorded(tmp_path):
    """The other side of the rule above: a push that carried frames and is then lost for good (no reconnecting)
    ends the run with its line, and the recordings are finished with every frame written before, as after any
    output's failure mid-run."""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    outcome: dict = {}
    try:
        wait_listening(port)
        push = PushSink(url, fps_hint=30, reconnect_timeout=0)
        sinks = [Mp4Sink(tmp_path / "a.mp4", fps_hint=30), JsonlSink(tmp_path / "a.jsonl"), push]
        source = Paced(SyntheticSource(seed=1, width=96, height=64, num_frames=900, fps=30))
        pipeline = Pipeline(source=source, engine=tiny_engine(), sinks=sinks)

        def run() -> None:
            try:
                pipeline.run()
            except BaseException as exc:
                outcome["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while push.sent < 10:
            assert time.monotonic() < deadline and runner.is_alive(), ("no frames pushed", outcome)
            time.sleep(0.05)
    finally:
        server.kill()
        server.wait(10)
    runner.join(60)
    assert not runner.is_alive(), "the run did not end"
    assert isinstance(outcome.get("error"), SinkError), outcome
    assert str(outcome["error"]).startswith(f"push output {url}: send failed ("), outcome
    with av.open(str(tmp_path / "a.mp4")) as c:
        recorded = sum(1 for _ in c.decode(video=0))
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert recorded == len(lines) >= 10 and not (tmp_path / "a.partial.mp4").exists(), (recorded, len(lines))


@pytest.mark.parametrize("crf", [-1, 52, 18.0, False, float("nan")])
def test_push_crf_that_is_no_libx264_crf_is_one_line_before_connecting(crf):
    """Was taken, and handed to libx264 (which encodes at -1 or 52 without a word) only at the first frame."""
    with pytest.raises(ConfigError, match=rf"^PushSink: crf must be an integer in \[0, 51\], got "
                                          rf"{re.escape(repr(crf))}$"):
        PushSink(f"rtmp://127.0.0.1:{free_port()}/live/x", crf=crf)


def test_push_errors_hide_credentials():
    with pytest.raises(SinkError) as e:
        PushSink("ftp://user:secret@cam.local:554/s")
    assert "secret" not in str(e.value) and "cam.local:554" in str(e.value)


@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_to_a_host_name_that_does_not_resolve_says_so(scheme):
    """Was 'send failed (Input/output error); is the server running and accepting this path?': FFmpeg's words for
    a host name its DNS lookup did not find (.invalid never resolves: RFC 6761)."""
    sink = PushSink(f"{scheme}://bob:hunter2@cam.invalid:1935/live/x")
    img = np.zeros((32, 32, 3), np.uint8)
    line = (rf"push output {scheme}://\*\*\*@cam\.invalid:1935/live/x: host 'cam\.invalid' not found \(DNS lookup "
            r"failed: [^()]+\); check the name in the URL")
    with pytest.raises(SinkError) as info:  # by the first write: it connects
        sink.write(Frame(img, pts=0.0), None, img)
    assert re.fullmatch(line, str(info.value)), str(info.value)
    with pytest.raises(SinkError, match=line):
        sink.close()


@pytest.mark.parametrize("url, line", [
    ("rtsp://[bad", "push output rtsp://[bad: cannot parse URL (Invalid IPv6 URL); write it as "
                    "scheme://host:port/path (an IPv6 host in brackets: [::1])"),
    ("rtmp://user:secret@[bad/live", "push output rtmp://***@[bad/live: cannot parse URL (Invalid IPv6 URL)"),
    ("rtsp:///x", "push output rtsp:///x: the URL has no host"),
    ("rtsp://127.0.0.1:-1/x", "push output rtsp://127.0.0.1:-1/x: invalid port '-1'"),
])
def test_malformed_push_urls_are_one_line_before_connecting(url, line):
    """Were urlsplit's 'ValueError: Invalid IPv6 URL' traceback, or 'send failed (Connection refused)' after
    trying to connect to no host or port -1."""
    with pytest.raises(SinkError) as info:
        PushSink(url)
    assert str(info.value).startswith(line) and "secret" not in str(info.value)


def test_push_url_scheme_is_case_insensitive():
    """'RTMP://' is 'rtmp://' (RFC 3986); was handed to FFmpeg as is, which knows no protocol 'RTMP'."""
    url = f"RTMP://127.0.0.1:{free_port()}/live/x"  # nobody listens there
    sink = PushSink(url)
    assert sink.url == "rtmp" + url[4:]
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(SinkError, match=r"send failed \(Connection refused\)"):
        sink.write(Frame(img, pts=0.0), None, img)
    with pytest.raises(SinkError, match=r"send failed \(Connection refused\)"):
        sink.close()


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_to_a_frozen_server_reconnects_instead_of_hanging(tmp_path):
    """A receiver that stops reading without closing the connection (SIGSTOP: a frozen server) is an outage
    after the stall timeout, like a closed connection: announced, reconnected (it does not come back here,
    so the run ends with the give-up error after the reconnect timeout), never blocking the pipeline (and
    Ctrl-C) for ever. (tests/test_push_stall.py: a stall followed by a working server.)"""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    rng = np.random.default_rng(0)
    events: list[str] = []
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25, stall_timeout=2.0, reconnect_timeout=2.0)
        sink.on_event = events.append
        for i in range(5):
            img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            sink.write(Frame(img, seq=i, pts=i / 25), None, img)
        time.sleep(1.0)
        server.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        outcome: list[BaseException] = []

        def feed() -> None:  # on a thread, so that a regression (a hang) fails the test instead of CI
            try:
                for i in range(5, 100_000):  # incompressible noise fills the socket buffers quickly
                    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
                    sink.write(Frame(img, seq=i, pts=i / 25), None, img)
                    time.sleep(0.01)
            except BaseException as exc:
                outcome.append(exc)
            try:
                sink.close()  # the same error, at once
            except BaseException as exc:
                outcome.append(exc)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        feeder.join(30)
        assert not feeder.is_alive(), "the push sink blocked on the frozen server"
        took = time.monotonic() - t0
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(15)
    assert len(outcome) == 2 and all(isinstance(e, SinkError) for e in outcome), outcome
    assert str(outcome[0]) == str(outcome[1]) and str(outcome[0]).startswith(
        f"push output {url} lost (the server stopped reading for 2s) and not back after 2s: "), outcome
    assert events == [f"push output {url} lost (the server stopped reading for 2s); reconnecting for up to 2s, "
                      "frames are not pushed meanwhile"], events
    assert 4.0 <= took < 15, took  # the stall (2 s after the buffers filled), then 2 s of reconnecting


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_reconnects_after_the_server_restarts(tmp_path, scheme):
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/live/cam"
    ext = "flv" if scheme == "rtmp" else "mkv"
    first = push_receiver(scheme, url, tmp_path / f"first.{ext}")
    second = None
    events: list[str] = []
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25, reconnect_timeout=20)
        sink.on_event = events.append
        i = _feed_until(sink, 0, lambda: sink.sent >= 20, 10)
        first.kill()  # the server goes away mid-run, without saying goodbye
        first.wait(10)
        t_lost = time.monotonic()
        i = _feed_until(sink, i, lambda: len(events) >= 1, 10)  # writes go on (frames dropped), no error
        lost_at, sent_before = i, sink.sent  # (over 20 when frames queued at the kill still reached the first)
        second = push_receiver(scheme, url, tmp_path / f"second.{ext}", copyts=True)  # back, on the same port
        wait_listening(port)
        i = _feed_until(sink, i, lambda: len(events) >= 2, 15)
        back_at = i
        i = _feed_until(sink, i, lambda: sink.sent >= sent_before + 30, 10)
        sink.close()  # the end of the stream: the receiver finishes its file and exits
        assert time.monotonic() - t_lost < 25
        _, err = second.communicate(timeout=15)
    finally:
        first.kill()
        if second is not None and second.poll() is None:  # the test failed before the stream ended
            second.kill()
            second.wait(10)
    assert len(events) == 2, events
    assert events[0].startswith(f"push output {url} lost (") and "reconnecting for up to 20s" in events[0], events
    assert events[1].startswith(f"push output {url} back after ") and "(reconnection 1;" in events[1], events
    assert sink.reconnects == 1 and sink.dropped > 0
    with av.open(str(tmp_path / f"second.{ext}")) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert len(frames) >= 30, err
    assert frames[0].key_frame
    # the first frame the new server got was written between the loss and the reconnection (its white column
    # tells which); every later frame shows the frame index its timestamp names
    def index(f: av.VideoFrame, candidates: range) -> int:
        x = int(f.to_ndarray(format="bgr24").mean(axis=(0, 2)).argmax())
        return next(k for k in candidates if (k * 2) % 128 == x)

    first_index = index(frames[0], range(lost_at - 1, back_at + 1))
    ref_index = index(frames[1], range(first_index + 1, back_at + 2))
    if scheme == "rtmp":  # FLV carries the sender's timestamps: they continue the run's clock
        assert [round(f.time * 25) for f in frames[:2]] == [first_index, ref_index]
    # (the RTSP receiver stamps its first frame 0, before RTCP maps RTP time: timings count from the second frame)
    for f in (frames[len(frames) // 2], frames[-1]):
        k = ref_index + round((f.time - frames[1].time) * 25)
        img = f.to_ndarray(format="bgr24")
        assert img[:, (k * 2) % 128].mean() > img.mean() + 100, k


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_wait_listening_counts_a_receiver_whose_one_client_came_first(tmp_path, scheme):
    """ffmpeg -listen closes its listening socket once its one client is accepted: wait_listening waited its whole
    timeout for a restarted receiver that the reconnecting sink had reached before it looked (under load,
    test_push_reconnects_after_the_server_restarts failed so). A receiver that is gone is still not up."""
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/live/cam"
    server = push_receiver(scheme, url, tmp_path / ("got.flv" if scheme == "rtmp" else "got.mkv"))
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25)
        _feed_until(sink, 0, lambda: sink.sent >= 1, 10)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED  # nothing listens any more
        wait_listening(port, timeout=2.0)
        sink.close()
    finally:
        server.kill()
        server.wait(10)
    with pytest.raises(TimeoutError, match=f"nothing listens on port {port}"):
        wait_listening(port, timeout=0.5)


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_gives_up_after_the_reconnect_timeout(tmp_path):
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    events: list[tuple[float, str]] = []
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25, reconnect_timeout=1.5)
        sink.on_event = lambda line: events.append((time.monotonic(), line))
        i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10)
    finally:
        server.kill()
        server.wait(10)
    with pytest.raises(SinkError) as e:
        _feed_until(sink, i, lambda: False, 15)  # nobody listens any more: every attempt is refused
    t_error = time.monotonic()
    message = str(e.value)
    assert message.startswith(f"push output {url} lost (") and "not back after 1.5s: " in message, message
    assert "Connection refused" in message and "\n" not in message
    assert len(events) == 1 and "reconnecting for up to 1.5s" in events[0][1], events
    assert 1.5 <= t_error - events[0][0] < 3.0
    with pytest.raises(SinkError) as again:
        sink.close()
    assert str(again.value) == message and time.monotonic() - t_error < 1.0


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_giving_up_on_a_host_name_that_no_longer_resolves_says_to_check_it(tmp_path):
    """The server goes away mid-run and its host name stops resolving meanwhile (a DNS record removed: here the URL
    the reconnections use is made one that never resolves, RFC 6761). The line named the DNS failure but ended 'is
    the server running?'."""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25, reconnect_timeout=1.5)
        i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10)
        sink._sender.url = url.replace("127.0.0.1", "cam.invalid")
    finally:
        server.kill()
        server.wait(10)
    with pytest.raises(SinkError) as e:
        _feed_until(sink, i, lambda: False, 15)
    line = (rf"push output {re.escape(url)} lost \(.+\) and not back after 1\.5s: host 'cam\.invalid' not found "
            r"\(DNS lookup failed: [^()]+\); check the name in the URL \(--reconnect-timeout S waits longer\)")
    assert re.fullmatch(line, str(e.value)), str(e.value)
    with pytest.raises(SinkError, match=line):
        sink.close()


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_stop_request_ends_reconnecting_at_once(tmp_path):
    """Ctrl-C / SIGTERM during an outage: the pipeline calls interrupt() (no more attempts, even when the server
    comes back), then close(), which does not wait; the outage announced by the warning is no error."""
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtsp", url, tmp_path / "first.mkv")
    events: list[str] = []
    try:
        wait_listening(port)
        sink = PushSink(url, fps_hint=25)
        sink.on_event = events.append
        i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10)
        server.kill()
        server.wait(10)
        i = _feed_until(sink, i, lambda: len(events) >= 1, 10)
        sink.interrupt()
        server = push_receiver("rtsp", url, tmp_path / "second.mkv")
        wait_listening(port)
        t_end = time.monotonic() + 2.0  # attempts would come 0.25 s, 0.75 s, 1.75 s after the loss
        _feed_until(sink, i, lambda: time.monotonic() > t_end, 5)  # frames in flight: taken, not pushed
        t0 = time.monotonic()
        sink.close()
        assert time.monotonic() - t0 < 0.5
    finally:
        server.kill()
        server.wait(10)
    assert sink.reconnects == 0 and len(events) == 1 and "reconnecting for up to 60s" in events[0], events


def _push_workers(parent: int) -> set[int]:
    """Pids of the live push worker processes (``push_worker.py``) whose parent is process ``parent`` (Linux /proc)."""
    found = set()
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read()
        except OSError:  # it ended meanwhile
            continue
        if int(ppid) == parent and state != "Z" and b"push_worker.py" in command:
            found.add(int(name))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the push process in /proc")
def test_push_sink_dropped_unclosed_ends_its_thread_and_child(tmp_path):
    """A sink a library user forgot to close is collected once dropped, and its finalizer stops the sender thread
    and ends the child holding the connection (they used to live on with the process, the thread keeping the
    sink alive)."""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    try:
        wait_listening(port)
        threads, workers = set(threading.enumerate()), _push_workers(os.getpid())
        sink = PushSink(url, fps_hint=25)
        _feed_until(sink, 0, lambda: sink.sent >= 10, 10)
        (thread,) = set(threading.enumerate()) - threads
        (worker,) = _push_workers(os.getpid()) - workers
        collected = weakref.ref(sink)
        sink = None  # the only reference dropped
        gc.collect()
        deadline = time.monotonic() + 5.0
        while (thread.is_alive() or _alive(worker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert collected() is None, "the unclosed sink was not collected"
        assert not thread.is_alive() and not _alive(worker)
    finally:
        server.kill()
        server.wait(10)


_LEFT_OPEN = f"""
import atexit, os, sys, threading, time

{inspect.getsource(_push_workers)}
# registered before any weakref.finalize exists, so it runs after the finalizers at exit (atexit is last in, first out)
atexit.register(lambda: print("at exit: threads", [t.name for t in threading.enumerate() if t.name == "rtseg-push"],
                              "workers", sorted(_push_workers(os.getpid())), flush=True))

import numpy as np
from rtseg.types import Frame
from rtseg.video.sink_push import PushSink

def push(i):
    image = np.zeros((96, 128, 3), np.uint8)
    image[:, i % 128] = 255
    sink.write(Frame(image, seq=i, pts=i / 25), None, image)


sink = PushSink(sys.argv[1], fps_hint=25)
deadline = time.monotonic() + 20
i = 0
while sink.sent < 10:
    assert time.monotonic() < deadline, "timed out"
    push(i)
    i += 1
    time.sleep(0.02)
for i in range(i, i + 5):  # queued at exit
    push(i)
print("worker", *_push_workers(os.getpid()), flush=True)
"""


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the push process in /proc")
def test_push_sink_left_open_at_exit_ends_its_child(tmp_path):
    """A script that pushes and exits without close() exits at once with status 0, and its push process is gone:
    ended by the sink's finalizer before the interpreter's last exit handler, not left to the kernel (Linux's
    parent-death signal, which killed it only as the process itself ended)."""
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = push_receiver("rtmp", url, tmp_path / "got.flv")
    try:
        wait_listening(port)
        script = subprocess.Popen([sys.executable, "-c", _LEFT_OPEN, url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            first = script.stdout.readline()  # "worker PID": the script ends
            t_end = time.monotonic()
            rest, err = script.communicate(timeout=20)
            took = time.monotonic() - t_end
        finally:
            script.kill()
            script.wait()
    finally:
        server.kill()
        server.wait(10)
    assert script.returncode == 0 and first.startswith("worker "), (first, rest, err)
    (worker,) = map(int, first.split()[1:])
    assert rest == "at exit: threads [] workers []\n", (rest, err)
    assert took < 10.0 and not _alive(worker)
