"""Real HTTP servers on loopback that misbehave like live-stream servers do (Python's http.server, one thread).

- ``LiveHttpServer(handler)``: serves every GET with ``handler(request, k)`` (k counts connections); helpers below
  make the usual handlers: ``status(code)``, ``redirect_loop``, ``silent``, ``live_ts(body)``.
- ``LiveHlsServer(segments, discontinuity_at=...)``: a live HLS playlist that gains one segment per ``interval``
  seconds, keeps the last ``window`` of them (or, an ``event`` playlist, all) and, once all are published, stops
  growing (no ``#EXT-X-ENDLIST``), as a live encoder that died leaves it.
"""
from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Callable

Handler = Callable[[http.server.BaseHTTPRequestHandler, int], None]


class LiveHttpServer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) in a daemon thread; use as a context manager."""

    def __init__(self, handler: Handler) -> None:
        count = iter(range(1 << 30))

        class Request(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    handler(self, next(count))
                except OSError:  # the client went away
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Request)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path: str = "/live.ts", auth: str = "") -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "LiveHttpServer":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def status(code: int) -> Handler:
    """Answer every request with HTTP ``code`` and no body."""
    def handle(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
        request.send_response(code)
        request.send_header("Content-Length", "0")
        request.end_headers()
    return handle


def redirect_loop(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
    """Redirect every request to a new path, for ever."""
    request.send_response(302)
    request.send_header("Location", f"/hop{k}.ts")
    request.send_header("Content-Length", "0")
    request.end_headers()


def silent(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
    """Accept the connection and never answer (for 30 s)."""
    time.sleep(30)


def live_ts(body: bytes, *, seconds: float = 0.0, hold: float = 30.0) -> Handler:
    """A live MPEG-TS stream: 200 without a length, ``body`` spread over ``seconds``, then nothing for ``hold`` s
    with the connection open (a stalled encoder)."""
    def handle(request: http.server.BaseHTTPRequestHandler, k: int) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "video/mp2t")
        request.end_headers()
        step = 188 * 20
        chunks = range(0, len(body), step)
        for i in chunks:
            request.wfile.write(body[i:i + step])
            time.sleep(seconds / len(chunks))
        time.sleep(hold)
    return handle


class LiveHlsServer(LiveHttpServer):
    """A live HLS playlist at ``url('/live.m3u8')`` over ``segments`` (MPEG-TS files, ``interval`` seconds each).

    ``window`` segments are published at the first request and one more every ``interval`` seconds; the
    playlist shows the last ``window`` (an ``event`` playlist, ``#EXT-X-PLAYLIST-TYPE:EVENT``: every segment
    published); ``#EXT-X-DISCONTINUITY`` precedes segment ``discontinuity_at``. Once all are published it stops
    growing and never ends (no ``#EXT-X-ENDLIST``), as a live encoder that died leaves it; with ``ends`` it then
    gains ``#EXT-X-ENDLIST``, as a live event that is over (``end()``: from then on). ``requests`` lists the paths
    asked.
    """

    def __init__(self, segments: list[Path], *, interval: float = 1.0, window: int = 3,
                 discontinuity_at: int | None = None, ends: bool = False, event: bool = False) -> None:
        self.requests: list[str] = []
        self._t0: float | None = None
        self._segments, self._interval, self._window, self._cut = segments, interval, window, discontinuity_at
        self._ends, self._event = ends, event
        super().__init__(self._handle)

    def end(self) -> None:
        """End the playlist with ``#EXT-X-ENDLIST`` once all segments are published (at once if they are)."""
        self._ends = True

    def _playlist(self) -> bytes:
        self._t0 = self._t0 or time.monotonic()
        published = min(len(self._segments), self._window + int((time.monotonic() - self._t0) / self._interval))
        first = 0 if self._event else max(0, published - self._window)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{max(1, round(self._interval))}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", *["#EXT-X-PLAYLIST-TYPE:EVENT"] * self._event]
        if self._cut is not None:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{int(first >= self._cut)}")
        for i in range(first, published):
            if i == self._cut and first < i:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{self._interval:.3f},", self._segments[i].name]
        if self._ends and published == len(self._segments):
            lines.append("#EXT-X-ENDLIST")
        return ("\n".join(lines) + "\n").encode()

    def _handle(self, request: http.server.BaseHTTPRequestHandler, k: int) -> None:
        self.requests.append(request.path)
        if request.path.endswith(".m3u8"):
            body, kind = self._playlist(), "application/vnd.apple.mpegurl"
        else:
            named = [s for s in self._segments if s.name == request.path.lstrip("/")]
            if not named:
                status(404)(request, k)
                return
            body, kind = named[0].read_bytes(), "video/mp2t"
        request.send_response(200)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
