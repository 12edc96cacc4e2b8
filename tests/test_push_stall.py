"""Push sink against servers that hang: one that stops reading without closing the connection (a frozen
server, a pulled cable) and one that accepts connections but never answers. Neither may freeze the process
(FFmpeg's connect and writes run in the sink's child process, killed after stall_timeout); a hang after
frames went out is an outage, reconnected within reconnect_timeout; a first connection that hangs is an error.

The hanging server is a real TCP relay on loopback (:class:`_Relay`) in front of real receivers (Debian's ffmpeg
as RTMP/RTSP listener): it carries real sessions until ``freeze()``, then never reads those connections again,
and with ``hold(True)`` accepts new connections without reading them. Its receive buffer is 4 KiB, so that
the sender's writes block after little data.
"""
from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading


def _relay_main(target: int) -> None:
    """The relay process: prints its port, then answers commands (see :class:`_Relay`) on stdin, one a line.
    (Defined before the heavy imports below: the relay runs this file as a script and needs none of them.)"""
    state = {"target": target, "hold": False, "held": 0}
    frozen: list[threading.Event] = []
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    keep: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket, stop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                data = src.recv(4096)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if not stop.is_set():
                    dst.sendall(data)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            keep.append(client)
            if state["hold"]:
                state["held"] += 1
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", state["target"]))
            except OSError:  # no receiver there: the client's connection ends at once
                client.close()
                continue
            keep.append(upstream)
            frozen.append(threading.Event())
            threading.Thread(target=pump, args=(client, upstream, frozen[-1]), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, threading.Event()), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "freeze":
            for event in frozen:
                event.set()
        elif command == "drop":  # end every connection open now (a server restarting)
            for s in keep:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        elif command == "hold":
            state["hold"] = arg[0] == "1"
        elif command == "target":
            state["target"] = int(arg[0])
        print(state["held"], flush=True)


if __name__ == "__main__":
    _relay_main(int(sys.argv[1]))
    sys.exit()

import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
from servers.helpers import FFMPEG, free_port, make_clip, push_receiver, tiny_engine, wait_listening
from test_push import _bar, _feed_until

from rtseg.errors import SinkError
from rtseg.types import Frame
from rtseg.video.pipeline import Pipeline
from rtseg.video.sink_push import PushSink
from rtseg.video.sinks import JsonlSink, Mp4Sink
from rtseg.video.sources import open_source

needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg binary (apt-get install ffmpeg)")
#: "At once" after a stop request: far below the default stall_timeout (10 s) that a stop must not wait for,
#: with room for a loaded 2-core CI machine (1.08 s was seen there beside another job).
STOP_BOUND_S = 3.0


class _Relay:
    """A TCP relay from a loopback port to the receiver listening on port ``target``, in its own process (so
    that nothing the sink does in this process can hold it up).

    ``freeze()``: stop reading every connection open now (they stay open). ``drop()``: end them.
    ``hold(True)``: accept new connections and never read them nor connect them on (a server that accepts but
    never answers). ``retarget(port)``: connect new connections to another receiver. ``held()``: connections
    held so far.
    """

    def __init__(self, target: int | None) -> None:
        self._proc = subprocess.Popen([sys.executable, __file__, str(target or 0)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent)
        self.port = int(self._proc.stdout.readline())

    def _ask(self, line: str) -> str:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        return self._proc.stdout.readline().strip()

    def freeze(self) -> None:
        self._ask("freeze")

    def drop(self) -> None:
        self._ask("drop")

    def hold(self, on: bool) -> None:
        self._ask(f"hold {int(on)}")

    def retarget(self, port: int) -> None:
        self._ask(f"target {port}")

    def held(self) -> int:
        return int(self._ask("held"))

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)


class _Ticker:
    """A thread of this process that notes the time every 20 ms: the longest gap shows whether anything (a
    connect holding the GIL) froze the process."""

    def __init__(self) -> None:
        self._last, self.longest_gap = time.monotonic(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - self._last)
            self._last = now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.longest_gap


