"""A video read from a pipe or FIFO (``producer | rtseg --source /dev/stdin``, ``mkfifo``) whose writer stalls: a real
FIFO or pipe fed by a real writer that sends part of an MPEG-TS clip, then nothing while it holds the pipe open; or a
FIFO no writer opens (for a while, or ever).

FFmpeg's own read waited on such a pipe for ever: neither a stop request (Ctrl-C, SIGTERM) nor a second Ctrl-C ended
the run, only SIGKILL (leaving ``X.partial.mp4``). The command-line tests signal a real ``python -m rtseg``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.video.pipe_reader import PipeReader
from rtseg.video.sources import open_source
from servers.helpers import clip_colour, make_clip

REPO = Path(__file__).resolve().parents[1]
FRAMES = 60  # of the clip, at 10 FPS


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    """:data:`FRAMES` frames of ``clip_colour(i)``, 64x48 H.264 in MPEG-TS (a key frame every 5)."""
    return make_clip(tmp_path_factory.mktemp("pipe") / "clip.ts", frames=FRAMES, fmt="mpegts").read_bytes()


def _stalling_writer(fifo: Path, first: bytes, go_on: threading.Event, rest: bytes = b"") -> None:
    """A producer in a daemon thread: opens ``fifo`` (waiting for its reader), writes ``first``, then nothing while it
    holds the FIFO open, until ``go_on`` is set (or 60 s passed); then ``rest``, and the end."""
    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
            pipe.write(first)
            pipe.flush()
            go_on.wait(60)
            pipe.write(rest)

    threading.Thread(target=write, daemon=True).start()


class _Reading:
    """``open_source(fifo, **options)`` iterated in a daemon thread (a hang fails the test, not the suite): the
    source, its frames, its events from its opening on (``stalled`` is set at the first that says the pipe sent no
    data for the read timeout: stalled, or has no writer yet) and its error."""

    def __init__(self, fifo: Path, **options: float | bool) -> None:
        self.source = None
        self.frames: list = []
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.stalled = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(fifo, options), daemon=True)
        self._thread.start()

    def _read(self, fifo: Path, options: dict) -> None:
        try:
            with open_source(str(fifo), **options, on_event=self._event) as self.source:
                self.frames.extend(self.source)
        except BaseException as exc:
            self.error = exc

    def _event(self, line: str) -> None:
        self.events.append(line)
        if "(no data for" in line:
            self.stalled.set()

    def ended(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _in_order(frames: list) -> bool:
    """The frames are the clip's first ones, in order, at their times and colours."""
    return [f.pts for f in frames] == pytest.approx([i / 10 for i in range(len(frames))]) and all(
        np.abs(f.image.reshape(-1, 3).mean(axis=0) - clip_colour(i)).max() < 6 for i, f in enumerate(frames))


@pytest.mark.parametrize("realtime", [False, True])
def test_a_stop_request_ends_the_wait_for_a_writer_that_stalled(clip, tmp_path, realtime):
    """The writer sent all of the clip and stalls, holding the FIFO open: request_stop() (what Ctrl-C and SIGTERM do
    in the pipeline) changed nothing, the read waited inside FFmpeg for ever. Now the source ends at once, without
    an error, with every frame the decoder gave out before; also when replayed in real time (``--realtime``: the
    request reaches the file source under the pacing)."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    go_on = threading.Event()
    _stalling_writer(fifo, clip, go_on)
    reading = _Reading(fifo, read_timeout=0.2, realtime=realtime)
    try:
        reading.stalled.wait(30)
        reading.source.request_stop()
        assert reading.ended(10), "the source kept waiting for the stalled writer"
    finally:
        go_on.set()
    assert reading.error is None and reading.stalled.is_set(), (reading.error, reading.events)
    assert reading.frames and _in_order(reading.frames)


@pytest.mark.parametrize("reconnect, limit, warned", [(1.0, "1", True), (0.0, "0.2", False)])
def test_a_writer_that_stays_stalled_ends_the_source_after_the_reconnect_timeout(clip, tmp_path, reconnect, limit,
                                                                                  warned):
    """No signal: the source waited for ever. Now, as for a live stream that stays lost, it says so after the read
    timeout and ends after the reconnect timeout (at least the read timeout) without data, in one line, once the
    frames the decoder held came out: here every frame of the clip the writer sent."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    go_on = threading.Event()
    _stalling_writer(fifo, clip, go_on)
    reading = _Reading(fifo, read_timeout=0.2, reconnect_timeout=reconnect)
    try:
        assert reading.ended(30), "the source kept waiting for the stalled writer"
    finally:
        go_on.set()
    assert isinstance(reading.error, SourceError), reading.error
    assert str(reading.error) == (f"pipe {fifo} sent no data for {limit}s: its writer stalled; check the program "
                                  "writing to it, or allow longer waits with --reconnect-timeout")
    assert reading.events == [f"pipe {fifo} stalled (no data for 0.2s); waiting for its writer for up to 1s"] * warned
    assert len(reading.frames) == FRAMES and _in_order(reading.frames)


