"""Live streams from real misbehaving servers on loopback (tests/servers/http_live.py): refusals, silence, stalls,
a live HLS playlist that changes size mid-connection and then stops growing, a stream without video.

Frames are solid colours (``clip_colour(i)`` for frame i), so every frame that comes out names itself: a stale
frame yielded twice shows as a repeated index.
"""
from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.video.sources import open_source
from rtseg.video.sources_live import StreamSource
from servers.helpers import clip_colour, free_port, make_clip
from servers.http_live import Handler, LiveHlsServer, LiveHttpServer, live_ts, redirect_loop, silent, status

FPS = 10


def _encode(path: Path, first: int, count: int, size: tuple[int, int], *, fmt: str = "mpegts",
            options: dict[str, str] | None = None, bframes: int = 0) -> Path:
    """Frames ``first .. first + count - 1`` as solid ``clip_colour`` images ((h, w) = ``size``), H.264 at
    :data:`FPS` with a key frame every second and ``bframes`` B-frames between references, in ``fmt`` (``hls``
    writes the segments beside ``path``)."""
    return make_clip(path, frames=count, width=size[1], height=size[0], fps=FPS, first=first, fmt=fmt,
                     options=options, codec_options={"g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0",
                                                     "bf": str(bframes)})


def _index(image: np.ndarray, count: int) -> int:
    """Which ``clip_colour(i)``, i < count, the frame shows."""
    colour = image.reshape(-1, 3).mean(axis=0)
    return int(np.argmin([np.abs(colour - clip_colour(i)).max() for i in range(count)]))


# --- opening: one line that says what happened, never a password ---

@pytest.mark.parametrize("handler, expected", [
    (status(401), "the server refused access (Server returned 401 Unauthorized"),
    (status(403), "the server refused access (Server returned 403 Forbidden"),
    (status(404), "the server has no such stream (Server returned 404 Not Found); check the path"),
    (status(500), "the server answered with an error (Server returned 5XX Server Error reply)"),
    (redirect_loop, "Input/output error (the server closed the connection, or redirected more than FFmpeg follows)"),
])
def test_refusals_are_one_line_naming_the_cause(handler, expected):
    """Were '[Errno 825242872] Server returned 401 ...: 'http://***@...' (nothing within 10s; check ...)':
    a number, the URL twice and a timeout that never happened."""
    with LiveHttpServer(handler) as server:
        t0 = time.monotonic()
        with pytest.raises(SourceError) as info:
            open_source(server.url(auth="bob:hunter2"), open_timeout=5)
    message = str(info.value)
    assert time.monotonic() - t0 < 4, "an answer is not a timeout"
    assert message.startswith(f"cannot open stream {server.url(auth='***')}: {expected}"), message
    assert "\n" not in message and "Errno" not in message and "within" not in message
    assert "hunter2" not in message and "bob" not in message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_nothing_listening_is_named(host):
    port = free_port()
    with pytest.raises(SourceError) as info:
        open_source(f"rtmp://bob:hunter2@{host}:{port}/live/x", open_timeout=5)
    assert str(info.value) == (f"cannot open stream rtmp://***@{host}:{port}/live/x: nothing listens at "
                               f"{host}:{port} (Connection refused); check host and port, and that the server runs")


#: A host name that never resolves (RFC 6761 reserves .invalid), as the lines below name it.
UNKNOWN = r"host 'cam\.invalid' not found \(DNS lookup failed: [^()]+\); check the name in the URL"


@pytest.mark.parametrize("url, line", [
    ("rtsp://bob:hunter2@cam.invalid/stream", rf"rtsp://\*\*\*@cam\.invalid/stream: {UNKNOWN}"),
    ("rtmp://bob:hunter2@cam.invalid/app/key", rf"rtmp://\*\*\*@cam\.invalid/app/key: {UNKNOWN}"),
    ("http://bob:hunter2@cam.invalid/x.mp4", rf"http://\*\*\*@cam\.invalid/x\.mp4: {UNKNOWN}"),
    ("https://cam.invalid:8443/live.m3u8", rf"https://cam\.invalid:8443/live\.m3u8: {UNKNOWN}"),
    ("rtsp://cam..local/stream", r"rtsp://cam\.\.local/stream: host 'cam\.\.local' is no valid host name \(an "
                                 r"empty part between dots, or one over 63 characters\); check the name in the URL"),
])
def test_a_host_name_that_does_not_resolve_is_named(url, line):
    """Was 'Input/output error; check host, port, path and credentials' (RTSP, RTMP), or for HTTP '... (the server
    closed the connection, or redirected more than FFmpeg follows); check the URL': FFmpeg's words for a host name
    its DNS lookup did not find."""
    with pytest.raises(SourceError) as info:
        open_source(url, open_timeout=5)
    assert re.fullmatch(f"cannot open stream {line}", str(info.value)), str(info.value)