def _noise(i: int) -> np.ndarray:
    """Frame ``i``: the white column of :func:`test_push._bar` over noise (incompressible: fills buffers fast)."""
    img = np.random.default_rng(i).integers(0, 200, (240, 320, 3), dtype=np.uint8)
    img[:, (i * 2) % 128] = 255
    return img


@contextlib.contextmanager
def _relayed_sink(tmp_path, scheme: str = "rtmp", **options: float):
    """(relay, sink, events): a PushSink (with ``options``) to a ``scheme`` receiver through a :class:`_Relay`, its
    ``on_event`` lines collected; the relay and the receiver end with the block."""
    port = free_port()
    receiver = push_receiver(scheme, f"{scheme}://127.0.0.1:{port}/live/cam",
                             tmp_path / ("got.flv" if scheme == "rtmp" else "got.mkv"))
    relay = _Relay(port)
    events: list[str] = []
    try:
        wait_listening(port)
        sink = PushSink(f"{scheme}://127.0.0.1:{relay.port}/live/cam", fps_hint=25, **options)
        sink.on_event = events.append
        yield relay, sink, events
    finally:
        relay.close()
        receiver.kill()
        receiver.wait(10)


@needs_ffmpeg
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_reconnects_after_the_server_stops_reading(tmp_path, scheme):
    """The server stops reading mid-run: after stall_timeout the connection is taken down ("lost (the server
    stopped reading for 1.5s)"); the next attempt reaches a listener that accepts but never answers and is cut
    after stall_timeout, without freezing this process; the one after reaches a working receiver ("back"),
    key frame first, the run's clock continued."""
    ext = "flv" if scheme == "rtmp" else "mkv"
    ports = free_port(), free_port()
    receivers = [push_receiver(scheme, f"{scheme}://127.0.0.1:{port}/live/cam", tmp_path / f"{name}.{ext}",
                           copyts=name == "second") for port, name in zip(ports, ("first", "second"))]
    relay = _Relay(ports[0])
    url = f"{scheme}://127.0.0.1:{relay.port}/live/cam"
    events: list[tuple[float, str]] = []
    try:
        wait_listening(ports[0])
        wait_listening(ports[1])
        sink = PushSink(url, fps_hint=25, stall_timeout=1.5, reconnect_timeout=20)
        sink.on_event = lambda line: events.append((time.monotonic(), line))
        i = _feed_until(sink, 0, lambda: sink.sent >= 20, 10, image=_noise)
        relay.hold(True)
        relay.retarget(ports[1])  # where new connections go once they are no longer held
        relay.freeze()
        t_freeze = time.monotonic()
        ticker = _Ticker()
        reached: list[int] = []  # on a thread: the writes block once the queue is full, until the stall is cut
        feeding = threading.Thread(target=lambda: reached.append(_feed_until(sink, i, lambda: events, 15, image=_noise)),
                                   daemon=True)
        feeding.start()
        feeding.join(15)
        assert events and reached
        i = _feed_until(sink, reached[0], lambda: relay.held() >= 1, 10, image=_noise)  # an attempt: accepted, unanswered
        t_held = time.monotonic()
        i = _feed_until(sink, i, lambda: time.monotonic() > t_held + 1.0, 5, image=_noise)
        relay.hold(False)  # the server on the same port works again
        i = _feed_until(sink, i, lambda: len(events) >= 2, 15, image=_noise)
        longest_gap = ticker.stop()
        back_at, sent_at_back = i, sink.sent
        _feed_until(sink, i, lambda: sink.sent >= sent_at_back + 40, 10, image=_noise)
        sink.close()
        time.sleep(1.0)  # what is in flight through the relay reaches the receiver
    finally:
        relay.close()
        for r in receivers:
            r.send_signal(signal.SIGTERM)  # ffmpeg finishes its output file on SIGTERM
            r.communicate(timeout=15)
    lost, back = events[0][1], events[-1][1]
    assert len(events) == 2, events
    assert lost == (f"push output {url} lost (the server stopped reading for 1.5s); reconnecting for up to 20s, "
                    "frames are not pushed meanwhile")
    assert 1.5 <= events[0][0] - t_freeze < 6.0  # the stall began soon after the freeze
    assert back.startswith(f"push output {url} back after ") and "(reconnection 1;" in back, back
    assert sink.reconnects == 1 and sink.dropped > 0
    assert longest_gap < 0.5, longest_gap  # the hung connection attempt froze nothing here
    with av.open(str(tmp_path / f"second.{ext}")) as c:
        frames = list(c.decode(c.streams.video[0]))
    assert len(frames) >= 30 and frames[0].key_frame
    x = int(frames[0].to_ndarray(format="bgr24").mean(axis=(0, 2)).argmax())  # the white column: which frame
    candidates = [k for k in range(reached[0] - 1, back_at + 1) if (k * 2) % 128 == x]  # written while lost
    assert candidates, (x, reached[0], back_at)
    if scheme == "rtmp":  # FLV carries the sender's timestamps: they continue the run's clock
        assert round(frames[0].time * 25) in candidates, (frames[0].time, candidates)


