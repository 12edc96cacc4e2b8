"""Live web view: an HTML page, the annotated MJPEG stream and JSON stats.

Routes (GET; HEAD answers the same status and headers, without the body):
- ``/``            the page (``page.html`` beside this module)
- ``/stream.mjpg`` annotated frames, ``multipart/x-mixed-replace`` JPEGs
- ``/stats.json``  whatever ``stats_fn()`` returns; a run's is :meth:`rtseg.video.metrics.Metrics.snapshot` (FPS
  over the run and over the last 5 s, which falls to 0 while no frame comes, ``last_frame_age_s``: the seconds since
  the last frame, per-stage latency, drops). The page shows them, and over the video "no frame for N s" once
  ``last_frame_age_s`` is 2 s and three frame periods (at ``fps``) or more: the picture is frozen then
- ``/frame.jpg``   the latest annotated frame as one JPEG

The pipeline hands over only the latest frame (``write`` stores a reference
and wakes the viewers, O(1), never blocks on the network). Each frame is
JPEG-encoded at most once, by the first viewer thread that asks for it, and
shared by all viewers; a slow viewer simply skips frames.

Security: binds 127.0.0.1 by default. Any other address needs a token, which
every request must carry as ``?token=...`` or an ``X-Rtseg-Token`` /
``Authorization: Bearer`` header. At most :data:`MAX_CONNECTIONS` connections are served at once (each
has a thread), at most :data:`MAX_PER_CLIENT` of them from one address; one more is answered 503 and
closed, so that a flood of connections (with or without the token) cannot exhaust the process's threads or
memory while it records, nor one client (a slow sender holds its connections) take every viewer's place.

The server and its threads reference what they serve (:class:`_Server`), never the
:class:`WebSink` facade, so a sink dropped without ``close()`` can be collected, and its
finalizer (which also runs at interpreter exit) stops the server and frees the port.
"""
from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import re
import socket
import sys
import threading
import weakref
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from rtseg.errors import ConfigError, SinkError
from rtseg.types import Frame, Prediction

MAX_CONNECTIONS = 64
"""Connections served at once (viewers' streams and requests); more are refused with 503 until some end."""
MAX_PER_CLIENT = 16
"""Connections served at once from one client address (a browser opens at most 6 to one server)."""
_BUSY_TEXT = b"too many viewers; try again later\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
         b"Retry-After: 5\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))
_PAGE = Path(__file__).with_name("page.html")
_BOUNDARY = "rtsegframe"
#: ``[IPv6]:PORT`` (groups 1, 2) or ``HOST:PORT`` (groups 3, 4), the forms of ``--serve``.
_ADDRESS = re.compile(r"\[([^\[\]\s]+)\]:(\d{1,5})|([^\[\]:\s]+):(\d{1,5})")


def parse_address(spec: str) -> tuple[str, int]:
    """(host, port) of ``--serve HOST:PORT`` or ``[IPv6]:PORT`` (port 0: any free one); ConfigError naming the
    option otherwise (no port, a port above 65535, an unbracketed or malformed IPv6 address)."""
    match = _ADDRESS.fullmatch(spec)
    if match is not None:
        v6, host, port = match.group(1), match.group(1) or match.group(3), int(match.group(2) or match.group(4))
        if port <= 65535 and (v6 is None or _is_ipv6(v6)):
            return host, port
    raise ConfigError(f"--serve {spec}: use HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LatestFrame:
    """Latest-frame handoff between the pipeline (writer) and viewer threads."""

    def __init__(self, quality: int) -> None:
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._seq = 0  # increments per written frame; 0 = nothing yet
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._quality = quality
        self._encode_lock = threading.Lock()
        self.closed = False

    def put(self, image: np.ndarray) -> None:
        with self._cond:
            self._image = image
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, bytes] | None:
        """JPEG of a frame newer than ``seq`` (waits up to ``timeout`` s); None on timeout/close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > seq or self.closed, timeout) or self.closed:
                return None
            image, latest = self._image, self._seq
        return self._encoded(image, latest)

    def _encoded(self, image: np.ndarray, seq: int) -> tuple[int, bytes]:
        with self._encode_lock:
            if self._jpeg[0] < seq:
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
                if ok:
                    self._jpeg = (seq, buf.tobytes())
            return self._jpeg


class _Server(ThreadingHTTPServer):
    """The HTTP server and what its handlers serve: the access token, the stats callback and the latest frame."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = MAX_CONNECTIONS  # listen backlog (socketserver's 5 dropped a burst's SYNs: 1 s retries)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """A thread for the connection while the limits leave room (:data:`MAX_CONNECTIONS`,
        :data:`MAX_PER_CLIENT`), else 503 and close on the accepting thread (the short reply fits the socket's
        send buffer, so it never waits)."""
        host = client_address[0]
        with self._count_lock:
            room = self._served < MAX_CONNECTIONS and self._per_client.get(host, 0) < MAX_PER_CLIENT
            if room:
                self._served += 1
                self._per_client[host] = self._per_client.get(host, 0) + 1
        if room:
            try:
                super().process_request(request, client_address)
            except BaseException:  # no thread started (the caller closes the connection)
                self._done(host)
                raise
            return
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)
        self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(client_address[0])

    def _done(self, host: str) -> None:
        """A connection from ``host`` is no longer served."""
        with self._count_lock:
            self._served -= 1
            self._per_client[host] -= 1
            if not self._per_client[host]:
                del self._per_client[host]

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A viewer that disconnects mid-reply is normal: no traceback over the pipeline's console."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"rtseg: warning: web request from {client_address[0]} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)

    def __init__(self, address: tuple[str, int], token: str | None, stats_fn: Callable[[], dict],
                 latest: _LatestFrame) -> None:
        self.token, self.stats_fn, self.latest = token, stats_fn, latest
        self._count_lock = threading.Lock()
        self._served = 0  # connections served now: in all, and per client address
        self._per_client: dict[str, int] = {}
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 20.0  # seconds a client may send nothing / take no data before its connection (and thread) is dropped

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Silence per-request logging (the pipeline owns the console)."""

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = query.get("token", [""])[0] or self.headers.get("X-Rtseg-Token", "")
        auth = self.headers.get("Authorization", "")
        if not given and auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        """What GET answers, without the body: the status and headers (Content-Length of the body GET sends); the
        stream's headers, without frames."""
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        url = urlsplit(self.path)
        if not self._authorised(parse_qs(url.query)):
            self._send(HTTPStatus.FORBIDDEN, b"token required: add ?token=...\n", "text/plain")
            return
        server = self.server
        if server.latest.closed:  # the run has ended: a kept-alive connection must not outlive the server
            self.close_connection = True
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"the run has ended\n", "text/plain")
            return
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, _PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/stats.json":
            try:
                body = json.dumps(server.stats_fn(), default=str).encode()
            except Exception as exc:  # a failing stats callback must not kill the server
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"stats failed: {exc}\n".encode(), "text/plain")
                return
            self._send(HTTPStatus.OK, body, "application/json")
        elif url.path == "/frame.jpg":
            got = server.latest.wait_newer(0, timeout=5.0)
            if got is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
            else:
                self._send(HTTPStatus.OK, got[1], "image/jpeg")
        elif url.path == "/stream.mjpg":
            self._stream(server.latest)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _stream(self, latest: _LatestFrame) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        seq = 0
        try:
            while not latest.closed:
                got = latest.wait_newer(seq, timeout=1.0)
                if got is None:
                    continue
                seq, jpeg = got
                head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the viewer went away