def test_a_reconnection_to_a_host_name_that_no_longer_resolves_names_it(tmp_path):
    """A live stream drops, and its host name has stopped resolving meanwhile (a camera's DNS record removed: here
    the URL its reconnections use is made one that never resolves). The line that ends the run names that; was
    '... Input/output error (the server closed the connection, or redirected more than FFmpeg follows)'."""
    body = _encode(tmp_path / "s.ts", 0, 5, (24, 32)).read_bytes()
    with LiveHttpServer(live_ts(body, hold=0)) as server:
        source = open_source(server.url(), open_timeout=5, read_timeout=1, reconnect_timeout=1)
        assert isinstance(source, StreamSource) and source.is_live
        source._url = server.url().replace("127.0.0.1", "cam.invalid")
        with pytest.raises(SourceError) as info:
            for _ in source:
                pass
        source.close()
    shown = re.escape(server.url())
    assert re.fullmatch(rf"stream {shown} lost \([^()]+\) and not back after 1s: cannot open stream {shown}: "
                        f"{UNKNOWN}", str(info.value)), str(info.value)


def test_a_server_that_never_answers_is_named_with_the_timeout_that_ended_the_wait():
    """Was '[Errno 110] Connection timed out: '...' (nothing within 5s; ...)' after the 1.5 s read timeout."""
    with LiveHttpServer(silent) as server:
        t0 = time.monotonic()
        with pytest.raises(SourceError) as info:
            open_source(server.url(), open_timeout=5, read_timeout=1.5)
        waited = time.monotonic() - t0
    assert 1.3 < waited < 4, waited
    assert str(info.value) == (f"cannot open stream {server.url()}: no answer within 1.5s; check host, port and "
                               "path, and that the server sends a stream")


@pytest.mark.parametrize("scheme", ["rtsp", "rtmp"])
def test_a_listener_that_never_answers_is_named_for_rtsp_and_rtmp(scheme):
    """RTSP's was 'Invalid data found when processing input; what the URL serves is not a video FFmpeg can decode
    (check the path)': FFmpeg's RTSP client reports its read timeout (no answer to its first request) so."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/live/x"
        with pytest.raises(SourceError) as info:
            open_source(url, open_timeout=5, read_timeout=1)
    assert str(info.value) == (f"cannot open stream {url}: no answer within 1s; check host, port and path, and that "
                               "the server sends a stream")


@pytest.mark.parametrize("reads", [False, True])
def test_an_rtsp_server_that_hangs_up_at_once_is_named(reads):
    """A listener that accepts and closes every connection (``reads``: after reading the request). Was 'Invalid data
    found when processing input; what the URL serves is not a video FFmpeg can decode (check the path)': FFmpeg's RTSP
    client reports an empty answer so."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def hang_up() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:  # the listener was closed: the test is over
                    return
                with conn:
                    if reads:
                        conn.recv(4096)
        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SourceError) as info:
            open_source(f"rtsp://bob:hunter2@{host}/live/x", open_timeout=5, read_timeout=2)
        listener.shutdown(socket.SHUT_RDWR)  # (wakes the accept)
    thread.join(5)
    assert str(info.value) == (f"cannot open stream rtsp://***@{host}/live/x: the server at {host} closed the "
                               "connection without answering; check the URL, and that it is an RTSP server")


