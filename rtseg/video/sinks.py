"""Outputs of the pipeline.

Every sink opens its resource in the constructor (so a bad path, a busy port
or a missing display fails before the pipeline starts, as a one-line
:class:`~rtseg.errors.SinkError`) and then takes frames through
``write(frame, prediction, annotated)`` until ``close()``.

- :class:`ImageSink`: the annotated image of a single-image source (png/jpg).
- :class:`JsonlSink`: one JSON record per frame (see :func:`rtseg.serialize.frame_record`).
- :class:`WindowSink`: an OpenCV window.
- :class:`~rtseg.video.sink_mp4.Mp4Sink`: a crash-safe H.264 MP4 recording.
- :class:`~rtseg.video.sink_push.PushSink`: H.264 pushed to an RTSP/RTMP server.
- :class:`~rtseg.serve.server.WebSink`: a live web page (MJPEG + stats).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import select
import stat
import string
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from rtseg.errors import SinkError
from rtseg.serialize import frame_record
from rtseg.serve.server import WebSink
from rtseg.types import Frame, Prediction
from rtseg.video.outfiles import append_whole, output_target, replace_whole, require_writable_folder
from rtseg.video.sink_mp4 import Mp4Sink
from rtseg.video.sink_push import PushSink
from rtseg.video.sources import IMAGE_SUFFIXES

__all__ = ["Sink", "ImageSink", "JsonlSink", "WindowSink", "Mp4Sink", "PushSink", "WebSink"]


class Sink(Protocol):
    """What the pipeline calls for every frame, then once at the end."""

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None: ...

    def close(self) -> None: ...


class ImageSink:
    """Write the annotated image to ``path`` (format from the extension).

    Meant for a single-image source; with several frames the file holds the
    last one. A ``{seq}`` placeholder in the name (``out_{seq:05d}.png``)
    writes one file per frame instead. Files are written under a temporary
    name and renamed, so a reader never sees half an image; a symbolic link is
    written through (:func:`~rtseg.video.outfiles.output_target`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in IMAGE_SUFFIXES:
            raise SinkError(
                f"image output {self.path}: unknown image type {self.path.suffix!r}; use one of "
                + ", ".join(sorted(IMAGE_SUFFIXES))
            )
        self._suffix = self.path.suffix.lower()  # the type asked for (a link's target may be named otherwise)
        self.per_frame = _is_seq_pattern(self.path)
        if self.per_frame:
            require_writable_folder(self.path, "image output")
        else:
            self.path = output_target(self.path, "image output")  # a link: its target is replaced

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        target = (output_target(Path(str(self.path).format(seq=frame.seq)), "image output") if self.per_frame
                  else self.path)
        ok, data = cv2.imencode(self._suffix, annotated)
        if not ok:
            raise SinkError(f"image output {target}: OpenCV cannot encode {self._suffix} images")
        try:
            replace_whole(target, data.tobytes())
        except OSError as exc:
            raise SinkError(f"image output {target}: write failed ({exc.strerror}); "
                            "free space or choose another path (the images before it are kept)") from None

    def close(self) -> None:
        """Nothing to release (each write is complete on its own)."""


_SEQ_SPEC = re.compile(r"(?:0(\d*))?d?")
"""The {seq} format specs allowed: none, ``d`` or a zero-padded width (``05d``); a width without the 0 pads with
spaces."""


def _check_seq_field(conversion: str | None, spec: str) -> None:
    """ValueError unless a ``{seq…}`` field is a plain number of at most 32 digits (``{seq}``, ``{seq:d}``,
    ``{seq:05d}``): a sign, fill, alignment, space-padded width or conversion would put spaces or signs in the
    file names."""
    plain = None if conversion else _SEQ_SPEC.fullmatch(spec)
    if plain is None:
        field = f"{{seq{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        raise ValueError(f"{field}: only {{seq}}, {{seq:d}} or a zero-padded width make plain file names")
    if plain.group(1) and int(plain.group(1)) > 32:
        raise ValueError("field widths above 32 digits make no file name")


def _has_format_field(text: str) -> bool:
    """Whether ``text`` has a str.format replacement field (any name, ``{}`` too); False where str.format cannot
    parse it (a lone brace)."""
    try:
        return any(name is not None for _, name, _, _ in string.Formatter().parse(text))
    except ValueError:
        return False


def _is_seq_pattern(path: Path) -> bool:
    """Whether ``path`` names one file per frame (``{seq}`` / ``{seq:05d}`` placeholders, str.format syntax);
    SinkError for a pattern that cannot name a file for every frame, for a str.format field other than ``{seq}``
    (``{index}``, ``{}``, ``{seq[0]}``: "{seq} is the only placeholder allowed"), or where its ``{seq`` is no field
    (``{{seq}}``, escaped braces: str.format would write every frame to one file named ``{seq}``). A name with
    neither a field nor ``{seq`` (``{{a}}``, a lone ``{``) is taken as is."""
    text = str(path)
    if "{seq" not in text and not _has_format_field(text):
        return False
    try:
        fields = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
        if not fields:
            raise ValueError("{{ and }} are literal braces, so it has no {seq} field")
        if any(name != "seq" for name, _, _ in fields):
            raise ValueError("{seq} is the only placeholder allowed")
        for _, conversion, spec in fields:
            _check_seq_field(conversion, spec or "")
        for seq in (0, 10**9):
            name = Path(text.format(seq=seq)).name
            if len(os.fsencode(name)) > 255:
                raise ValueError(f"a file name would be {len(os.fsencode(name))} bytes long")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise SinkError(f"image output {text}: bad {{seq}} pattern ({exc}); write e.g. out_{{seq:05d}}.png") from None
    return True


class JsonlSink:
    """Append one JSON line per frame to ``path`` (created, or emptied at the first frame), or to stdout for ``"-"``.

    Each line is written with unbuffered ``write`` calls, so a crash leaves complete lines only
    (a failed write of a file takes its partial line back). A file is held under an exclusive
    ``flock`` while the sink is open, so a second run aimed at the same file is refused instead of
    overwriting it. On stdout or a FIFO, a reader that goes away (``rtseg ... --json - | head -3``)
    ends the run gracefully (:attr:`stop_requested`; :attr:`stop_reason` says why); a reader that stays but takes
    no data for ``stall_timeout`` seconds ends it with a SinkError instead of blocking the run (and Ctrl-C) for
    ever; a FIFO that no program reads yet is waited for as long, at the sink's opening (said through ``on_event``
    after :data:`READER_WARN_S` s).
    A run that wrote no line (it failed or stopped before its first frame) leaves no new file, and an existing
    file as it was (:meth:`close`). :attr:`frames_written` counts the lines written.
    """

    STDOUT = "-"

    def __init__(self, path: str | os.PathLike, *, stall_timeout: float = 30.0,
                 on_event: Callable[[str], None] = lambda line: None) -> None:
        self.stop_requested = False
        self.stop_reason: str | None = None  # why stop_requested was set, a phrase: "the reader of ... went away"
        self.path = Path(path)
        self._stall_timeout = stall_timeout
        self._created = False  # the file did not exist before this sink
        if str(path) == self.STDOUT:
            _require_writable_stdout()
            self._file = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        else:
            require_writable_folder(self.path, "JSON Lines output")
            self._created = not self.path.exists()
            self._file = _open_exclusive(self.path, reader_timeout=stall_timeout, on_event=on_event)
        # a regular file (partial lines are taken back), not a pipe, FIFO or device (/dev/null: no truncate)
        self._regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        self._emptied = not self._regular  # a file's old contents go at the first frame, not at opening
        self.frames_written = 0

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        if self.stop_requested:
            return
        line = json.dumps(frame_record(frame, prediction), separators=(",", ":")).encode() + b"\n"
        if not self._emptied:
            self._file.truncate(0)
            self._emptied = True
        try:
            if self._regular:
                append_whole(self._file, line)  # a partial line is taken back: the file stays valid JSON Lines
            else:
                self._write_to_pipe(line)
            self.frames_written += 1
        except BrokenPipeError:  # the reading end of a pipe (stdout, a FIFO) is closed: nobody wants more lines
            self.stop_requested = True
            lines = f"{self.frames_written} line{'s' * (self.frames_written != 1)}"
            self.stop_reason = f"the reader of JSON Lines output {self._name} went away after {lines}"
        except OSError as exc:
            raise SinkError(f"JSON Lines output {self._name}: write failed ({exc.strerror}); "
                            f"free space or choose another path (the lines before it are kept)") from None

    def _write_to_pipe(self, line: bytes) -> None:
        """Write ``line`` to a pipe, FIFO or terminal without ever blocking longer than ``stall_timeout``.

        ``select`` reports a pipe writable when a page (4096 bytes) fits, so writes of at most that
        much never block; the descriptor stays blocking (stdout may share it with stderr).
        """
        fd, view = self._file.fileno(), memoryview(line)
        last_progress = time.monotonic()
        while view:
            if not select.select([], [fd], [], 0.1)[1]:
                if time.monotonic() - last_progress > self._stall_timeout:
                    raise SinkError(f"JSON Lines output {self._name}: the reader took no data for "
                                    f"{self._stall_timeout:g}s; is it still reading? (write to a file instead)")
                continue
            view = view[os.write(fd, view[:_PIPE_CHUNK]):]
            last_progress = time.monotonic()

    def interrupt(self) -> None:
        """The run is stopping: a write to a reader that takes no data gives up after 1 s (not ``stall_timeout``)."""
        self._stall_timeout = min(self._stall_timeout, 1.0)

    @property
    def _name(self) -> str:
        return "stdout" if str(self.path) == self.STDOUT else str(self.path)

    def close(self) -> None:
        """Close the output (idempotent); a file this sink created is removed when no frame was written."""
        if self._created and not self.frames_written and not self._file.closed:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while held (flock): never another run's new file
        with contextlib.suppress(BrokenPipeError):
            self._file.close()


def _require_writable_stdout() -> None:
    """SinkError unless standard output is open for writing: a closed one (``>&-``, which
    :func:`rtseg.errors.guard_standard_streams` points at /dev/null read-only) or one opened for reading (``1<file``)
    fails at the first line with EBADF, which is no matter of disk space."""
    try:
        writable = fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
    except (OSError, ValueError):  # (no descriptor at all)
        writable = False
    if not writable:
        raise SinkError("JSON Lines output stdout: standard output is closed or not open for writing; run with "
                        "stdout open (e.g. > dets.jsonl or | a reader) or give --json a file")


_PIPE_CHUNK = 4096  # bytes; at most one page per write, which a pipe that select() reports writable takes at once
READER_WARN_S = 5.0
"""Seconds a JSON Lines FIFO output waits for a reader before it says so."""
_READER_POLL_S = 0.05  # seconds between tries to open a FIFO without a reader


def _open_exclusive(path: Path, *, reader_timeout: float, on_event: Callable[[str], None]) -> io.FileIO:
    """Open ``path`` for writing (created if missing, not truncated), unbuffered, under an exclusive flock;
    SinkError when it cannot be opened or another process holds it. A FIFO no program reads yet is waited for (an
    open for writing waited without end, before the run began, without a word): said after
    :data:`READER_WARN_S` s (``on_event``), a SinkError after ``reader_timeout`` s."""
    since, warned = time.monotonic(), False
    while True:
        try:  # (non-blocking: a FIFO without a reader is ENXIO at once)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
            break
        except OSError as exc:
            waited = time.monotonic() - since
            if exc.errno != errno.ENXIO or not _is_fifo(path):
                raise SinkError(f"JSON Lines output {path}: cannot open ({exc.strerror}); choose another path") from None
            if waited >= reader_timeout:
                raise SinkError(f"JSON Lines output {path}: a FIFO no program opened for reading in "
                                f"{reader_timeout:g}s; start its reader first, or write to a file") from None
            if not warned and waited >= READER_WARN_S:
                on_event(f"JSON Lines output {path}: a FIFO no program reads yet; waiting for a reader for up to "
                         f"{reader_timeout:g}s")
                warned = True
            time.sleep(_READER_POLL_S)
    os.set_blocking(fd, True)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SinkError(f"JSON Lines output {path}: another run is writing it right now; "
                            "choose another path") from None
    return io.FileIO(fd, "wb", closefd=True)


def _is_fifo(path: Path) -> bool:
    """Whether ``path`` is a named pipe (False when it cannot be looked up)."""
    with contextlib.suppress(OSError):
        return stat.S_ISFIFO(os.stat(path).st_mode)
    return False


def _gui_available() -> str | None:
    """None when OpenCV can open windows here, else the reason it cannot."""
    gui = cv2.getBuildInformation().split("GUI:", 1)
    if len(gui) == 2 and gui[1].split("\n", 1)[0].strip().upper() in ("NONE", ""):
        return "this OpenCV build has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    loaded = list(sys.modules)  # in import order
    if "av" in loaded and loaded.index("av") < loaded.index("cv2"):
        # opencv-python's Qt then hangs in namedWindow (Xvfb, av 18 / opencv-python 5.0; tests/test_window.py)
        return "PyAV was imported before OpenCV in this process, and OpenCV's window then never opens: import cv2 " \
               "(or rtseg) before av"
    return _window_probe()


def _window_probe(timeout: float = 20.0) -> str | None:
    """Open and close a window in a child process: None when that works, else why not.

    A display variable can name a display that is gone (a stale ``ssh -X`` session) or one OpenCV's Qt has no
    plugin for (Wayland only): Qt then aborts the whole process, so this process must not be the one to try.
    """
    code = "import cv2; cv2.namedWindow('rtseg-probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"opening a test window did not finish within {timeout:g}s"
    if probe.returncode == 0:
        return None
    lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
    why = lines[0][:160] if lines else f"exit status {probe.returncode}"
    where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return f"cannot open a window on display {where!r} ({why})"


class WindowSink:
    """Show annotated frames in an OpenCV window titled ``title``.

    All GUI calls (create, show, poll keys, destroy) happen on the sink's own thread: GUI
    toolkits (Qt in opencv-python) hang or fail when a window is touched from two threads, and
    the pipeline writes from its output thread but closes from the main one. ``write`` only
    hands over the newest frame, so a slow display never holds the pipeline back. Pressing
    ``q`` or Esc, or closing the window, sets :attr:`stop_requested`.

    The thread works on the sink's state (:class:`_Window`), never on the sink itself: a sink
    dropped without :meth:`close`, or still open at interpreter exit, is closed by a finalizer
    (the thread ends and the window goes).
    """

    POLL_S = 0.02

    def __init__(self, title: str = "rtseg") -> None:
        reason = _gui_available()
        if reason is not None:
            raise SinkError(f"window output: {reason}; use --output file.mp4 or --serve HOST:PORT instead")
        # Qt's application object is made on the GUI thread but destroyed by the main thread at
        # exit, which makes Qt print two "Timers cannot be stopped from another thread" warnings
        # after every run; silence Qt's default-category warnings unless the user set rules.
        os.environ.setdefault("QT_LOGGING_RULES", "default.warning=false")
        self.title = title
        self._window = _Window(title)
        self._finalizer = weakref.finalize(self, self._window.close)

    @property
    def stop_requested(self) -> bool:
        """Whether the user pressed ``q`` or Esc, or closed the window."""
        return self._window.stop_requested

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        """Hand ``annotated`` to the window thread (a newer frame replaces one not yet shown); the window's
        SinkError once showing failed."""
        self._window.write(annotated)

    def close(self) -> None:
        """Close the window and end its thread, waiting at most 5 s (idempotent)."""
        self._finalizer()


class _Window:
    """A :class:`WindowSink`'s state and its GUI thread, which references this and never the sink."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.stop_requested = False
        self._newest: np.ndarray | None = None
        self._closing = False
        self._error: SinkError | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._gui_loop, name="rtseg-window", daemon=True)
        self._thread.start()

    def write(self, annotated: np.ndarray) -> None:
        """:meth:`WindowSink.write`."""
        if self._error is not None:
            raise self._error
        with self._cond:
            self._newest = annotated
            self._cond.notify()

    def _gui_loop(self) -> None:
        shown = False
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._newest is not None or self._closing, timeout=WindowSink.POLL_S)
                    image, self._newest = self._newest, None
                    if self._closing:
                        return
                if image is not None and not self.stop_requested:
                    cv2.imshow(self.title, image)
                    shown = True
                if shown and not self.stop_requested and (
                        cv2.waitKey(1) & 0xFF in (ord("q"), 27) or _closed_by_user(self.title)):
                    self.stop_requested = True
        except cv2.error as exc:
            self._error = SinkError(f"window output: OpenCV cannot show the window ({exc.err})")
            self.stop_requested = True
        finally:
            if shown:
                try:
                    cv2.destroyWindow(self.title)
                    cv2.waitKey(1)
                except cv2.error:
                    pass  # already closed by the user

    def close(self) -> None:
        """:meth:`WindowSink.close`, and the finalizer of a sink dropped unclosed, which the garbage collector may
        run on the GUI thread itself: that thread then ends once this returns, instead of waiting for itself."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)


def _closed_by_user(title: str) -> bool:
    """True when the window ``title`` is gone (closed with the mouse); Qt raises instead of answering -1."""
    try:
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1
    except cv2.error:
        return True
