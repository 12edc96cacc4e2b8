"""Real parts shared by the source, pipeline, CLI and RTSP tests.

- ``tiny_engine()``: a small random-weight YOLACT (real network, real post-processing).
- ``tiny_weights(path)``: the same network saved as rtseg safetensors + manifest (for the CLI).
- ``make_clip(path, ...)``: an H.264 MP4 written with PyAV whose frame ``i`` is a known colour.
- ``ListSink``: a real sink that keeps what it was given.
- ``RtspServer``: gst-rtsp-server on loopback in a subprocess (system python3 with ``gi``).
- ``push_receiver(...)``: Debian's ffmpeg as a one-client RTMP/RTSP listener; ``wait_listening(port)``: until it is up.
- ``FILE_LIMIT_RUN``: ``python -c FILE_LIMIT_RUN LIMIT ARGS...`` runs ``rtseg ARGS`` with files limited to LIMIT bytes.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
FFMPEG = shutil.which("ffmpeg")
TINY_CLASSES = ["a", "b", "c"]
FILE_LIMIT_RUN = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # past the limit, write() fails with EFBIG (a full disk)
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY)); "
    "sys.argv = ['rtseg', *sys.argv[2:]]; "
    "runpy.run_module('rtseg', run_name='__main__')"
)
"""``python -c FILE_LIMIT_RUN LIMIT ARGS...``: ``rtseg ARGS`` in a process whose files may grow to LIMIT bytes only
(a full disk without mounting one: a write past it fails with EFBIG)."""


def tiny_config():
    from rtseg.models.yolact import YolactConfig

    return YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32, num_prototypes=8)


def tiny_engine(**options):
    import torch

    from rtseg.engines.yolact import YolactEngine

    torch.manual_seed(0)
    torch.set_num_threads(1)
    options.setdefault("score_threshold", 0.0)
    options.setdefault("top_k", 5)
    return YolactEngine.from_config(tiny_config(), class_names=TINY_CLASSES, **options)


def tiny_weights(path: Path) -> Path:
    import torch

    from rtseg.models.yolact import Yolact
    from rtseg.weights import save_yolact

    torch.manual_seed(0)
    return save_yolact(path, Yolact(tiny_config()), TINY_CLASSES)


def clip_colour(i: int) -> tuple[int, int, int]:
    """BGR colour of frame ``i`` of a ``make_clip`` video (distinct, far from black)."""
    return (40 + (i * 37) % 180, 40 + (i * 71) % 180, 40 + (i * 13) % 180)


def make_clip(path: Path, *, frames: int = 30, width: int = 64, height: int = 48, fps: int = 10,
              gop: int = 5, faststart: bool = False, first: int = 0, fmt: str | None = None,
              options: dict[str, str] | None = None, codec_options: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` solid-colour frames (``clip_colour(first + i)``) as H.264 with PyAV: MP4 by default (index
    first if ``faststart``, so that a truncated copy still opens), else container format ``fmt`` with its
    ``options``; ``codec_options`` replace the encoder's (default: a key frame every ``gop`` frames, crf 10)."""
    container_options = {**({"movflags": "+faststart"} if faststart else {}), **(options or {})}
    with av.open(str(path), "w", format=fmt, options=container_options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = codec_options or {"g": str(gop), "crf": "10"}
        for i in range(first, first + frames):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = clip_colour(i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class ListSink:
    """A real sink: remembers every frame, prediction and annotated image (or a summary of it)."""

    def __init__(self, *, keep_images: bool = True, fail_at: int | None = None, exc: Exception | None = None) -> None:
        self.frames, self.predictions, self.images = [], [], []
        self.write_times: list[float] = []
        self.closed = self.aborted = False
        self.keep_images, self.fail_at, self.exc = keep_images, fail_at, exc
        self._lock = threading.Lock()

    def write(self, frame, prediction, annotated) -> None:
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise self.exc
        with self._lock:
            self.frames.append(frame if self.keep_images else frame.__class__(
                image=np.zeros((1, 1, 3), np.uint8), source_id=frame.source_id, seq=frame.seq, pts=frame.pts,
                capture_time=frame.capture_time))
            self.predictions.append(prediction)
            self.images.append(annotated if self.keep_images else annotated.shape)
            self.write_times.append(time.monotonic())

    def __len__(self) -> int:
        with self._lock:
            return len(self.frames)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until a server is up on ``port``, without connecting (ffmpeg -listen takes one client only): something
    listens there, or has accepted a connection there (ffmpeg -listen closes its listening socket once its one
    client came, which a reconnecting sink can be before this looks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()  # entry, local address:port (hex), remote address:port, state, …
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] in ("0A", "01"):  # LISTEN, ESTABLISHED
                    return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}, nor is connected there")


def push_receiver(scheme: str, url: str, out: Path, *, copyts: bool = False) -> subprocess.Popen:
    """Debian's ffmpeg as a one-client RTMP/RTSP listener, copying what it receives into ``out``
    (with ``copyts``: the sender's own timestamps, not shifted to start at 0)."""
    listen = ["-listen", "1"] if scheme == "rtmp" else ["-rtsp_flags", "listen", "-rtsp_transport", "tcp"]
    return subprocess.Popen([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", *(["-copyts"] * copyts),
                             *listen, "-i", url, "-c", "copy", "-y", str(out)], stderr=subprocess.PIPE)


def rtsp_server_available() -> str | None:
    """None when the GStreamer RTSP server can run here, else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "import sys; sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
             "('videotestsrc','x264enc','rtph264pay','videoconvert')) else 3)")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True)
    if r.returncode != 0:
        return ("GStreamer RTSP server missing (apt-get install gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 "
                "python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)")
    return None


class RtspServer:
    """``rtsp_server.py`` in a subprocess; ``start()`` waits for READY, ``stop()`` kills it."""

    def __init__(self, port: int, *, width: int = 320, height: int = 240, user: str | None = None,
                 password: str | None = None, audio: bool = False) -> None:
        self.port, self.width, self.height, self.user, self.password = port, width, height, user, password
        self.audio = audio
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/test"

    def start(self, timeout: float = 15.0) -> "RtspServer":
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port),
               "--width", str(self.width), "--height", str(self.height)]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        cmd += ["--audio"] * self.audio
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline().strip()
            if line == "READY":
                return self
        err = self.proc.stderr.read() if self.proc.poll() is not None else "timeout"
        self.stop()
        raise RuntimeError(f"RTSP server did not start: {line} {err}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