@needs_ffmpeg
@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_a_server_that_stops_reading_takes_only_a_few_more_frames(tmp_path, scheme):
    """The server stops reading, keeping the connection: the kernel went on taking the stream into the connection's
    send buffer, which Linux grows to 4 MB (~2.8 MB taken: 67 to 69 frames of this incompressible clip, 4 to 40 s
    of an ordinary stream), before a write blocked and the stall timeout began: with the default stall timeout
    (10 s) the outage was announced 17 to 29 s after the server stopped. Now the kernel holds at most
    UNSENT_BYTES unsent: a frame or two more (11 to 13 s)."""
    with _relayed_sink(tmp_path, scheme, stall_timeout=1.5) as (relay, sink, events):
        i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10, image=_noise)
        relay.freeze()
        taken = sink.sent
        feeding = threading.Thread(target=_feed_until, args=(sink, i, lambda: events, 60), kwargs={"image": _noise},
                                   daemon=True)
        feeding.start()  # (the writes block while the queue is full, until the stall is cut)
        feeding.join(60)
        taken = sink.sent - taken
        sink.interrupt()
        sink.close()
    assert len(events) == 1 and "lost (the server stopped reading for 1.5s)" in events[0], events
    assert taken <= 8, taken


@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
def test_push_first_connection_to_a_server_that_never_answers_fails(scheme):
    """A listener that accepts but never answers (no receiver behind it): the first connection is not retried;
    the one-line error comes after stall_timeout, and meanwhile this process runs on (over RTMP, FFmpeg's
    connect holds the GIL until it is answered: in this process, it froze every thread for ever)."""
    relay = _Relay(None)
    relay.hold(True)
    url = f"{scheme}://user:secret@127.0.0.1:{relay.port}/live/cam"
    try:
        sink = PushSink(url, stall_timeout=1.0)
        ticker = _Ticker()
        t0 = time.monotonic()
        with pytest.raises(SinkError) as e:  # by the first write, which waits for the first connection
            img = _bar(0)
            sink.write(Frame(img, pts=0.0), None, img)
        took, longest_gap = time.monotonic() - t0, ticker.stop()
        with pytest.raises(SinkError):
            sink.close()
        held = relay.held()
    finally:
        relay.close()
    assert str(e.value) == (f"push output {scheme}://***@127.0.0.1:{relay.port}/live/cam: send failed (no answer "
                            "from the server for 1s); is the server running and accepting this path?")
    assert 1.0 <= took < 3.0 and longest_gap < 0.5 and held == 1, (took, longest_gap, held)


def test_a_first_connection_that_never_answers_ends_the_run_and_leaves_earlier_outputs_as_they_were(tmp_path):
    """The push's first connection hangs (a server that accepts and never answers): the run ends with the push's
    line after stall_timeout, before any other output got a frame, so the recordings of an earlier run are as they
    were. (The other outputs recorded on meanwhile, as far as the push's queue let them, and their stubs replaced
    a.mp4 and a.jsonl.)"""
    clip = make_clip(tmp_path / "clip.mp4", frames=30, width=96, height=64)
    earlier = {"a.mp4": b"an earlier recording", "a.jsonl": b'{"seq":0}\n'}
    for name, data in earlier.items():
        (tmp_path / name).write_bytes(data)
    relay = _Relay(None)
    relay.hold(True)
    url = f"rtmp://127.0.0.1:{relay.port}/live/cam"
    try:
        sinks = [Mp4Sink(tmp_path / "a.mp4", fps_hint=10), JsonlSink(tmp_path / "a.jsonl"),
                 PushSink(url, stall_timeout=1.0)]
        pipeline = Pipeline(source=open_source(str(clip)), engine=tiny_engine(), sinks=sinks)
        with pytest.raises(SinkError) as e:
            pipeline.run()
    finally:
        relay.close()
    assert str(e.value) == (f"push output {url}: send failed (no answer from the server for 1s); is the server "
                            "running and accepting this path?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.mp4", "clip.mp4"]
    assert {name: (tmp_path / name).read_bytes() for name in earlier} == earlier