@pytest.mark.parametrize("when", ["opening", "reading"])
def test_a_writer_that_goes_on_after_a_stall_is_read_to_its_end(clip, tmp_path, when):
    """The stall is said when it begins and when it ends, also when it began while the source was opened (after
    two MPEG-TS packets, inside FFmpeg's probe of the format: nothing was said); every frame comes out, once, in
    order."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    go_on = threading.Event()
    split = 2 * 188 if when == "opening" else len(clip) * 2 // 3
    _stalling_writer(fifo, clip[:split], go_on, clip[split:])
    reading = _Reading(fifo, read_timeout=0.2, reconnect_timeout=30)
    try:
        reading.stalled.wait(30)
    finally:
        go_on.set()
    assert reading.ended(30), "the source did not end with its writer"
    assert reading.error is None, reading.error
    assert len(reading.events) == 2 and reading.events[0] == (
        f"pipe {fifo} stalled (no data for 0.2s); waiting for its writer for up to 30s"), reading.events
    assert re.fullmatch(rf"pipe {re.escape(str(fifo))} back after \d+\.\ds", reading.events[1]), reading.events
    assert len(reading.frames) == FRAMES and _in_order(reading.frames)


@pytest.mark.parametrize("sent, state, why", [
    (None, "has no writer yet, or a silent one", "no program wrote to it, or its writer stalled"),
    (0, "has no writer yet, or a silent one", "no program wrote to it, or its writer stalled"),
    (2, "stalled", "its writer stalled")], ids=["no writer", "silent writer", "2 packets"])
def test_a_writer_that_stalls_while_the_source_is_opened_is_warned_of(clip, tmp_path, sent, state, why):
    """The writer opens the FIFO and sends nothing, or two MPEG-TS packets (188 bytes each), then stays silent: the
    source is still being opened (FFmpeg probes the format). Only the final error came, after the reconnect timeout;
    the warning after the read timeout was lost (the callback was set once the source had opened). Now both come.
    No writer at all: the source waited for ever, without a word (in the FIFO's open); now the same rules."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    go_on = threading.Event()
    if sent is not None:
        _stalling_writer(fifo, clip[:sent * 188], go_on)
    reading = _Reading(fifo, read_timeout=0.2, reconnect_timeout=1.0)
    try:
        assert reading.ended(30), "the source kept waiting for the stalled writer"
    finally:
        go_on.set()
    assert reading.source is None and isinstance(reading.error, SourceError), reading.error
    assert str(reading.error) == (f"pipe {fifo} sent no data for 1s: {why}; check the program writing to it, or "
                                  "allow longer waits with --reconnect-timeout")
    assert reading.events == [f"pipe {fifo} {state} (no data for 0.2s); waiting for its writer for up to 1s"]


def _writer_after(fifo: Path, data: bytes, start: threading.Event) -> None:
    """A producer in a daemon thread: once ``start`` is set (or 60 s passed), opens ``fifo``, writes ``data`` and
    closes it."""
    def write() -> None:
        start.wait(60)
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
            pipe.write(data)

    threading.Thread(target=write, daemon=True).start()


def test_a_writer_that_comes_after_the_warning_is_read_to_its_end(clip, tmp_path):
    """No writer for the read timeout: the source waited in the FIFO's open, without a word. Now it says so, and
    says when the first data came; every frame comes out, once, in order."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    reading = _Reading(fifo, read_timeout=0.2, reconnect_timeout=30)
    _writer_after(fifo, clip, reading.stalled)
    assert reading.ended(30), "the source did not end with its writer"
    assert reading.error is None, reading.error
    assert len(reading.events) == 2 and reading.events[0] == (
        f"pipe {fifo} has no writer yet, or a silent one (no data for 0.2s); waiting for its writer for up to 30s"
    ), reading.events
    assert re.fullmatch(rf"pipe {re.escape(str(fifo))} sent its first data after \d+\.\ds", reading.events[1]), \
        reading.events
    assert len(reading.frames) == FRAMES and _in_order(reading.frames)


def test_a_writer_that_comes_after_the_warning_and_sends_nothing_is_an_empty_input(tmp_path):
    """A writer that opens the FIFO and closes it without writing, after the source warned that none came: the
    input is empty (as with such a writer at once), said at once, not after the reconnect timeout."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    reading = _Reading(fifo, read_timeout=0.2, reconnect_timeout=30)
    _writer_after(fifo, b"", reading.stalled)
    assert reading.ended(20), "the source did not end with its writer"
    assert isinstance(reading.error, SourceError) and str(reading.error).startswith(
        f"cannot read video file {fifo}: "), reading.error
    assert reading.events == [
        f"pipe {fifo} has no writer yet, or a silent one (no data for 0.2s); waiting for its writer for up to 30s"]


def test_a_stop_request_ends_the_wait_for_a_first_writer(tmp_path):
    """A FIFO no writer opened: the read waited in the FIFO's open, which a stop request could not end. Now the
    read ends as at the input's end, without a failure, once ``stop`` is set."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    stop, warned, got = threading.Event(), threading.Event(), []
    reader = PipeReader(str(fifo), stop=stop, warn_s=0.2, limit_s=60, on_event=lambda line: warned.set())
    reading = threading.Thread(target=lambda: got.append(reader.read(4096)), daemon=True)
    reading.start()
    try:
        assert warned.wait(30), "the read never warned that no data came"
        stop.set()
        reading.join(10)
        assert not reading.is_alive(), "the read kept waiting for a writer"
        assert got == [b""] and reader.failure is None and reader.read(4096) == b""
    finally:
        reader.close()


@pytest.mark.parametrize("when", ["opening", "reading"])
def test_ctrl_c_while_the_source_waits_for_a_stalled_writer_is_a_keyboard_interrupt(clip, tmp_path, capfd, when):
    """Ctrl-C in the thread that opens or reads the source (the main thread) while it waits for a FIFO whose writer
    sends nothing (at all, or after the clip): FFmpeg's read took no notice, the source waited on until the writer
    gave up. A KeyboardInterrupt raised in a file object's read is printed and dropped by PyAV (which then reads on):
    it must come out of the source as itself."""
    fifo = tmp_path / "in.ts"
    os.mkfifo(fifo)
    over = threading.Event()  # set by the test once the source is done with
    gave_up = threading.Event()  # set by the writer when it closes the FIFO without having seen the wait (20 s)
    main = threading.main_thread()

    def write() -> None:
        with open(fifo, "wb") as pipe:  # the source's open returns: it waits for data
            pipe.write(clip if when == "reading" else b"")
            pipe.flush()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not over.is_set():
                frame = sys._current_frames().get(main.ident)
                waiting = frame is not None and frame.f_code.co_name == "_waited"  # in the pipe's read
                if waiting and (frames or when == "opening"):  # (reading: all the data is there: a wait is the stall)
                    signal.pthread_kill(main.ident, signal.SIGINT)
                    over.wait(20)
                    return
                time.sleep(0.02)
            gave_up.set()

    frames: list = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=write, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with open_source(str(fifo)) as source:
                for frame in source:
                    frames.append(frame)
        assert not gave_up.is_set(), "the source never waited where Ctrl-C could end the wait"
    finally:
        over.set()
        signal.signal(signal.SIGINT, previous)
    assert "Exception ignored" not in capfd.readouterr().err
    assert (len(frames) > 0) == (when == "reading") and _in_order(frames)


# --- the command line: a real `python -m rtseg` signalled while its pipe is stalled ---

def _rtseg(source: str, out: Path, *more: str, stdin: int | None = None,
           shell: str | None = None) -> subprocess.Popen:
    """``python -m rtseg`` (the fast SLIC engine) from ``source`` to ``out``.mp4 and ``out``.jsonl; the binary ``stdin``
    (a pipe to it with subprocess.PIPE); run by ``sh -c shell`` (e.g. ``exec "$@" <&-``) when given."""
    command = [sys.executable, "-m", "rtseg", "--source", source, "--engine", "slic", "--segments", "20",
               "--no-progress", "--output", f"{out}.mp4", "--json", f"{out}.jsonl", *more]
    return subprocess.Popen(["sh", "-c", shell, "sh", *command] if shell else command,
                            cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _stderr_at_end(proc: subprocess.Popen, go_on: threading.Event | None = None) -> str:
    """What ``proc`` wrote to stderr by its end (within 60 s; killed after), then ``go_on`` set (a stalled writer
    let go)."""
    try:
        return proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
        if go_on is not None:
            go_on.set()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _until_stalled(jsonl: Path, proc: subprocess.Popen) -> None:
    """Wait until the run wrote frames and then no more for 1.5 s: its source waits for the stalled writer."""
    seen, since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if _lines(jsonl) != seen:
            seen, since = _lines(jsonl), time.monotonic()
        elif seen > 0 and time.monotonic() - since > 1.5:
            return
        time.sleep(0.1)
    raise AssertionError(f"no frame was written, or the run ended (exit {proc.poll()})")


def _open_files(pid: int) -> list[str]:
    """The paths of the files process ``pid`` holds open."""
    paths = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # (closed meanwhile)
            paths.append(os.readlink(fd))
    return paths


def _mp4_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("kind, signum", [("fifo", signal.SIGTERM), ("stdin", signal.SIGINT)])
def test_a_signal_stops_a_run_whose_pipe_stalled_and_finalises_its_outputs(clip, tmp_path, kind, signum):
    """SIGINT / SIGTERM to a run whose FIFO (or standard input, a pipe) stalled: ignored, as was a second Ctrl-C;
    only SIGKILL ended it, leaving o.partial.mp4. Now the run stops at once as on any source: the frames written
    are in a playable MP4 and complete JSON lines, and the exit is the CLI's for a signal (one line, no traceback)."""
    out = tmp_path / "o"
    go_on = threading.Event()
    if kind == "fifo":
        fifo = tmp_path / "in.ts"
        os.mkfifo(fifo)
        _stalling_writer(fifo, clip, go_on)
    with _rtseg(str(fifo) if kind == "fifo" else "/dev/stdin", out, stdin=subprocess.PIPE) as proc:
        try:
            proc.stdin.write(clip if kind == "stdin" else b"")  # (stdin stays open: communicate() would close it)
            proc.stdin.flush()
            _until_stalled(tmp_path / "o.jsonl", proc)
            proc.send_signal(signum)
            proc.wait(timeout=20)
        finally:
            proc.kill()
            go_on.set()
        stderr = proc.stderr.read().decode()
    frames = _lines(tmp_path / "o.jsonl")
    assert proc.returncode in (0, 128 + signum) and "Traceback" not in stderr, (proc.returncode, stderr)
    assert f"rtseg: stopped by signal after {frames} frames; outputs are closed" in stderr.splitlines(), stderr
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(frames))
    assert _mp4_frames(tmp_path / "o.mp4") == frames and not (tmp_path / "o.partial.mp4").exists()


