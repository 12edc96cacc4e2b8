"""Errors a user can act on.

Every subclass of :class:`RtsegError` carries one line that says what went
wrong, where, and what to do. The CLI prints that line and exits non-zero
without a traceback; any other exception is an internal error and keeps its
traceback.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


class RtsegError(Exception):
    """Base class of user-facing errors (one clear line, no traceback)."""


class WeightsError(RtsegError):
    """A checkpoint is missing, unreadable, unsafe or of another architecture."""


class SourceError(RtsegError):
    """A video source cannot be opened or read."""


class SinkError(RtsegError):
    """An output (file, window, server, push URL) cannot be opened or written."""


class ConfigError(RtsegError):
    """An option value is invalid or options contradict each other."""


class DatasetError(RtsegError):
    """An annotation file or image of a data set is malformed or unreadable."""


PERMISSION_DENIED = "permission denied; check the file's permissions"
"""What to say of a file the process may not read (EACCES), as what is wrong and what to do."""


class RtsegWarning(UserWarning):
    """Something a user should know that does not stop the work (one line: what, where, what was done)."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP within ``sigterm_raises(Terminated)``: :func:`exit_status` ends the command with one line,
    ``terminated`` or ``hung up`` (:data:`STOP_WORDS`), and 128 + the signal (143 or 129, as a shell reports a
    process that signal ended), not a death by the signal without a word. Raised wherever a command does not handle
    the signal itself (:func:`rtseg.entry.run_command`): its option checks and imports, all of ``rtseg eval``, and
    the moments before and after a video run's or a training's own handler.

    ``signum``: the signal; the message names it (``SIGHUP``, or ``how``: ``second SIGHUP``). Not a
    KeyboardInterrupt, so that nothing that saves work on Ctrl-C takes it for one (where the signal is to act as
    Ctrl-C, ``rtseg.train.checkpoint.sigterm_as_interrupt`` raises a KeyboardInterrupt that it turns into this on
    the way out, once the steps done are saved)."""

    def __init__(self, signum: int = signal.SIGTERM, how: str = "") -> None:
        self.signum = signal.Signals(signum)
        super().__init__(how or self.signum.name)


_SIGHUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # (Windows has none)
TERMINATING_SIGNALS = (signal.SIGTERM, *_SIGHUP)
"""The stop signals :func:`sigterm_raises` raises as :class:`Terminated`: SIGTERM (``kill``, a job scheduler's or
``docker stop``'s stop request) and SIGHUP (the terminal closed, an ssh session dropped, ``kill -HUP``)."""
STOP_SIGNALS = (signal.SIGINT, *TERMINATING_SIGNALS)
"""The signals that ask a command to stop: Ctrl-C, SIGTERM and SIGHUP."""
STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", **{sig: "hung up" for sig in _SIGHUP}}
"""What a command says each stop signal did to it: ``rtseg train: hung up``, ``hung up at step 3: checkpoint …``."""

_hung_up = False  # set by note_stop_signal at a SIGHUP (a plain flag: a signal handler sets it)


def handled(signals: Iterable[int]) -> list[int]:
    """``signals`` less SIGHUP where it is ignored (``nohup``, ``trap '' HUP``): a command started so that a hang-up
    does not stop it goes on ignoring it, rather than taking it as a stop request."""
    return [sig for sig in signals if sig not in _SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN]


def note_stop_signal(signum: int) -> None:
    """Note that the stop signal ``signum`` arrived (every handler of one calls this first): after a SIGHUP the
    terminal that standard output and error went to may be gone, so that a write there fails (EIO; EPIPE for a
    reader that went with it); it is dropped then, without a word, and the command goes on to end as the hang-up
    asked (:class:`_StandardStream`)."""
    global _hung_up
    if signum in _SIGHUP:
        _hung_up = True


@contextlib.contextmanager
def sigterm_raises(exc_type: Callable[[int], BaseException]) -> Iterator[None]:
    """Within it (or the function it decorates), SIGTERM and SIGHUP (:data:`TERMINATING_SIGNALS`; not a SIGHUP
    ignored, :func:`handled`) raise ``exc_type(signum)`` in the main thread, as Ctrl-C raises KeyboardInterrupt,
    instead of ending the process at once; the handlers before it are back afterwards. Outside the main thread it
    changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_it(signum: int, _frame: object) -> None:
        note_stop_signal(signum)
        raise exc_type(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in handled(TERMINATING_SIGNALS):
            previous[sig] = signal.signal(sig, raise_it)
        yield
    finally:
        with contextlib.ExitStack() as stack:  # every handler back, even if a pending signal's one raises meanwhile
            for sig, handler in previous.items():
                stack.callback(signal.signal, sig, handler)


def ignore_stop_signals(previous: dict[int, Any] | None = None) -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP (:data:`STOP_SIGNALS`) from now on, each handler they had put into
    ``previous`` as it is replaced (a pending signal's handler, which ``signal.signal`` runs first, may raise
    between the two); outside the main thread this changes nothing.

    Ignored (``SIG_IGN``), not handled by a Python function: Python keeps an ignored signal ignored to the end of the
    process, whereas it puts back the default action of one it handles (ending the process by the signal, exit -2 /
    -15 / -1) before it tears its modules down (over a second once torch is loaded)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        handler = signal.signal(sig, signal.SIG_IGN)
        if previous is not None:
            previous[sig] = handler


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Within it, Ctrl-C, SIGTERM and SIGHUP are ignored (:func:`ignore_stop_signals`), so that none cuts short the
    work that a first one started (the checkpoint a Ctrl-C saves); their handlers are back afterwards."""
    previous: dict[int, Any] = {}
    try:
        ignore_stop_signals(previous)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_folder(option: str, folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) for the output of ``option``; ConfigError when a file stands there or
    the folder cannot be made, so that a bad path fails before any work, not after it."""
    folder = Path(folder)
    shown = str(folder)
    if not folder.is_absolute():  # say where a relative path lands
        with contextlib.suppress(OSError):  # (the working folder may be gone)
            shown = f"{folder} ({Path.cwd() / folder})"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {shown}: is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {shown}: cannot create the folder ({exc.strerror}); choose another path") from None
    return folder


_ESCAPES = str.maketrans({
    **{c: repr(c)[1:-1] for c in map(chr, (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)) if c != "\t"},
    **{chr(0xDC00 + b): f"\\x{b:02x}" for b in range(0x80, 0x100)},  # a non-UTF-8 byte of a file name (os.fsdecode)
})


def one_line(text: str) -> str:
    """``text`` with its line breaks and other control characters written as Python escapes (``\\n``,
    ``\\x1b`` …), and the bytes of a file name that are not UTF-8 as ``\\xe9`` (not as the lone surrogates
    Python decodes them to), so that a message naming a file called ``a<newline>b.png`` (or one holding a terminal
    escape sequence) still prints as one line."""
    return text.translate(_ESCAPES)


def json_problem(exc: ValueError | RecursionError) -> str:
    """Why ``json.loads`` failed, as a phrase for a one-line error: ``not valid JSON (<the decoder's message, with
    line and column>)``, or the text is not UTF-8, nested too deeply or holds a number too long for Python."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read (arrays or objects within each other thousands of levels deep)"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte {exc.start} is {exc.object[exc.start]:#04x})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc})"
    # json.loads raises a plain ValueError only for an integer beyond Python's digit limit
    return f"not readable JSON: a number has more than {sys.get_int_max_str_digits()} digits"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def missing_package(exc: ModuleNotFoundError) -> str | None:
    """The one line for a third-party package that is not installed (None for a module of rtseg itself)."""
    name = (exc.name or "").split(".")[0]
    if not name or name == "rtseg":
        return None
    return f"Python package '{name}' is missing; install rtseg's dependencies (pip install -e . in the checkout)"


def exit_status(prog: str, fn: Callable[[], Any]) -> int:
    """Run ``fn``: its return value when that is an int, else 0; 2 after printing ``prog: error: <line>`` for an
    RtsegError (a stdout that cannot be written too, see :func:`guard_standard_streams`) or a missing third-party
    package, 130 after ``prog: interrupted`` on Ctrl-C, 128 + the signal after ``prog: terminated`` (143) or
    ``prog: hung up`` (129) on :class:`Terminated` (no traceback). Meanwhile an :class:`RtsegWarning` prints as
    ``prog: warning: <line>`` (not as Python's ``file:line: UserWarning`` with a source line). Both lines go
    through :func:`one_line`."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, RtsegWarning):
                print(f"{prog}: warning: {one_line(str(message))}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        try:
            code = fn()
            sys.stdout.flush()  # a stdout that cannot take the last lines fails here (SinkError), not at exit
        except RtsegError as exc:
            print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        except ModuleNotFoundError as exc:
            line = missing_package(exc)
            if line is None:
                raise
            print(f"{prog}: error: {line}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Terminated as exc:
            print(f"{prog}: {STOP_WORDS[exc.signum]}", file=sys.stderr)
            return 128 + exc.signum
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


class _StandardStream(io.TextIOWrapper):
    """Standard output or error whose failed write (a full disk, a reader gone, a closed descriptor) points the
    descriptor at /dev/null, so that nothing more is tried there: stdout's then raises :class:`SinkError` (one
    line on stderr, no traceback; the files already written stay), stderr's is dropped (nowhere to report it), and
    so is stdout's after a SIGHUP when it is one of a terminal or reader gone (EIO, EPIPE; :func:`note_stop_signal`):
    the command ends as the hang-up asked, its outputs finished."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError as exc:
            self._lost(exc)
            return len(text)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self.fileno())
        os.close(null)
        if self.fileno() == 1 and not (_hung_up and exc.errno in (errno.EIO, errno.EPIPE)):
            raise SinkError(f"standard output: write failed ({exc.strerror}); the files written are kept; "
                            "check where standard output goes (a full disk, a closed pipe)") from None


