"""Push sink against a real receiving server on loopback (Debian's ffmpeg binary as RTMP/RTSP listener)."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import SinkError
from rtseg.types import Frame
from rtseg.video.sink_push import PushSink

FFMPEG = shutil.which("ffmpeg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on ``port`` without connecting (ffmpeg -listen takes one client only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A = LISTEN
                    return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_to_real_server(tmp_path, scheme):
    port = _free_port()
    url = f"{scheme}://127.0.0.1:{port}/live/cam"
    received = tmp_path / ("got.flv" if scheme == "rtmp" else "got.mkv")
    listen = ["-listen", "1"] if scheme == "rtmp" else ["-rtsp_flags", "listen", "-rtsp_transport", "tcp"]
    server = subprocess.Popen(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", *listen, "-i", url, "-c", "copy", "-y", str(received)],
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port)
        sink = PushSink(url, fps_hint=25)
        for i in range(50):
            img = np.zeros((96, 128, 3), np.uint8)
            img[:, (i * 2) % 128] = 255
            sink.write(Frame(img, seq=i, pts=i / 25), None, img)
        sink.close()
        time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)  # ffmpeg finishes its output file on SIGTERM
        _, err = server.communicate(timeout=15)
    with av.open(str(received)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert stream.codec_context.name == "h264", err
    assert (frames[0].width, frames[0].height) == (128, 96)
    assert len(frames) >= 45  # all but perhaps the last few in flight at SIGTERM
    img = frames[10].to_ndarray(format="bgr24")
    assert img[:, 20].mean() > img[:, 80].mean() + 100  # the moving bar of frame 10 is at x=20


def test_push_errors():
    with pytest.raises(SinkError, match="unsupported scheme 'http'"):
        PushSink("http://127.0.0.1:1/x")
    sink = PushSink(f"rtmp://127.0.0.1:{_free_port()}/live/x")  # nobody listens there
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(SinkError, match="send failed"):  # sent on the sink's thread: raised by a later call
        sink.write(Frame(img, pts=0.0), None, img)
        sink.close()
    sink.close()


def test_push_errors_hide_credentials():
    with pytest.raises(SinkError) as e:
        PushSink("ftp://user:secret@cam.local:554/s")
    assert "secret" not in str(e.value) and "cam.local:554" in str(e.value)


@pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
def test_push_to_a_frozen_server_fails_instead_of_hanging(tmp_path):
    """A receiver that stops reading without closing the connection (SIGSTOP: a pulled cable) must end
    in a SinkError within the stall timeout, not block the pipeline (and Ctrl-C) for ever."""
    port = _free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    server = subprocess.Popen([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-listen", "1", "-i", url,
                               "-c", "copy", "-y", str(tmp_path / "got.flv")], stderr=subprocess.DEVNULL)
    rng = np.random.default_rng(0)
    try:
        _wait_listening(port)
        sink = PushSink(url, fps_hint=25, stall_timeout=2.0)
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
            except BaseException as exc:
                outcome.append(exc)
            try:
                sink.close()  # returns (within the stall timeout) with the error instead of hanging
            except BaseException as exc:
                outcome.append(exc)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        feeder.join(60)
        assert not feeder.is_alive(), "the push sink blocked on the frozen server"
        assert time.monotonic() - t0 < 30
        assert len(outcome) == 2 and all(isinstance(e, SinkError) for e in outcome), outcome
        assert "the server took no data for 2s" in str(outcome[0])
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(timeout=15)