def test_a_run_whose_pipe_stays_stalled_ends_with_one_line_and_keeps_its_outputs(clip, tmp_path):
    """No signal: the run waited for ever. With --reconnect-timeout 0 it ends after the read timeout (5 s) without
    data, every frame the writer sent in the finalised outputs."""
    fifo, out = tmp_path / "in.ts", tmp_path / "o"
    os.mkfifo(fifo)
    go_on = threading.Event()
    _stalling_writer(fifo, clip, go_on)
    proc = _rtseg(str(fifo), out, "--reconnect-timeout", "0")
    stderr = _stderr_at_end(proc, go_on)
    assert proc.returncode == 2 and stderr.splitlines() == [
        f"rtseg: error: pipe {fifo} sent no data for 5s: its writer stalled; check the program writing to it, or "
        f"allow longer waits with --reconnect-timeout; the {FRAMES} frames written before it are kept in {out}.mp4, "
        f"{out}.jsonl"], stderr
    assert _lines(tmp_path / "o.jsonl") == FRAMES and _mp4_frames(tmp_path / "o.mp4") == FRAMES


@pytest.mark.parametrize("writer", [True, False], ids=["silent writer", "no writer"])
def test_a_run_whose_pipe_stalls_while_it_is_opened_warns_then_ends_with_one_line(tmp_path, writer):
    """The writer opens the FIFO and sends nothing: the run waits in the source's open. The warning after 5 s was
    never printed (the command line set the source's callback once it had opened), only the error after
    --reconnect-timeout; now the warning comes first, as when a pipe stalls later. No writer at all: the run
    waited for ever, without a word; now the same lines. Nothing is written."""
    fifo, out = tmp_path / "in.ts", tmp_path / "o"
    os.mkfifo(fifo)
    go_on = threading.Event()
    if writer:
        _stalling_writer(fifo, b"", go_on)
    proc = _rtseg(str(fifo), out, "--reconnect-timeout", "6")
    stderr = _stderr_at_end(proc, go_on)
    assert (proc.returncode, stderr.splitlines()) == (2, [
        f"rtseg: warning: pipe {fifo} has no writer yet, or a silent one (no data for 5s); waiting for its writer "
        "for up to 6s",
        f"rtseg: error: pipe {fifo} sent no data for 6s: no program wrote to it, or its writer stalled; check the "
        "program writing to it, or allow longer waits with --reconnect-timeout"]), (proc.returncode, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ts"]


def test_sigterm_while_the_source_waits_for_its_first_writer_is_one_line(tmp_path):
    """A FIFO nobody writes to yet: the run waits in its source's open (for data, the FIFO open). SIGTERM there
    ended the process without a word (-15: the source was opened outside the command line's SIGTERM guard); now
    one line and 143, nothing written."""
    fifo, out = tmp_path / "in.ts", tmp_path / "o"
    os.mkfifo(fifo)
    proc = _rtseg(str(fifo), out)
    try:
        deadline = time.monotonic() + 60
        while os.path.realpath(fifo) not in _open_files(proc.pid):  # open, the source waits for data
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=20)[1].decode()
    finally:
        proc.kill()
    assert (proc.returncode, stderr.splitlines()) == (143, ["rtseg: terminated"]), (proc.returncode, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ts"]


# --- standard input as "-" ---

def test_source_dash_reads_the_video_piped_to_standard_input(clip, tmp_path):
    """Was: ``producer | rtseg --source -`` said "source not found: -" (only /dev/stdin read it); ``-`` is standard
    input now, as ``--json -`` is standard output: every frame of the piped clip reaches the outputs. A file
    redirected to it (``< o.ts``) is an input as with /dev/stdin: an output over it is refused."""
    proc = _rtseg("-", tmp_path / "o", stdin=subprocess.PIPE)
    try:
        stderr = proc.communicate(clip, timeout=120)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert _lines(tmp_path / "o.jsonl") == FRAMES and _mp4_frames(tmp_path / "o.mp4") == FRAMES
    redirected = tmp_path / "in.mp4"  # (MPEG-TS inside: FFmpeg reads what it finds)
    redirected.write_bytes(clip)
    with open(redirected, "rb") as stdin:
        proc = _rtseg("-", tmp_path / "in", stdin=stdin.fileno())  # --output in.mp4: over its own input
        stderr = proc.communicate(timeout=120)[1].decode()
    assert (proc.returncode, stderr.splitlines()) == (2, [
        f"rtseg: error: --output {redirected} would overwrite the input /dev/stdin; choose another output path"])
    assert redirected.read_bytes() == clip


@pytest.mark.parametrize("spec", ["-", "/dev/stdin"])
def test_standard_input_that_is_a_terminal_is_refused_at_once(tmp_path, spec):
    """``rtseg --source /dev/stdin`` typed at a terminal, nothing piped in, waited for a video until
    --reconnect-timeout ran out (60 s by default), then blamed a stalled writer. Now one line at once, nothing
    written."""
    import pty

    parent, terminal = pty.openpty()
    try:
        stderr = _stderr_at_end(proc := _rtseg(spec, tmp_path / "o", "--reconnect-timeout", "3", stdin=terminal))
    finally:
        os.close(parent)
        os.close(terminal)
    assert (proc.returncode, stderr.splitlines()) == (2, [
        "rtseg: error: source /dev/stdin: standard input is a terminal, not a video; pipe one in "
        "(producer | rtseg --source -) or give the file"]), (proc.returncode, stderr)
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("redirect", ["</dev/null", "<&-"], ids=["/dev/null", "closed"])
def test_standard_input_that_is_empty_is_said_to_be(tmp_path, redirect):
    """``rtseg --source - < /dev/null`` (or with standard input closed, which the command line fills with /dev/null):
    FFmpeg's "invalid data … damaged or incomplete" blamed a file. Now one line saying standard input is empty."""
    proc = _rtseg("-", tmp_path / "o", shell=f'exec "$@" {redirect}')
    stderr = _stderr_at_end(proc)
    assert (proc.returncode, stderr.splitlines()) == (2, [
        "rtseg: error: source /dev/stdin: standard input is empty (closed, or /dev/null); pipe a video in "
        "(producer | rtseg --source -) or give the file"]), (proc.returncode, stderr)
    assert list(tmp_path.iterdir()) == []