_command_line_run = False  # set by guard_standard_streams


def command_line_run() -> bool:
    """Whether this process is a command-line run, one that ends with its command (:func:`guard_standard_streams`
    prepared it), not a Python program that calls a command's ``main`` among other work (a test)."""
    return _command_line_run


def guard_standard_streams() -> None:
    """Prepare stdin, stdout and stderr for a command-line run (call once, first thing), and mark the process as one
    (:func:`command_line_run`).

    A closed one gets /dev/null on its descriptor, so that no file opened later takes descriptor 0, 1 or 2 (and
    is written by ``print`` or inherited by FFmpeg as its stdin); a closed stdout's is opened read-only, so that
    writing to it fails as on a closed stdout. Then stdout and stderr become :class:`_StandardStream`: a write
    error on stdout is one line and exit 2 through :func:`exit_status`, one on stderr never stops the run.
    """
    global _command_line_run
    _command_line_run = True
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)  # the lowest free descriptor: ``fd``, as the ones below it are open
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        if old is not None:
            old.flush()
        stream = _StandardStream(io.open(fd, "wb", closefd=False), encoding=getattr(old, "encoding", None),
                                 errors="backslashreplace" if fd == 2 else getattr(old, "errors", None),
                                 line_buffering=fd == 2 or old is None or old.line_buffering)
        setattr(sys, name, stream)