def _bind_problem(exc: OSError) -> str:
    """What went wrong binding the server's address, and what to do (one line)."""
    if exc.errno == errno.EADDRINUSE:
        return "port in use; choose another port"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root); choose a port above 1023"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
        return (f"cannot listen ({exc.strerror}): not an address of this machine; "
                "bind 127.0.0.1, 0.0.0.0 (all interfaces, with --serve-token) or one of this machine's addresses")
    if isinstance(exc, socket.gaierror):
        return f"cannot listen (unknown host: {exc.strerror}); give an IP address such as 127.0.0.1"
    return f"cannot listen ({exc.strerror}); choose another address or port"


def _stop_serving(server: _Server, thread: threading.Thread) -> None:
    """End viewer streams, stop ``server`` (serving on ``thread``) and close its socket, waiting at most 5 s for
    ``thread``: :meth:`WebSink.close`, and the finalizer of a sink dropped unclosed. The garbage collector may run
    that finalizer on ``thread`` itself, which cannot wait for its own loop to end: a helper thread stops it then."""
    if threading.current_thread() is thread:
        threading.Thread(target=_stop_serving, args=(server, thread), name="rtseg-web-stop", daemon=True).start()
        return
    server.latest.close()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5.0)


class WebSink:
    """Serve the live annotated video and stats at ``http://host:port/``.

    host: bind address; anything but loopback requires ``token``.
    port: TCP port (0 picks a free one; see :attr:`port`).
    token: shared secret required on every request when given.
    stats_fn: returns a JSON-serialisable dict (called per ``/stats.json`` request,
        from server threads, so it must be thread-safe; one that references the sink keeps
        an unclosed sink alive).
    jpeg_quality: 1..100.

    A sink dropped without :meth:`close`, or still open at interpreter exit, is closed by a
    finalizer: viewer streams end and the port is free again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        stats_fn: Callable[[], dict] = dict,
        jpeg_quality: int = 80,
    ) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not is_loopback(host) and not token:
            raise SinkError(f"web output {where}: binding a non-loopback address needs a token; "
                            "pass --serve-token T or bind 127.0.0.1")
        self.token = token or None
        self.latest = _LatestFrame(jpeg_quality)
        try:
            server = _Server((host, port), self.token, stats_fn, self.latest)
        except OSError as exc:
            raise SinkError(f"web output {where}: {_bind_problem(exc)}") from None
        self.host, self.port = host, int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="rtseg-web",
                                  daemon=True)
        thread.start()
        self._finalizer = weakref.finalize(self, _stop_serving, server, thread)

    @property
    def url(self) -> str:
        """The page's address (with the token when one is set); for a wildcard bind (0.0.0.0, ::) the
        machine's host name, which other machines can reach, instead of an address a browser cannot open."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Offer ``annotated`` ((H, W, 3) uint8 BGR, not modified afterwards) to the viewers."""
        self.latest.put(annotated)

    def close(self) -> None:
        """End viewer streams and stop the server (idempotent)."""
        self._finalizer()
