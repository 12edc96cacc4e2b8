"""rtseg.userfiles: a user's file is opened without waiting and read only when it is a regular file; each refusal
says what the path is, and no descriptor is left open. The callers' one-line messages for each kind of path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtseg.errors import WeightsError
from rtseg.userfiles import (NotRegularFileError, check_input_file, check_regular_file, in_name_order,
                             read_regular_file)


def _open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO with no writer: opening it blocking, or reading it, would wait forever."""
    path = tmp_path / "w.pth"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("check", [read_regular_file, check_regular_file])
def test_a_regular_file_is_read_and_checked(check, tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"\x00bytes\xff")
    before = _open_fds()
    assert check(path) == (b"\x00bytes\xff" if check is read_regular_file else None)
    assert _open_fds() == before


@pytest.mark.parametrize("check", [read_regular_file, check_regular_file])
def test_a_fifo_a_device_and_a_folder_are_refused_unread_and_closed(check, fifo, tmp_path):
    """A FIFO with no writer is refused at once (a blocking open would hang the test), as is /dev/zero (reading it
    never ends); a folder is told from them by ``folder``. The message is the one rtseg.imageio has always shown."""
    before = _open_fds()
    for path, folder in ((fifo, False), (Path("/dev/zero"), False), (tmp_path, True)):
        with pytest.raises(NotRegularFileError) as info:
            check(path)
        assert info.value.folder is folder
        assert info.value.strerror == "not a regular file (a FIFO, socket, device or folder)"
    assert _open_fds() == before


@pytest.mark.parametrize("check", [read_regular_file, check_regular_file])
def test_a_missing_file_raises_the_error_of_opening_it(check, tmp_path):
    with pytest.raises(FileNotFoundError):
        check(tmp_path / "none.pth")


def test_check_input_file_says_what_the_path_is(fifo, tmp_path):
    """The trainers' light check (``--init``, ``--resume``) names each kind of path in one line, with the advice;
    a regular file passes unread (an empty one too: its reader says more)."""
    cases = ((tmp_path / "none.pth", "--init X not found; give a file"),
             (tmp_path, "--init X is a folder; give a file"),
             (fifo, "--init X is not a regular file (a FIFO, socket or device); give a file"))
    for path, said in cases:
        with pytest.raises(WeightsError) as info:
            check_input_file("--init X", path, "give a file")
        assert str(info.value) == said
    (tmp_path / "empty.pth").write_bytes(b"")
    check_input_file("--init X", tmp_path / "empty.pth", "give a file")


def test_names_are_ordered_with_their_numbers_as_numbers():
    """img2 before img10 (plain sorting played an unpadded folder 1, 10, 11, 2 …); zero-padded and mixed widths,
    numbers longer than int()'s 4300-digit limit, and paths given as str or Path."""
    names = ["img10.png", "img2.png", "img1.png", "img02.png", "IMG3.png", "b/1.png", "a/10.png", "a/9.png",
             "x" + "9" * 5000 + ".png", "x" + "1" + "0" * 5000 + ".png", "frame_0010.png", "frame_0002.png"]
    assert in_name_order(names) == [
        "IMG3.png", "a/9.png", "a/10.png", "b/1.png", "frame_0002.png", "frame_0010.png", "img1.png", "img02.png",
        "img2.png", "img10.png", "x" + "9" * 5000 + ".png", "x" + "1" + "0" * 5000 + ".png"]
    assert in_name_order([Path("s11.jpg"), Path("s3.jpg")]) == [Path("s3.jpg"), Path("s11.jpg")]
