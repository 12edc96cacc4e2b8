"""Live web view: real HTTP server on loopback, MJPEG parsing, tokens, and the page in headless Chromium."""
from __future__ import annotations

import contextlib
import gc
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SinkError
from rtseg.serve.server import WebSink, parse_address
from rtseg.types import Frame
from rtseg.video.metrics import Metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _bar(i: int, h: int = 120, w: int = 160) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, (i * 4) % w : (i * 4) % w + 4] = 255
    return img


class _Feeder:
    """Writes a moving bar to the sink every 40 ms until stopped (stands in for the pipeline), recording each frame
    in ``metrics`` when given (as the pipeline's output stage does)."""

    def __init__(self, sink: WebSink, width: int = 160, metrics: Metrics | None = None) -> None:
        self.sink, self.stop, self.width, self.metrics = sink, threading.Event(), width, metrics
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            image = _bar(i, w=self.width)
            self.sink.write(Frame(image, seq=i), None, image)
            if self.metrics is not None:
                self.metrics.record(timings={}, capture_time=time.monotonic(), output_time=time.monotonic())
            i += 1
            time.sleep(0.04)

    def __enter__(self) -> "_Feeder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _read_parts(url: str, n: int) -> list[bytes]:
    """Read ``n`` JPEG parts from a multipart MJPEG response."""
    parts = []
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(parts) < n:
            line = resp.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                resp.readline()  # blank line
                parts.append(resp.read(length))
    return parts


def test_mjpeg_stream_stats_and_404():
    sink = WebSink("127.0.0.1", 0, stats_fn=lambda: {"fps": 25.0, "drops": 1})
    try:
        with _Feeder(sink):
            parts = _read_parts(sink.url + "stream.mjpg", 3)
            with urllib.request.urlopen(sink.url + "stats.json", timeout=5) as r:
                assert r.read() == b'{"fps": 25.0, "drops": 1}'
            with urllib.request.urlopen(sink.url, timeout=5) as r:
                assert b'id="video"' in r.read()
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(sink.url + "nope", timeout=5)
        images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
        assert all(im.shape == (120, 160, 3) for im in images)
        bars = [int(np.argmax(im[60, :, 0])) for im in images]
        assert len(set(bars)) == 3  # three different frames, not one frame repeated
    finally:
        sink.close()