def test_an_rtsp_url_answered_at_once_with_no_rtsp_is_invalid_data():
    """(Not a timeout: the answer came, an HTTP server's.)"""
    with LiveHttpServer(status(404)) as server, pytest.raises(SourceError) as info:
        url = server.url().replace("http", "rtsp")
        open_source(url, open_timeout=5, read_timeout=2)
    assert str(info.value) == (f"cannot open stream {url}: Invalid data found when processing input; what the URL "
                               "serves is not a video FFmpeg can decode (check the path)")


def test_an_audio_only_stream_says_so(tmp_path):
    with av.open(str(tmp_path / "a.ts"), "w") as container:
        stream = container.add_stream("mp2", rate=48000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1152
            for packet in stream.encode(frame):
                container.mux(packet)
    with LiveHttpServer(live_ts((tmp_path / "a.ts").read_bytes())) as server, pytest.raises(SourceError) as info:
        open_source(server.url(), open_timeout=5)
    assert str(info.value) == f"stream {server.url()} has no video track (only audio); pass a URL that carries video"


# --- running: a stall is named as one ---

def test_a_stall_is_reported_as_no_data(tmp_path):
    """Was 'lost ([Errno 1414092869] Immediate exit requested: 'http://...')' for an encoder that went quiet."""
    body = _encode(tmp_path / "s.ts", 0, 20, (24, 32)).read_bytes()
    events: list[str] = []
    with LiveHttpServer(live_ts(body, seconds=1.0)) as server:
        source = open_source(server.url(), open_timeout=5, read_timeout=1, reconnect_timeout=5)
        source.on_event = events.append
        frames = []
        for frame in source:
            frames.append(frame)
            if events:
                break
        source.close()
    assert len(frames) == 21  # the 20 sent, then the reconnection's first
    assert events[0] == f"stream {server.url()} lost (no data for 1s); reconnecting for up to 5s", events


@pytest.mark.parametrize("end", ["stall", "drop"])
def test_frames_the_decoder_holds_come_out_before_the_outage(tmp_path, end):
    """A live MPEG-TS stream with B-frames (the decoder holds frames back to reorder them, and more in its threads)
    sends 20 frames, then stalls (the connection stays open, silent) or drops (the server closes it). All 20 come
    out, in order and evenly timed, before the outage is announced; the next connection's frames follow them, a
    stall (at least the 1 s read timeout) later. Was: the last 4 were lost with the connection."""
    body = _encode(tmp_path / "b.ts", 0, 20, (24, 32), bframes=2).read_bytes()
    events: list[str] = []
    frames = []
    with LiveHttpServer(live_ts(body, seconds=1.0, hold=30.0 if end == "stall" else 0.0)) as server:
        source = open_source(server.url(), open_timeout=5, read_timeout=1, reconnect_timeout=5)
        source.on_event = events.append
        for frame in source:
            if events:
                break
            frames.append(frame)
        source.close()
    assert [_index(f.image, 20) for f in frames] == list(range(20))
    assert np.diff([f.pts for f in frames]) == pytest.approx([1 / FPS] * 19)
    assert events[0].startswith(f"stream {server.url()} lost ("), events
    assert frame.pts - frames[-1].pts > (1.0 if end == "stall" else 1 / FPS)  # frame: the reconnection's first


def _motion_jpeg(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
    """Motion JPEG as IP cameras (and rtseg --serve) send it, multipart/x-mixed-replace: frame i (``clip_colour(i)``)
    every 0.2 s, 5 a second."""
    request.send_response(200)
    request.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
    request.end_headers()
    for i in range(100):
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), clip_colour(i), np.uint8))[1].tobytes()
        request.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                            % (len(jpeg), jpeg))
        request.wfile.flush()
        time.sleep(0.2)


def test_motion_jpeg_over_http_is_timed_by_the_clock():
    """Motion JPEG over HTTP carries no timestamps; FFmpeg numbers its frames at 25 FPS. A camera sending 5 a second
    is timed by the clock: its frames' pts advance as their capture times do. Was: 25 FPS (a 23 s recording
    lasted 4.6 s)."""
    with LiveHttpServer(_motion_jpeg) as server, open_source(server.url("/cam.mjpg"), open_timeout=5) as source:
        frames = [frame for frame, _ in zip(source, range(8))]
    shown = [_index(f.image, 100) for f in frames]
    assert shown == sorted(set(shown)), shown
    pts, captured = np.array([f.pts for f in frames]), np.array([f.capture_time for f in frames])
    assert 0.6 < (pts[-1] - pts[0]) / (captured[-1] - captured[0]) < 1.6, (pts, captured - captured[0])