@needs_ffmpeg
def test_stop_request_during_a_stall_ends_at_once(tmp_path):
    """Ctrl-C while the server has stopped reading (stall_timeout 10 s, not reached): interrupt() cuts the send
    at once (it has made no progress for over 0.5 s); the writer blocked on the full queue is released, close()
    does not wait, no error."""
    with _relayed_sink(tmp_path) as (relay, sink, events):
        i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10, image=_noise)
        relay.freeze()
        stuck_at = []

        def feed() -> None:
            for k in range(i, i + 400):
                t = time.monotonic()
                img = _noise(k)
                sink.write(Frame(img, seq=k, pts=k / 25), None, img)
                if time.monotonic() - t > 0.5:
                    stuck_at.append(k)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(3.0)  # the send hangs; the pipeline's writer waits on the full queue
        t0 = time.monotonic()
        sink.interrupt()
        feeder.join(5)
        assert not feeder.is_alive()
        sink.close()
        t_end = time.monotonic() - t0
    assert stuck_at, "the writer never waited: the relay did not stall the connection"
    assert t_end < STOP_BOUND_S, t_end
    assert len(events) == 1 and events[0].startswith(
        f"push output rtmp://127.0.0.1:{relay.port}/live/cam lost (the server stopped reading for "), events
    assert events[0].endswith("s) while ending; the rest is not pushed"), events


@needs_ffmpeg
@pytest.mark.parametrize("first", [True, False], ids=["first-connection", "reconnection"])
def test_stop_request_during_a_hung_connection_attempt_ends_at_once(tmp_path, first):
    """Ctrl-C while a connection attempt hangs on a server that never answers (stall_timeout 10 s, not reached):
    interrupt() cuts it; close() returns at once (STOP_BOUND_S). A first connection never made is the run's error
    (raised by the first write, which waits for that connection, on a thread here); a reconnection cut short is
    not (the outage was announced)."""
    with _relayed_sink(tmp_path) as (relay, sink, events):
        if first:
            relay.hold(True)
            failed: list[BaseException] = []

            def write_first() -> None:
                img = _bar(0)
                try:
                    sink.write(Frame(img, pts=0.0), None, img)
                except BaseException as exc:
                    failed.append(exc)

            writer = threading.Thread(target=write_first, daemon=True)
            writer.start()
        else:
            i = _feed_until(sink, 0, lambda: sink.sent >= 10, 10, image=_noise)
            relay.hold(True)
            relay.drop()  # the server restarts and then hangs: the reconnection attempt is accepted, unanswered
            _feed_until(sink, i, lambda: events, 10, image=_noise)
        deadline = time.monotonic() + 10
        while relay.held() < 1:
            assert time.monotonic() < deadline, "no connection attempt reached the relay"
            time.sleep(0.05)
        time.sleep(1.0)
        t0 = time.monotonic()
        sink.interrupt()
        if first:
            writer.join(STOP_BOUND_S + 5)
            assert not writer.is_alive() and len(failed) == 1 and isinstance(failed[0], SinkError), failed
            assert re.fullmatch(r".*: send failed \(no answer from the server for \d\.\ds\); .*", str(failed[0]))
            with pytest.raises(SinkError) as again:
                sink.close()
            assert str(again.value) == str(failed[0])
        else:
            sink.close()
        t_end = time.monotonic() - t0
    assert t_end < STOP_BOUND_S, t_end
    assert sink.reconnects == 0 and len(events) == (0 if first else 1), events
