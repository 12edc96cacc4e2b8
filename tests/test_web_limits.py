"""The live web page's server under a flood of connections (a real server on loopback, real sockets)."""
from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from rtseg.serve import server
from rtseg.serve.server import WebSink
from rtseg.types import Frame


def _busy_reply(port: int) -> bytes:
    """What the server answers a new connection that sends nothing (read until it closes, at most 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
        data = b""
        while chunk := extra.recv(4096):
            data += chunk
    return data


LIMIT = 8  # MAX_CONNECTIONS for these tests (64 by default): the same code, fewer sockets


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    monkeypatch.setattr(server, "MAX_CONNECTIONS", LIMIT)
    monkeypatch.setattr(server, "MAX_PER_CLIENT", LIMIT)


def test_connections_over_the_limit_get_503_and_the_others_keep_streaming():
    """Each connection had a thread, without limit: thousands of idle sockets (the token is checked only after
    a request arrives) made as many threads in the recording process. Now the one over the limit is told 503 at
    once and closed, the streams already open keep their frames, and a slot freed is served again."""
    sink = WebSink("127.0.0.1", 0)
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            image = np.full((24, 32, 3), i % 256, np.uint8)
            sink.write(Frame(image, seq=i), None, image)
            i += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    held: list[socket.socket] = []
    try:
        for _ in range(LIMIT):
            conn = socket.create_connection(("127.0.0.1", sink.port), timeout=10)
            conn.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(conn)
        for conn in held:  # every one of them is being served: each has its stream's first bytes
            assert conn.recv(15).startswith(b"HTTP/1.1 200"), "a stream within the limit was not served"
        threads = threading.active_count()
        t0 = time.monotonic()
        for _ in range(20):
            reply = _busy_reply(sink.port)
            assert reply.startswith(b"HTTP/1.1 503 ") and reply.endswith(b"too many viewers; try again later\n")
        assert time.monotonic() - t0 < 5  # answered at once, not after the 20-s idle timeout
        assert threading.active_count() <= threads  # no thread per refused connection
        held[0].settimeout(10)
        assert b"--rtsegframe" in held[0].recv(1 << 16)  # the open streams still get frames
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the freed slot serves a new viewer (its thread ends a moment after the close)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/frame.jpg", timeout=10) as resp:
                    assert resp.status == 200 and resp.read(2) == b"\xff\xd8"
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline, exc
                time.sleep(0.1)
    finally:
        stop.set()
        feeder.join(5)
        for conn in held:
            conn.close()
        sink.close()


@pytest.mark.parametrize("flood", [LIMIT * 8])
def test_a_flood_of_silent_connections_leaves_the_page_reachable_once_it_ends(flood):
    """Connections that send nothing take the slots until they close (or the 20-s idle timeout): once the
    flood's sockets close, the page is served again (the slots were all given back)."""
    sink = WebSink("127.0.0.1", 0)
    try:
        socks = [socket.create_connection(("127.0.0.1", sink.port), timeout=10) for _ in range(flood)]
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/stats.json", timeout=10) as resp:
                    assert resp.status == 200
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline, exc
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while sink_threads() > 1:  # the serving loop only: every connection's thread has ended
            assert time.monotonic() < deadline, sink_threads()
            time.sleep(0.1)
    finally:
        sink.close()


def sink_threads() -> int:
    """Threads of web servers in this process (the serving loop is named rtseg-web; connection threads are
    socketserver's, named after their function)."""
    return sum(t.name == "rtseg-web" or "process_request_thread" in t.name for t in threading.enumerate())


def test_one_client_cannot_take_every_place(monkeypatch):
    """Connections that trickle a byte now and then stay under the idle timeout: from one address they took all
    the places, and a viewer with the token got 503 for as long as they lasted (review). Now one address has at
    most MAX_PER_CLIENT of them; another address (127.0.0.2, also loopback) is still served."""
    monkeypatch.setattr(server, "MAX_PER_CLIENT", 3)
    sink = WebSink("127.0.0.1", 0)
    slow = [socket.create_connection(("127.0.0.1", sink.port), timeout=10) for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"GET /stats.json HTTP/1.1\r\n")  # half a request: its thread waits for the rest
        assert _busy_reply(sink.port).startswith(b"HTTP/1.1 503 ")  # a 4th from the same address
        with socket.create_connection(("127.0.0.1", sink.port), timeout=10, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /stats.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(15) == b"HTTP/1.1 200 OK"
    finally:
        for s in slow:
            s.close()
        sink.close()