def test_slow_client_never_blocks_write():
    sink = WebSink("127.0.0.1", 0)
    stalled = socket.create_connection(("127.0.0.1", sink.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never read
    noise = np.random.default_rng(0).integers(0, 255, (540, 960, 3), dtype=np.uint8)  # ~1 MB JPEGs
    done = threading.Event()

    def pipeline() -> None:
        for i in range(200):
            sink.write(Frame(noise, seq=i), None, noise)
            time.sleep(0.002)
        done.set()

    try:
        thread = threading.Thread(target=pipeline, daemon=True)
        thread.start()
        assert done.wait(20), "write() blocked behind a client that does not read"
        # Other viewers still get frames while the stalled one hangs.
        sink.write(Frame(_bar(1), seq=1), None, _bar(1))
        part = _read_parts(sink.url + "stream.mjpg", 1)[0]
        assert cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    finally:
        stalled.close()
        sink.close()



def test_viewers_that_reset_the_connection_print_no_tracebacks(capfd):
    """Viewers closing the stream abruptly (RST mid-reply) are normal: no traceback on the console."""
    import struct

    sink = WebSink("127.0.0.1", 0)
    try:
        with _Feeder(sink):
            for i in range(30):
                s = socket.create_connection(("127.0.0.1", sink.port))
                if i % 2:  # mid-stream
                    s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.recv(64)
                else:  # mid-request
                    s.sendall(b"GET /stream.mjpg HT")
                    time.sleep(0.01)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                s.close()
            time.sleep(0.5)  # the server threads notice the resets while writing the next frames
            assert len(_read_parts(sink.url + "stream.mjpg", 2)) == 2
    finally:
        sink.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err[:500]


def test_token_required_off_loopback():
    with pytest.raises(SinkError, match="needs a token"):
        WebSink("0.0.0.0", 0)
    sink = WebSink("0.0.0.0", 0, token="s3cret", stats_fn=lambda: {"fps": 1.0})
    base = f"http://127.0.0.1:{sink.port}"
    try:
        for path in ("/", "/stats.json", "/stream.mjpg", "/frame.jpg"):
            with pytest.raises(urllib.error.HTTPError, match="403"):
                urllib.request.urlopen(base + path, timeout=5)
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(base + "/stats.json?token=wrong", timeout=5)
        with urllib.request.urlopen(base + "/stats.json?token=s3cret", timeout=5) as r:
            assert r.status == 200
        req = urllib.request.Request(base + "/stats.json", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        assert sink.url == f"http://{socket.gethostname()}:{sink.port}/?token=s3cret"  # not 0.0.0.0
        with urllib.request.urlopen(sink.url.replace("/?", "/stats.json?"), timeout=5) as r:  # it resolves here
            assert r.status == 200
    finally:
        sink.close()


def test_dropped_unclosed_sink_ends_streams_and_frees_its_port():
    """A sink a library user forgot to close (a notebook cell run again) is collected once dropped, and its finalizer
    ends the viewer's stream, stops the server threads and frees the port (the server referenced the sink, which
    served for ever: "port in use" on the next run)."""
    threads = set(threading.enumerate())
    sink = WebSink("127.0.0.1", 0)
    port = sink.port
    sink.write(Frame(_bar(0), seq=0), None, _bar(0))
    with urllib.request.urlopen(sink.url + "stream.mjpg", timeout=10) as viewer:
        viewer.readline()  # the stream has begun: its server thread is running
        started = set(threading.enumerate()) - threads
        collected = weakref.ref(sink)
        del sink
        gc.collect()
        assert collected() is None, "the unclosed sink was not collected"
        viewer.read()  # to the end of the stream (the timeout fails a stream that goes on)
    deadline = time.monotonic() + 5.0
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(started) == 2 and not any(t.is_alive() for t in started)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    WebSink("127.0.0.1", port).close()  # the port can be bound again


def test_port_in_use_is_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SinkError, match=f"127.0.0.1:{port}: port in use; choose another port"):
            WebSink("127.0.0.1", port)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by selenium + chromedriver; skipped when they are not installed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


_BAR_POSITION_JS = """
const img = document.getElementById('video');
if (!img.complete || img.naturalWidth === 0) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const row = ctx.getImageData(0, Math.floor(c.height / 2), c.width, 1).data;
let best = 0, at = -1;
for (let x = 0; x < c.width; x++) { if (row[4 * x] > best) { best = row[4 * x]; at = x; } }
return [img.naturalWidth, at];
"""


def _poll(driver, script: str, ok, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if ok(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out; last value {value!r}")


def test_page_in_headless_chromium(browser):
    calls = {"n": 0}

    def stats() -> dict:
        calls["n"] += 1
        # The shape of rtseg.video.metrics.Metrics.snapshot().
        return {"frames": calls["n"], "dropped": 2, "fps": 20.0 + calls["n"], "fps_recent": None,
                "latency_ms": {"network": {"p50": 12.5, "p95": 20.0, "p99": 31.0, "mean": 13.0}}}

    sink = WebSink("0.0.0.0", 0, token="tok", stats_fn=stats)  # the page must carry the token itself
    try:
        with _Feeder(sink):
            browser.get(f"http://127.0.0.1:{sink.port}/?token=tok")
            first = _poll(browser, _BAR_POSITION_JS, lambda v: v is not None and v[0] == 160)
            _poll(browser, _BAR_POSITION_JS, lambda v: v is not None and v[1] != first[1])  # frames keep coming
            fps_js = "const e = document.querySelector('td[data-key=\"fps\"]'); return e ? e.textContent : null;"
            fps1 = _poll(browser, fps_js, lambda v: v is not None)
            _poll(browser, fps_js, lambda v: v is not None and v != fps1)  # stats update live
            cells = browser.execute_script(
                "return Array.from(document.querySelectorAll('td[data-key]'), e => [e.dataset.key, e.textContent])")
            cells = dict(cells)
            assert cells["latency_ms.network.p50"] == "12.5" and cells["latency_ms.network.p99"] == "31.0"
            assert cells["dropped"] == "2" and cells["fps_recent"] == "–"
    finally:
        sink.close()


def test_page_reopens_the_stream_when_the_run_restarts(browser):
    """A run restarted on the same port: the open page shows the new run's video by itself (the old MJPEG
    stream ended; the page opens it again once the stats answer again)."""
    sink = WebSink("127.0.0.1", 0)
    port = sink.port
    try:
        with _Feeder(sink):
            browser.get(f"http://127.0.0.1:{port}/")
            _poll(browser, _BAR_POSITION_JS, lambda v: v is not None and v[0] == 160)
    finally:
        sink.close()
    _poll(browser, "return document.getElementById('status').className", lambda v: v == "err")  # run gone
    sink = WebSink("127.0.0.1", port)
    try:
        with _Feeder(sink, width=200):  # the new run's frames: another width
            _poll(browser, _BAR_POSITION_JS, lambda v: v is not None and v[0] == 200, timeout=15.0)
    finally:
        sink.close()


def test_recorded_mp4_plays_in_chromium(browser, tmp_path):
    """The Mp4Sink output is browser-playable: Chromium's <video> decodes it and knows its length."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from rtseg.video.sinks import Mp4Sink

    sink = Mp4Sink(tmp_path / "clip.mp4", fps_hint=25)
    for i in range(50):
        sink.write(Frame(_bar(i), seq=i, pts=i / 25), None, _bar(i))
    sink.close()
    (tmp_path / "index.html").write_text('<video id="v" src="clip.mp4" muted playsinline></video>')
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        state = _poll(browser, "const v = document.getElementById('v');"
                      "return v.error ? 'error ' + v.error.code : [v.readyState, v.videoWidth, v.duration];",
                      lambda s: isinstance(s, str) or s[0] >= 2)
        assert not isinstance(state, str), state
        assert state[1] == 160 and abs(state[2] - 2.0) < 0.1
        browser.execute_script("const v = document.getElementById('v'); v.play();")
        _poll(browser, "return document.getElementById('v').currentTime", lambda t: t > 0.3)
    finally:
        server.shutdown()
        server.server_close()


def test_clients_that_send_nothing_or_read_nothing_are_dropped(monkeypatch):
    """Idle connections (no request sent; a stream never read) each held a server thread for ever; now the
    handler's socket timeout drops them, while a reading viewer keeps streaming and ``write`` never blocks."""
    from rtseg.serve import server

    monkeypatch.setattr(server._Handler, "timeout", 1.0)
    sink = WebSink("127.0.0.1", 0)
    silent = socket.create_connection(("127.0.0.1", sink.port))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", sink.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    rng = np.random.default_rng(0)
    stop = threading.Event()

    def feed() -> None:  # incompressible frames: the stalled viewer's socket buffers fill at once
        while not stop.is_set():
            sink.write(Frame(np.zeros((1, 1, 3), np.uint8)), None, rng.integers(0, 256, (240, 320, 3), np.uint8))
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        silent.settimeout(10)
        assert silent.recv(1) == b""  # the server closed it (after ~1 s, not never)
        time.sleep(2.5)  # the stalled viewer's send times out
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        stalled.settimeout(10)
        deadline = time.monotonic() + 10
        while stalled.recv(1 << 16):  # drains what was buffered, then EOF: the server gave the connection up
            assert time.monotonic() < deadline, "the stalled viewer is still being served"
        assert len(_read_parts(f"http://127.0.0.1:{sink.port}/stream.mjpg", 3)) == 3  # others still served
    finally:
        stop.set()
        feeder.join(5)
        silent.close()
        stalled.close()
        sink.close()


def test_bad_bind_addresses_say_what_to_do():
    with pytest.raises(SinkError, match=re.escape("web output 192.0.2.1:8080: cannot listen (Cannot assign requested "
                                                  "address): not an address of this machine; bind 127.0.0.1")):
        WebSink("192.0.2.1", 8080, token="t")  # TEST-NET-1: never a local address
    with pytest.raises(SinkError, match=re.escape("web output [2001:db8::1]:8080: binding a non-loopback address")):
        WebSink("2001:db8::1", 8080)
    with pytest.raises(SinkError, match="unknown host: .*; give an IP address such as 127.0.0.1"):
        WebSink("no-such-host.invalid", 8080, token="t")


@pytest.mark.parametrize("spec, address", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:0", ("localhost", 0)), ("[::1]:8080", ("::1", 8080)),
    ("[::]:80", ("::", 80)), ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_serve_addresses_parse(spec, address):
    assert parse_address(spec) == address


@pytest.mark.parametrize("spec", ["[::1", "::1:8080", "[foo]:80", "localhost", "h:99999", ":80", "h:", "[::1]8080"])
def test_malformed_serve_addresses_say_the_form(spec):
    """'[::1' was split at its last colon into host '[:' (brackets stripped: ':') and port 1, then refused as
    'web output [:]:1: binding a non-loopback address needs a token'."""
    with pytest.raises(ConfigError) as info:
        parse_address(spec)
    assert str(info.value) == f"--serve {spec}: use HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"


def test_a_token_is_percent_encoded_in_the_printed_url_and_accepted_decoded():
    """'--serve-token "a b&c?d#"' printed '?token=a b&c?d#': a URL that cut the token at '&' (and '#')."""
    token = "a b&c?d#+é/%"
    sink = WebSink("127.0.0.1", 0, token=token)
    try:
        assert sink.url == f"http://127.0.0.1:{sink.port}/?token=a%20b%26c%3Fd%23%2B%C3%A9%2F%25"
        with urllib.request.urlopen(sink.url.replace("/?", "/stats.json?"), timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(sink.url, timeout=5) as r:
            assert r.status == 200
    finally:
        sink.close()


def test_head_is_answered_as_get_without_the_body():
    """HEAD (link checkers, monitoring, ``curl -I``) was answered 501. Now each route answers GET's status and
    headers, Content-Length of the body GET sends, and no body: the next request on the same kept-alive
    connection is read cleanly (a body would be parsed as its reply); the stream answers its headers, no frames."""
    import http.client

    sink = WebSink("127.0.0.1", 0, token="s3cret", stats_fn=lambda: {"fps": 25.0, "drops": 1})
    page = urllib.request.urlopen(sink.url, timeout=5).read()
    connection = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
    try:
        with _Feeder(sink):
            answers = {}
            for path in ("/?token=s3cret", "/stats.json?token=s3cret", "/frame.jpg?token=s3cret", "/nope?token=s3cret",
                         "/stats.json"):
                connection.request("HEAD", path)
                reply = connection.getresponse()
                answers[path] = (reply.status, reply.getheader("Content-Type"), reply.getheader("Content-Length"),
                                 reply.read())
            connection.request("GET", "/stats.json?token=s3cret")  # the same connection, still in step
            assert connection.getresponse().read() == b'{"fps": 25.0, "drops": 1}'
            connection.request("HEAD", "/stream.mjpg?token=s3cret")
            stream = connection.getresponse()
            assert (stream.status, stream.getheader("Content-Type"), stream.getheader("Connection"), stream.read()) \
                == (200, "multipart/x-mixed-replace; boundary=rtsegframe", "close", b"")
    finally:
        connection.close()
        sink.close()
    status, kind, length, body = answers.pop("/frame.jpg?token=s3cret")
    assert (status, kind, body) == (200, "image/jpeg", b"") and int(length) > 0
    assert answers == {"/?token=s3cret": (200, "text/html; charset=utf-8", str(len(page)), b""),
                       "/stats.json?token=s3cret": (200, "application/json", "25", b""),
                       "/nope?token=s3cret": (404, "text/plain", str(len(b"not found\n")), b""),
                       "/stats.json": (403, "text/plain", str(len(b"token required: add ?token=...\n")), b"")}


def _stats(sink: WebSink) -> dict:
    import json

    with urllib.request.urlopen(sink.url + "stats.json", timeout=5) as r:
        return json.loads(r.read())


def test_stats_say_that_frames_stopped_coming():
    """/stats.json looked healthy while the camera was down: ``fps_recent`` kept its last value (its window ended at
    the last frame) and no field said that frames had stopped. Now the recent FPS counts the last 5 s up to now
    (0 once no frame came for that long) and ``last_frame_age_s`` grows; ``fps`` stays the whole run's."""
    now = [100.0]
    metrics = Metrics(warmup_frames=0, clock=lambda: now[0])
    sink = WebSink("127.0.0.1", 0, stats_fn=metrics.snapshot)
    try:
        first = _stats(sink)
        assert (first["frames"], first["fps_recent"], first["last_frame_age_s"]) == (0, None, None)
        for i in range(301):  # 10 s at 30 frames/s, output as the clock goes
            now[0] = 100.0 + i / 30
            metrics.record(timings={"inference": 0.01}, capture_time=now[0] - 0.02, output_time=now[0])
            if i == 15:  # half a second in: the window starts at the first frame
                assert _stats(sink)["fps_recent"] == pytest.approx(30.0)
        live = _stats(sink)
        assert live["fps_recent"] == pytest.approx(30.0) and live["last_frame_age_s"] == 0.0
        assert metrics.hud()["FPS"] == pytest.approx(30.0)
        now[0] += 3.0  # the camera is down for 3 s: 2 s of the last 5 had frames
        down = _stats(sink)
        assert down["fps_recent"] == pytest.approx(60 / 5) and down["last_frame_age_s"] == pytest.approx(3.0)
        now[0] += 27.0
        down = _stats(sink)
        assert (down["frames"], down["fps_recent"]) == (301, 0.0)
        assert down["last_frame_age_s"] == pytest.approx(30.0) and down["fps"] == pytest.approx(30.0)
    finally:
        sink.close()


def test_page_says_when_no_frame_came_for_seconds(browser):
    """The page showed a frozen picture with healthy stats while the source was down. Now it says "no frame for
    N s" over the picture once frames stop (the real metrics of a run, served as a run serves them), and no more
    once they come again."""
    metrics = Metrics()
    sink = WebSink("127.0.0.1", 0, stats_fn=metrics.snapshot)
    stale_js = "const e = document.getElementById('stale'); return e ? [e.hidden, e.textContent] : null;"
    try:
        from selenium.common.exceptions import TimeoutException

        browser.set_page_load_timeout(3)
        with contextlib.suppress(TimeoutException):  # (the page's stream does not load before the first frame)
            browser.get(sink.url)
        assert _poll(browser, stale_js, lambda v: v is not None and not v[0]) == [False, "no frame yet"]
        with _Feeder(sink, metrics=metrics):
            _poll(browser, _BAR_POSITION_JS, lambda v: v is not None and v[0] == 160)
            _poll(browser, stale_js, lambda v: v[0])  # frames are coming: nothing said
        said = _poll(browser, stale_js, lambda v: not v[0] and v[1] != "no frame for 2 s")  # stopped: said, counting
        assert re.fullmatch(r"no frame for [3-9] s", said[1]), said
        assert browser.execute_script("return document.getElementById('video').className") == "stale"
        with _Feeder(sink, metrics=metrics):
            _poll(browser, stale_js, lambda v: v[0])
    finally:
        sink.close()
