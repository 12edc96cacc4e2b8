"""Output files a run writes: checks before the run, and the ``.partial`` file a run claims while it writes.

Kept free of PyAV so that every sink can use it without loading FFmpeg.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Callable

from rtseg.errors import RtsegWarning, SinkError


def partial_path(path: Path) -> Path:
    """Where a sink for ``path`` writes until it is closed: ``out.mp4`` → ``out.partial.mp4``."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def refuse_partial_name(path: Path, what: str) -> None:
    """SinkError when ``path`` is named as :func:`partial_path` names a file while it is written (``k9.partial.mp4``
    of ``k9.mp4``): an output of that name would replace what an interrupted run left there."""
    if path.stem.endswith(".partial"):
        written = path.with_name(path.stem.removesuffix(".partial") + path.suffix).name
        raise SinkError(f"{what} {path}: a .partial name is rtseg's for {written} while that is written (an "
                        "interrupted run leaves it); choose another name")


def require_writable_folder(path: Path, what: str) -> None:
    """Raise SinkError unless ``path`` is not a folder and the folder that will hold it exists and is writable
    (a file where a folder of it should be, ``base.mp4/x.mp4``, is said to be one)."""
    with contextlib.suppress(OSError):  # a name too long to stat is reported by whoever opens it
        if path.is_dir():
            raise SinkError(f"{what} {path}: is a folder; give a file name such as {path / ('out' + path.suffix)}")
    folder = path.parent
    if not folder.is_dir():
        nearest = next(p for p in (folder, *folder.parents) if p.exists())  # ('.' or '/' at the latest)
        if not nearest.is_dir():
            raise SinkError(f"{what} {path}: {nearest} is a file, not a folder; choose another path")
        raise SinkError(f"{what} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise SinkError(f"{what} {path}: folder {folder} is not writable; choose another path")


_DESCRIPTOR_LINK = re.compile(r"/proc/.+/fd/[0-9]+")
"""An open descriptor's link (``/dev/stdout`` leads to /proc/self/fd/1, ``/dev/fd/3`` to /proc/self/fd/3)."""
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def output_target(path: Path, what: str, advice: str = "choose a file path") -> Path:
    """The file that an output written whole (renamed over its name: :func:`replace_whole`, a ``.partial`` file's
    final rename) replaces: ``path``, or where the symbolic link ``path`` leads (links are written through: the link
    stays and its target gets the new contents; a missing target is created). Checked before anything is written,
    a SinkError ``"<what> <path>: …; <advice>"`` when the link loops or names an open descriptor (``/dev/stdout``,
    ``/proc/self/fd/N``: a rename cannot write into a descriptor), or when what it names exists and is not a regular
    file (a FIFO, device or socket, which the rename would replace with a file for the whole machine), and the
    SinkError of :func:`require_writable_folder` of the file."""
    if _names_a_descriptor(path):
        raise SinkError(f"{what} {path}: names an open descriptor, not a file; {advice}")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    if os.path.islink(target):  # (realpath stops at a loop)
        raise SinkError(f"{what} {path}: a symbolic link that loops; {advice}")
    require_writable_folder(target, what if target is path else f"{what} {path} ->")
    with contextlib.suppress(OSError):  # (missing: created)
        mode = os.stat(target).st_mode
        kind = next((kind for test, kind in _NOT_REGULAR if test(mode)), None)
        if kind is not None:
            raise SinkError(f"{what} {path}: is {kind}, not a regular file (the output is written whole, by "
                            f"replacing the file); {advice}")
    return target


def _names_a_descriptor(path: Path) -> bool:
    """Whether ``path``, or a symbolic link on its way, is an open descriptor's link (:data:`_DESCRIPTOR_LINK`),
    followed link by link (at most 40, as the system does)."""
    name = os.path.abspath(path)
    for _ in range(40):
        name = os.path.join(os.path.realpath(os.path.dirname(name)), os.path.basename(name))
        if _DESCRIPTOR_LINK.fullmatch(name):
            return True
        if not os.path.islink(name):
            return False
        name = os.path.join(os.path.dirname(name), os.readlink(name))
    return False


def replace_whole(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``: written to a temporary file beside it (named by process: two runs never share
    one), then renamed over it, so that a reader never sees part of it and a failed write (a full disk) leaves an
    existing ``path`` as it was; the temporary file is removed then, and the OSError goes on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a half-written file must not keep filling the disk
        raise


def claim(partial: Path, path: Path, what: str, recover: Callable[[Path], str] = lambda aside: "") -> int:
    """Create ``partial`` for writing and return its descriptor, holding an exclusive ``flock`` until it is closed.

    SinkError when ``path`` is itself a ``.partial`` name (:func:`refuse_partial_name`), or when ``partial`` is
    held by another run (writing it now). One left from an interrupted run (a crash, a kill, a failed write: its
    lock is free) is moved aside to ``<name>.recovered-N<suffix>`` (the lowest free N), which ``recover`` may then
    repair (it returns what to add to the warning, ``""`` for nothing), and said in one :class:`RtsegWarning`
    naming both files; one that is empty (its run died before its first frame) holds nothing and is removed.
    """
    refuse_partial_name(path, what)
    for _ in range(3):  # (a run that took our new, empty file for a leftover removed it before our lock: again)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _move_leftover_aside(partial, path, what, recover)
            continue
        except OSError as exc:
            raise SinkError(f"{what} {partial}: cannot create ({exc.strerror}); choose another path") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, partial):
            return fd
        os.close(fd)
    raise _busy(partial, path, what)


def _busy(partial: Path, path: Path, what: str) -> SinkError:
    return SinkError(f"{what} {path}: another run is writing {partial.name} right now; choose another path")


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the one that ``path`` names now (not moved away nor replaced)."""
    try:
        named = os.lstat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def _move_leftover_aside(partial: Path, path: Path, what: str, recover: Callable[[Path], str]) -> None:
    """The existing ``partial`` of :func:`claim`: a SinkError when another run holds it or it cannot be moved; else
    moved aside, or removed when empty, under an exclusive lock (no other run writes it meanwhile); nothing when it
    went or changed meanwhile (:func:`claim` looks again)."""
    def refused(problem: str) -> SinkError:
        return SinkError(f"{what} {path}: {partial.name} is left from an interrupted run, {problem}; move or delete it")

    try:
        mode = os.lstat(partial).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise refused("but is no file rtseg wrote (a folder, link or device)")
    try:
        held = os.open(partial, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise refused(f"and cannot be opened ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(partial, path, what) from None
        if not _same_file(held, partial):
            return
        try:
            if os.fstat(held).st_size == 0:
                partial.unlink()
                return
            head, tail = partial.name.rsplit(".partial", 1)  # (out, .mp4)
            n = 1
            while os.path.lexists(aside := partial.with_name(f"{head}.recovered-{n}{tail}")):
                n += 1
            os.rename(partial, aside)
        except OSError as exc:
            raise refused(f"and cannot be moved aside ({exc.strerror})") from None
        warnings.warn(f"{what} {path}: {partial} was left by an interrupted run; moved it to {aside}"
                      f"{recover(aside)}", RtsegWarning, stacklevel=2)
    finally:
        os.close(held)


def append_whole(file: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` at the end of the unbuffered seekable ``file``, or none of it: a write that fails
    (a full disk) is taken back by truncating to where it began, then its OSError goes on."""
    start = file.tell()
    try:
        _write_all(file, data)
    except OSError:
        with contextlib.suppress(OSError):
            file.truncate(start)
        raise


def _write_all(file: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered ``file`` (whose ``write`` may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view):]


class CheckedFile(io.RawIOBase):
    """An unbuffered, seekable binary file on descriptor ``fd`` (taken over) for a library that writes through
    Python file objects (PyAV's custom I/O), which keeps the first failed write (a full disk: ENOSPC, EFBIG).

    Each ``write`` writes all it is given or raises OSError (PyAV raises that again from the call that wrote).
    A library need not pass such an error on: the trailer of FFmpeg's fragmented MP4 muxer reports success after
    a failed write (FFmpeg 8.1), so ``close()`` of a PyAV container, opened by name, returns normally with the end
    of the file missing. :meth:`close_checked` raises the kept error.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._file = os.fdopen(fd, "wb", buffering=0)
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        try:
            _write_all(self._file, data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()

    def close_checked(self) -> None:
        """Close the file; OSError when a write failed (the first one) or closing fails."""
        self.close()
        if self.error is not None:
            raise self.error
