"""The --show window on a real X server (Xvfb), driven by real key presses (xdotool).

Skipped where Xvfb or xdotool is missing (``.ci/run`` installs both). Closing the window with
the mouse needs a window manager (it sends WM_DELETE_WINDOW), which Xvfb lacks: that path is
not covered here; ``q`` and Esc are.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "engines" / "yolact_demo.safetensors"

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")),
                                reason="needs Xvfb and xdotool (apt-get install xvfb xdotool)")


@pytest.fixture(scope="module")
def display() -> str:
    """A private Xvfb display for this module."""
    for n in range(140, 160):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.skip("Xvfb did not start")
        time.sleep(0.1)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)


def _env(display: str) -> dict[str, str]:
    return {**os.environ, "DISPLAY": display, "PYTHONUNBUFFERED": "1"}


def _find_window(display: str, title: str, timeout: float, proc: subprocess.Popen | None = None) -> str | None:
    """The id of the visible window titled ``title``; None after ``timeout`` s or once ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{title}$"], capture_output=True, text=True,
                           env=_env(display))
        if r.stdout.strip():
            return r.stdout.split()[0]
        time.sleep(0.2)
    return None


def _frames_done(output: str) -> int:
    line = next(ln for ln in output.splitlines() if ln.startswith("frames "))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A folder of 1,500 small images, played with --realtime at its nominal 25 FPS: a minute, so the run cannot
    end by itself before the window is found even on a loaded machine (the 300-frame synthetic clip, run flat
    out, once could). Written with OpenCV: importing PyAV into this process keeps OpenCV's window from showing."""
    import cv2

    folder = tmp_path_factory.mktemp("window")
    for i in range(1500):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((64, 96, 3), (i * 7) % 256, np.uint8))
    return folder


@pytest.mark.parametrize("key", ["q", "Escape"])
def test_key_in_the_window_stops_the_run(display: str, long_clip: Path, key: str) -> None:
    """``run.py --show``: the window opens, a key press ends the run cleanly, before the clip's end."""
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "--source", str(long_clip), "--realtime",
                             "--weights", str(DEMO), "--show", "--no-progress"], cwd=REPO, env=_env(display),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        window = _find_window(display, "rtseg", timeout=150, proc=proc)
        if window is None:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"no window titled rtseg appeared (exit {proc.returncode}); run.py printed:\n{out[-2000:]}")
        time.sleep(0.5)
        subprocess.run(["xdotool", "key", "--window", window, key], env=_env(display), check=True,
                       capture_output=True)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    assert "Traceback" not in out and "QObject" not in out  # no Qt thread warnings at exit either
    assert 0 < _frames_done(out) < 1500  # the key stopped it
    assert _find_window(display, "rtseg", timeout=0.5) is None  # the window is gone


def test_window_sink_in_process(display: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written from one thread, closed from another (as the pipeline does): no hang, window shown then gone."""
    import threading

    from rtseg.types import Frame
    from rtseg.video.sinks import WindowSink

    monkeypatch.setenv("DISPLAY", display)
    sink = WindowSink("rtseg-test")
    frame = Frame(image=np.full((120, 160, 3), 90, np.uint8), seq=0)

    def writer() -> None:
        for i in range(20):
            sink.write(frame, None, frame.image)
            time.sleep(0.01)

    t = threading.Thread(target=writer)
    t.start()
    t.join(timeout=10)
    assert _find_window(display, "rtseg-test", timeout=10) is not None
    assert not sink.stop_requested
    start = time.monotonic()
    sink.close()
    assert time.monotonic() - start < 5
    assert _find_window(display, "rtseg-test", timeout=0.5) is None


_DROPPED = """
import gc, threading, weakref
import numpy as np
from rtseg.types import Frame
from rtseg.video.sinks import WindowSink

sink = WindowSink("rtseg-dropped")
(thread,) = [t for t in threading.enumerate() if t.name == "rtseg-window"]
image = np.full((120, 160, 3), 90, np.uint8)
sink.write(Frame(image=image, seq=0), None, image)
input()  # the test has seen the window
collected = weakref.ref(sink)
del sink
gc.collect()
thread.join(5.0)
print("collected", collected() is None, "thread alive", thread.is_alive(), flush=True)
input()  # the test has looked for the window
"""


def test_window_sink_dropped_unclosed_closes_its_window(display: str) -> None:
    """A sink a library user forgot to close is collected once dropped, and its finalizer ends the window thread and
    closes the window while the process goes on (the thread ran the sink's own method: the sink stayed alive, its
    window open for ever). In a process of its own: OpenCV shows no window from a second window thread."""
    proc = subprocess.Popen([sys.executable, "-c", _DROPPED], cwd=REPO, env=_env(display), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _find_window(display, "rtseg-dropped", timeout=30, proc=proc) is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "collected True thread alive False\n"
        assert _find_window(display, "rtseg-dropped", timeout=0.5) is None
        out, _ = proc.communicate("\n", timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
