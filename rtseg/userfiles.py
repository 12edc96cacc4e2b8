"""Files a user names, opened without ever waiting: a FIFO, socket, device or folder where a file is expected is
refused unread (:class:`NotRegularFileError`), as reading one could block forever (a FIFO with no writer) or never
end (``/dev/zero``).

Light (no numpy, OpenCV or torch): the command lines' checks of their options use it before anything heavy is
imported (:func:`check_input_file`, :func:`rtseg.manifest.peek_manifest`); the image, data set
and weights readers read through it too.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Iterable, TypeVar

from rtseg.errors import PERMISSION_DENIED, WeightsError

T = TypeVar("T", str, Path)
_DIGITS = re.compile(r"([0-9]+)")


class NotRegularFileError(OSError):
    """A FIFO, socket, device or folder where a file is expected (refused unread: reading it could block).
    ``errno`` is ``EISDIR`` for a folder (:attr:`folder`), ``EINVAL`` for the others."""

    @property
    def folder(self) -> bool:
        """Whether the path refused is a folder (not a FIFO, socket or device)."""
        return self.errno == errno.EISDIR


def _open_regular(path: str | os.PathLike) -> int:
    """A read-only file descriptor of the regular file ``path``, for the caller to close. Opened non-blocking (a
    FIFO with no writer opens at once), then refused with :class:`NotRegularFileError` (closed) unless regular.
    Other failures raise the ``OSError`` of opening it (``FileNotFoundError``, ``PermissionError`` …)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                                      "not a regular file (a FIFO, socket, device or folder)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular_file(path: str | os.PathLike) -> None:
    """None when ``path`` is a regular file this process may open for reading, checked without reading a byte
    and without ever waiting; else the error :func:`read_regular_file` would raise opening it."""
    os.close(_open_regular(path))


def read_regular_file(path: str | os.PathLike) -> bytes:
    """All bytes of the file ``path``; never waits: a FIFO, socket, device or folder is refused unread with
    :class:`NotRegularFileError`. Other failures raise the ``OSError`` of opening or reading it."""
    fd = _open_regular(path)
    try:
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def check_input_file(name: str, path: str | Path, advice: str) -> None:
    """WeightsError unless ``path`` is a regular file this process may read, in one line starting with ``name``
    (e.g. ``"--init w.pth"``) and, where the file could be another, ending in ``advice`` (what to give instead):
    not found, permission denied, a folder, a FIFO, socket or device. Light (no torch) and quick: the file is
    opened, never read, and never waited for (:func:`check_regular_file`), so that a trainer
    refuses a file it would read only after seconds of importing torch and preparing data and model."""
    try:
        check_regular_file(path)
    except FileNotFoundError:
        raise WeightsError(f"{name} not found; {advice}") from None
    except PermissionError:
        raise WeightsError(f"{name}: {PERMISSION_DENIED}") from None
    except NotRegularFileError as e:
        what = "is a folder" if e.folder else "is not a regular file (a FIFO, socket or device)"
        raise WeightsError(f"{name} {what}; {advice}") from None
    except OSError as e:
        raise WeightsError(f"{name}: cannot read it ({e.strerror}); {advice}") from None


def in_name_order(paths: Iterable[T]) -> list[T]:
    """``paths`` in the order a person numbers files: runs of digits compared as numbers (``img2.png`` before
    ``img10.png``; zero-padded names keep their plain order), the rest as text (case-sensitive, as ``sorted``);
    names equal that way (``a1`` / ``a01``) by their plain text. The order image folders and globs play in, and
    labelme folders list their samples in."""
    def number(digits: str) -> tuple[int, str]:  # compared as numbers are, without int()'s 4300-digit limit
        significant = digits.lstrip("0")
        return len(significant), significant

    def key(path: T) -> tuple[tuple[str | tuple[int, str], ...], str]:
        text = os.fspath(path)
        parts = _DIGITS.split(text)  # text, digits, text, digits … text: the same type at each position
        return tuple(number(p) if i % 2 else p for i, p in enumerate(parts)), text

    return sorted(paths, key=key)
