"""The push sink's network side in a child process, which the sink can kill when the server hangs.

FFmpeg's network calls cannot be cut short from Python: PyAV opens an output connection (TCP connect,
RTMP handshake) holding the GIL with no timeout, so a server that accepts but never answers froze the
whole process (every thread, Ctrl-C, SIGTERM); and a write to a server that stopped reading blocks
for ever. Here they run in a child process that only muxes packets the parent encoded; the parent
(:class:`PushWorker`) kills it when a packet is not taken within a time limit.

The child runs this file as a script (``python push_worker.py FD PARENT_PID``), not through
:mod:`multiprocessing`: a spawned child imports its target's package, ``rtseg``, and so torch (1.4 s,
~700 MB each time on the 2-core dev machine); this file needs only the standard library and PyAV
(~0.1 s, ~35 MB). Both are fresh interpreters: no fork of the threaded parent.

Protocol over a socket pair. Parent → child: a header (:data:`_HEADER`: kind, payload size, pts, dts)
and its payload: ``o`` open (JSON: url, format, options, width, height, rate; the connection is made
with the first packet), ``k`` / ``p`` a key / other H.264 packet (Annex B, SPS/PPS in the first,
pts/dts in 1/90000 s), ``e`` end the stream. Child → parent, one line each: ``ready`` (PyAV
imported), ``ok`` (a packet handed to the server), ``closed`` (stream ended), ``error REASON`` (the
child exits; REASON may name the URL).

"Handed to the server" is "queued in the kernel": once connected, the child keeps at most
:data:`UNSENT_BYTES` there unsent (:func:`_limit_unsent`), so that a server that stops reading blocks the
next packet soon, not after the send buffer filled.
"""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction

import av

_HEADER = struct.Struct("<cIqq")  # kind, payload bytes, pts, dts (_NOPTS: none)
_NOPTS = -(2**63)
_TIME_BASE = Fraction(1, 90_000)  # rtseg.video.h264.TIME_BASE (not imported: the child must not import rtseg)
_POLL = 0.05  # seconds between checks of the time limit while waiting on the child
#: Bytes of the stream the kernel may hold unsent on the connection (TCP_NOTSENT_LOWAT; the data in flight, which
#: a fast long link needs, is not limited by it). Without it the send buffer, which Linux grows to 4 MB, took
#: ~2.8 MB before a write blocked when the server stopped reading: 4 to 40 s of a 0.6 to 5 Mbit/s stream before
#: the stall timeout even began.
UNSENT_BYTES = 64 * 1024


class WorkerFailed(Exception):
    """The child reported an error or died: ``str(exc)`` is the reason in one line (may name the URL)."""


class WorkerStalled(Exception):
    """The child made no progress for ``waited`` seconds and was killed; ``taken``: packets taken before."""

    def __init__(self, waited: float, taken: int) -> None:
        super().__init__(f"no progress for {waited:.1f}s")
        self.waited, self.taken = waited, taken