#: Frames of the HTTP files below (16 s): the first half is more than FFmpeg's probe reads (5 s), so that the server
#: stops sending while the file is read, not while it is opened.
HTTP_FILE_FRAMES = 160


def _half_of(body: bytes, *, then: str) -> Handler:
    """An HTTP file (200 with a Content-Length: read like a file, not a live stream) of which the server sends the
    first half, then ``then``: "stall" (the connection held open, silent, 30 s) or "close" (it hangs up)."""
    def handle(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "video/mp2t")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body[:len(body) // 2])
        request.wfile.flush()
        if then == "stall":
            time.sleep(30)
    return handle


@pytest.mark.parametrize("then, why", [
    ("stall", "the server sent no data for 1s (it or the network stalled); check the server"),
    ("close", "Input/output error (the connection dropped, or the file is damaged); check the server")])
def test_an_http_file_the_server_stops_sending_says_what_happened(tmp_path, then, why):
    """An MPEG-TS file whose server stops half-way: was 'failed at 1.760s: Immediate exit requested; over HTTP, an
    MP4 whose index is at its end needs a server that supports byte ranges …', PyAV's words for its read timeout
    and advice for another format. Now what happened, and where to go on from (--start)."""
    body = _encode(tmp_path / "f.ts", 0, HTTP_FILE_FRAMES, (48, 64)).read_bytes()
    frames = []
    with LiveHttpServer(_half_of(body, then=then)) as server, pytest.raises(SourceError) as info:
        with open_source(server.url("/f.ts"), open_timeout=5, read_timeout=1) as source:
            assert not source.is_live
            frames.extend(source)
    last = f"{frames[-1].pts:.3f}"
    assert str(info.value) == (f"reading {server.url('/f.ts')} failed at {last}s: {why}, then go on from there with "
                               f"--start {last}")
    assert [_index(f.image, HTTP_FILE_FRAMES) for f in frames] == list(range(len(frames)))


# --- live HLS: a wait for the next segment, a new size mid-connection, then a playlist that stops growing ---

def test_an_hls_master_playlist_plays_its_largest_variant_and_fetches_no_other(tmp_path):
    """Two variants (32x24 at 200 kb/s listed first, 64x48 at 800 kb/s): the frames are the large variant's, each
    once; the small one's segments are not fetched beyond FFmpeg's probe at opening. Was: FFmpeg's pick, the
    first and smallest variant, while every segment of both was downloaded."""
    for name, size in (("lo", (24, 32)), ("hi", (48, 64))):
        _encode(tmp_path / f"{name}.m3u8", 0, 60, size, fmt="hls", options={
            "hls_time": "1", "hls_list_size": "0", "hls_segment_filename": str(tmp_path / f"{name}%d.ts")})
    (tmp_path / "master.m3u8").write_text(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=32x24\nlo.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=64x48\nhi.m3u8\n")
    asked: list[str] = []

    def serve(request, k):
        asked.append(request.path)
        body = (tmp_path / request.path.lstrip("/")).read_bytes()
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    with LiveHttpServer(serve) as server:
        source = open_source(server.url("/master.m3u8"), open_timeout=5, read_timeout=2)
        try:
            frames = list(source)
        finally:
            source.close()
    assert [_index(f.image, 60) for f in frames] == list(range(60))
    assert {f.image.shape for f in frames} == {(48, 64, 3)}
    hi = {p for p in asked if p.startswith("/hi") and p.endswith(".ts")}
    lo = {p for p in asked if p.startswith("/lo") and p.endswith(".ts")}
    assert len(hi) == 6 and len(lo) < 6, asked  # (probing at opening fetches the first segments of each)


def test_a_live_hls_event_that_ends_ends_the_source_like_a_file(tmp_path):
    """A live playlist (two segments a second) that gains #EXT-X-ENDLIST once its last segment is out: the event is
    over, so the source ends after its last frame like a file's — no "lost", no reconnecting, no error — and says
    why in a notice (was silent: a live run that stopped with exit 0 and no word). Was: taken for a playlist that
    stopped growing, reconnected for reconnect_timeout and ended the run with an error."""
    _encode(tmp_path / "e.m3u8", 0, 60, (24, 32), fmt="hls", options={
        "hls_time": "1", "hls_list_size": "0", "hls_segment_filename": str(tmp_path / "e%d.ts")})
    segments = sorted(tmp_path.glob("e*.ts"), key=lambda p: int(p.stem[1:]))
    events, frames = [], []
    with LiveHlsServer(segments, ends=True) as server:
        source = open_source(server.url("/live.m3u8"), open_timeout=5, read_timeout=0.5, reconnect_timeout=30)
        assert source.is_live  # while the event runs
        source.on_event = events.append
        t0 = time.monotonic()
        try:
            frames = [_index(f.image, 60) for f in source]
        finally:
            source.close()
    assert frames == list(range(60)) and events == [] and source.reconnects == 0
    assert source.notices == [f"the live stream {server.url('/live.m3u8')} ended: its server marked it over "
                              "(#EXT-X-ENDLIST in its playlist)"]
    assert time.monotonic() - t0 < 15  # not reconnect_timeout


@pytest.mark.parametrize("ends", ["with its last segment", "while the source reconnects"])
def test_an_hls_event_playlist_that_ends_gives_every_frame_once_then_ends(tmp_path, monkeypatch, ends):
    """An EVENT playlist (#EXT-X-PLAYLIST-TYPE:EVENT: every segment stays listed) gains a 1 s segment a second and
    then #EXT-X-ENDLIST: with its last segment, or only once FFmpeg gave up waiting for a new one (the source
    announced the outage and is reconnecting, to a playlist that is now finished). Every frame comes once, in order,
    and the source ends like a file: no error, no reconnection that brings the event again. The source remembers
    fewer frames (35) than the event has, as for any event longer than its 4096 (68 s at 60 FPS). Was: the reconnection
    played the finished event from its first segment (FFmpeg starts a finished playlist there), and frames older
    than those remembered came again as new ones: the whole event a second time."""
    monkeypatch.setattr(StreamSource, "_SHOWN", 35)  # more than the 3 segments a live reconnection replays
    _encode(tmp_path / "e.m3u8", 0, 60, (24, 32), fmt="hls", bframes=2, options={
        "hls_time": "1", "hls_list_size": "0", "hls_segment_filename": str(tmp_path / "e%d.ts")})
    segments = sorted(tmp_path.glob("e*.ts"), key=lambda p: int(p.stem[1:]))
    events, frames, error = [], [], None
    with LiveHlsServer(segments, event=True, ends=ends == "with its last segment") as server:
        url = server.url("/live.m3u8")
        source = open_source(url, open_timeout=5, read_timeout=0.5, reconnect_timeout=10)
        source.on_event = lambda line: (events.append((len(frames), line)), server.end())
        t0 = time.monotonic()
        try:
            for frame in source:
                frames.append(_index(frame.image, 60))
                if time.monotonic() - t0 > 30:  # before the fix: the event again
                    break
        except SourceError as exc:
            error = exc
        finally:
            source.close()
    assert frames == list(range(60)) and error is None and source.reconnects == 0, (frames, error)
    lost = f"stream {url} lost (the live playlist stopped growing); reconnecting for up to 10s"
    assert events == ([] if ends == "with its last segment" else [(60, lost)]), events
    assert source.notices == [f"the live stream {url} ended: its server marked it over (#EXT-X-ENDLIST in its "
                              "playlist)"]
    assert time.monotonic() - t0 < 15


def test_live_hls_changes_size_then_freezes_without_replaying_old_frames(tmp_path):
    """Three 1 s segments at 32x24, then (#EXT-X-DISCONTINUITY, clock restarted) three at 64x48, one published per
    second; then the playlist stops growing. Every frame comes once, in order, at its own size, on one connection
    (waiting 1 s for the next segment is no stall, though longer than the 0.5 s read timeout), at the pace of its
    timestamp; the frozen playlist ends the run reconnect_timeout after the last frame. Was: PyAV's read timeout
    ended the connection while it waited for each segment, each segment came as one burst of frames (the
    pipeline kept a few of each), and every reconnection replayed the last segments as new frames, for ever."""
    for name, first, size in (("a", 0, (24, 32)), ("b", 30, (48, 64))):
        _encode(tmp_path / f"{name}.m3u8", first, 30, size, fmt="hls", options={
            "hls_time": "1", "hls_list_size": "0", "hls_segment_filename": str(tmp_path / f"{name}%d.ts")})
    segments = [tmp_path / f"{name}{i}.ts" for name in "ab" for i in range(3)]
    events: list[tuple[int, str]] = []
    frames, error = [], None
    with LiveHlsServer(segments, discontinuity_at=3) as server:
        url = server.url("/live.m3u8")
        source = open_source(url, open_timeout=5, read_timeout=0.5, reconnect_timeout=3)
        assert source.is_live
        source.on_event = lambda line: events.append((len(frames), line))
        t0 = time.monotonic()
        try:
            for frame in source:
                frames.append(frame)
                if time.monotonic() - t0 > 25:  # before the fix: replays for ever
                    break
        except SourceError as exc:
            error = exc
        finally:
            source.close()
    shown = [_index(f.image, 60) for f in frames]
    assert len(shown) == len(set(shown)), f"frames shown twice (stale replays): {shown}"
    assert shown == sorted(shown) and shown[-1] == 59 and len(shown) >= 55, shown
    assert all(f.image.shape[:2] == ((24, 32) if i < 30 else (48, 64)) for i, f in zip(shown, frames))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), "pts must keep increasing across the discontinuity"
    # the first connection's frames are shown at the pace of their timestamps, not in bursts (but for its last
    # ones, which the decoder's threads hold until the connection ends)
    assert events[0][0] >= 55
    lag = np.array([f.capture_time - f.pts for f in frames[:40]])
    assert np.ptp(lag) < 0.5, f"frames came in bursts: capture time - pts spans {np.ptp(lag):.2f}s"
    lost = f"stream {url} lost (the live playlist stopped growing); reconnecting for up to 3s"
    assert events == [(len(frames), lost)], events  # reconnections that bring nothing new are not "back"
    assert source.reconnects == 0
    assert str(error) == (f"stream {url} lost (the live playlist stopped growing) and not back after 3s: the server "
                          "answers but sends no new frame")
    assert time.monotonic() - t0 < 20


def _backlog_kept(frames: list[tuple[float, float, float]], period: float = 0.04) -> list[float]:
    """The stream times (s) a live stream's :class:`_Backlog` keeps of ``frames``: (stream time, monotonic time the
    frame came, seconds the read of its packet waited), read at once when it came, the connection opened at 0."""
    from rtseg.video.sources_live import StreamSource, _Backlog

    backlog = _Backlog(0.0, StreamSource._STALE, period)
    return [t for t, came, waited in frames if not backlog.stale(came, waited, came, t)]


def test_a_backlog_of_the_start_is_skipped_up_to_the_first_current_frame():
    """25 FPS whose first 3 s piled up while the engine loaded (read at once, 1 ms apart), then frames at pace:
    the backlog is skipped, every frame from the first current one on is kept."""
    piled = [(k * 0.04, 3.0 + k * 0.001, 0.0) for k in range(76)]
    current = [(3.04 + k * 0.04, 3.05 + k * 0.04, 0.039) for k in range(50)]
    kept = _backlog_kept(piled + current)
    assert kept[0] >= 2.9 and kept[-50:] == [t for t, _, _ in current]


def test_a_stopped_reader_skips_what_piled_up_meanwhile():
    """Frames at pace, the reader stopped for 3 s (the frames meanwhile read at once on waking): those are skipped,
    the ones before and after kept."""
    before = [(k * 0.04, k * 0.04 + 0.01, 0.039) for k in range(100)]  # up to 3.96 s
    piled = [(4.0 + k * 0.04, 7.0 + k * 0.001, 0.0) for k in range(75)]
    after = [(7.0 + k * 0.04, 7.1 + k * 0.04, 0.039) for k in range(25)]
    kept = _backlog_kept(before + piled + after)
    assert kept[:100] == [t for t, _, _ in before] and kept[-25:] == [t for t, _, _ in after]
    assert not any(4.0 <= t < 6.9 for t in kept)
