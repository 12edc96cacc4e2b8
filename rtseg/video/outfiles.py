"""Output files a run writes: checks before the run, and the ``.partial`` file a run claims while it writes.

Kept free of PyAV so that every sink can use it without loading FFmpeg.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
from pathlib import Path

from rtseg.errors import SinkError


def partial_path(path: Path) -> Path:
    """Where a sink for ``path`` writes until it is closed: ``out.mp4`` → ``out.partial.mp4``."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def require_writable_folder(path: Path, what: str) -> None:
    """Raise SinkError unless ``path`` is not a folder and the folder that will hold it exists and is writable."""
    with contextlib.suppress(OSError):  # a name too long to stat is reported by whoever opens it
        if path.is_dir():
            raise SinkError(f"{what} {path}: is a folder; give a file name such as {path / ('out' + path.suffix)}")
    folder = path.parent
    if not folder.is_dir():
        raise SinkError(f"{what} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise SinkError(f"{what} {path}: folder {folder} is not writable; choose another path")


def claim(partial: Path, path: Path, what: str) -> int:
    """Create ``partial`` (which must not exist) for writing and return its descriptor, holding an exclusive
    ``flock`` until it is closed.

    SinkError when it exists: held by another run (writing it now) or left from an interrupted one.
    """
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        busy = False
        with contextlib.suppress(OSError):
            probe = os.open(partial, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = True
            finally:
                os.close(probe)
        if busy:
            raise SinkError(f"{what} {path}: another run is writing {partial.name} right now; "
                            "choose another path") from None
        raise SinkError(f"{what} {path}: {partial.name} is left from an interrupted run; "
                        "move or delete it first") from None
    except OSError as exc:
        raise SinkError(f"{what} {partial}: cannot create ({exc.strerror}); choose another path") from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def append_whole(file: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` at the end of the unbuffered seekable ``file``, or none of it: a write that fails
    (a full disk) is taken back by truncating to where it began, then its OSError goes on."""
    start = file.tell()
    try:
        view = memoryview(data)
        while view:
            view = view[file.write(view):]
    except OSError:
        with contextlib.suppress(OSError):
            file.truncate(start)
        raise