class PushWorker:
    """One connection to the server: a child process that muxes the packets it is given.

    Start it early (spawning and importing PyAV take ~0.1 s); :meth:`open` then :meth:`send` packets,
    each waiting until the child has handed it to the server; :meth:`end` ends the stream; :meth:`kill`
    at any time. Start it from the thread that outlives it: on Linux the child is killed when the
    starting thread ends (``PR_SET_PDEATHSIG``), so no child outlives a crashed parent.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:  # a session of its own: the terminal's Ctrl-C is the parent's to handle (a stop request
            # still sends what is queued)
            self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(theirs.fileno()),
                                           str(os.getpid())], pass_fds=(theirs.fileno(),),
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        ours.setblocking(False)
        self._sock = ours
        self._selector = selectors.DefaultSelector()  # poll / epoll: no limit on descriptor numbers, unlike select
        self._selector.register(ours, selectors.EVENT_READ)
        self._lines = b""  # the start of a line the child has not finished writing
        self._out = b""  # a queued open message
        self.taken = 0  # packets the server has taken on this connection

    def open(self, *, url: str, format: str, options: dict[str, str], width: int, height: int,
             rate: Fraction) -> None:
        """Queue the stream's description (no waiting: the connection is made with the first packet)."""
        spec = {"url": url, "format": format, "options": options, "width": width, "height": height,
                "rate": [rate.numerator, rate.denominator]}
        self._out = _message(b"o", json.dumps(spec).encode())

    def send(self, packet: av.Packet, limit: Callable[[], float]) -> None:
        """Hand ``packet`` (time base 1/90000) to the server; :exc:`WorkerStalled` once the child has made no
        progress for ``limit()`` seconds (read again while waiting), :exc:`WorkerFailed` if it failed."""
        kind = b"k" if packet.is_keyframe else b"p"
        self._exchange(_message(kind, bytes(packet), packet.pts, packet.dts), b"ok", limit)
        self.taken += 1

    def end(self, limit: Callable[[], float]) -> None:
        """End the stream (the muxer's trailer, the connection closed) and let the child exit."""
        self._exchange(_message(b"e"), b"closed", limit)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(1.0)
        self.kill()

    def kill(self) -> None:
        """End the child now (idempotent); whatever it was sending is cut."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._selector.close()
        self._sock.close()

    def _exchange(self, message: bytes, answer: bytes, limit: Callable[[], float]) -> None:
        """Send ``message`` (after a queued open), then wait for the line ``answer``."""
        out = memoryview(self._out + message)
        self._out = b""
        since = time.monotonic()  # of the last progress: a line from the child or bytes it read
        while True:
            for line in self._read_lines():
                since = time.monotonic()
                if line.startswith(b"error "):
                    self.kill()
                    raise WorkerFailed(line[6:].decode(errors="replace"))
                if line == answer and not out:
                    return
            if self._sock.fileno() < 0:  # the child closed its end
                status = self._proc.wait()
                self.kill()
                raise WorkerFailed(f"the push process ended (exit status {status})")
            waited, allowed = time.monotonic() - since, limit()
            if waited >= allowed:
                self.kill()
                raise WorkerStalled(waited, self.taken)
            self._selector.modify(self._sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
            ready = self._selector.select(min(_POLL, allowed - waited))
            if any(events & selectors.EVENT_WRITE for _, events in ready):
                with contextlib.suppress(BlockingIOError, InterruptedError, BrokenPipeError, ConnectionResetError):
                    sent = self._sock.send(out)
                    out = out[sent:]
                    since = time.monotonic()

    def _read_lines(self) -> list[bytes]:
        """Complete lines the child has written so far; on end of file the socket is closed (fileno -1)."""
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self._sock.close()
            return []
        *lines, self._lines = (self._lines + data).split(b"\n")
        return lines


def _message(kind: bytes, payload: bytes = b"", pts: int | None = None, dts: int | None = None) -> bytes:
    return _HEADER.pack(kind, len(payload), _NOPTS if pts is None else pts, _NOPTS if dts is None else dts) + payload


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the parent's starting thread ends, so that no child hung on a dead
    server outlives a crashed parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent was gone before prctl
            os._exit(1)


def _limit_unsent(own: int) -> None:
    """Set :data:`UNSENT_BYTES` as the unsent limit of the connection FFmpeg opened. FFmpeg has no option for it,
    and PyAV passes no options to the connection anyway (it opens the output with ``avio_open``; the RTSP muxer's
    TCP connection takes only its ``timeout``): the socket is found among the open descriptors, as any TCP socket
    but the standard streams and ``own`` (the parent's socket pair), the only ones the child inherits. Where the
    system has no such option (or no descriptor list), nothing changes."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    listing = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
    if option is None or listing is None:
        return
    for name in os.listdir(listing):
        if int(name) in (0, 1, 2, own):
            continue
        try:
            conn = socket.socket(fileno=int(name))
        except OSError:  # not a socket (or closed since the listing)
            continue
        try:
            if conn.family in (socket.AF_INET, socket.AF_INET6) and conn.type == socket.SOCK_STREAM:
                conn.setsockopt(socket.IPPROTO_TCP, option, UNSENT_BYTES)
        finally:
            conn.detach()  # FFmpeg's descriptor: never closed here


def _child(fd: int) -> None:
    """The child's loop: answer the parent's messages until ``e`` or the parent is gone."""
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("rb")
    sock.sendall(b"ready\n")
    container = stream = None
    limited = False  # the connection's unsent limit set
    try:
        while True:
            header = reader.read(_HEADER.size)
            if len(header) < _HEADER.size:
                os._exit(0)  # the parent is gone; nothing to finish
            kind, size, pts, dts = _HEADER.unpack(header)
            payload = reader.read(size)
            if kind == b"o":
                spec = json.loads(payload)
                container = av.open(spec["url"], "w", format=spec["format"], options=spec["options"])
                stream = container.add_mux_stream("h264", rate=Fraction(*spec["rate"]), width=spec["width"],
                                                  height=spec["height"])
                stream.time_base = _TIME_BASE
            elif kind == b"e":
                container.close()
                sock.sendall(b"closed\n")
                return
            else:
                packet = av.Packet(payload)
                packet.stream = stream
                packet.time_base = _TIME_BASE
                packet.pts, packet.dts = (None if v == _NOPTS else v for v in (pts, dts))
                packet.is_keyframe = kind == b"k"
                container.mux(packet)
                if not limited:  # PyAV connects at the first packet (RTMP and RTSP alike)
                    _limit_unsent(fd)
                    limited = True
                sock.sendall(b"ok\n")
    except Exception as exc:  # noqa: BLE001 - every failure is one line to the parent (FFmpeg's, or a bug's)
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not isinstance(exc, (av.error.FFmpegError, OSError, ValueError)):
            reason = f"{type(exc).__name__}: {reason}"
        try:
            sock.sendall(f"error {reason}\n".encode())
        finally:
            os._exit(1)  # not closing the container: its trailer could block on the broken connection


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[2]))
    _child(int(sys.argv[1]))
