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

import json
import os
import sys
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from rtseg.errors import SinkError
from rtseg.serialize import frame_record
from rtseg.serve.server import WebSink
from rtseg.types import Frame, Prediction
from rtseg.video.sink_mp4 import Mp4Sink, require_writable_folder
from rtseg.video.sink_push import PushSink

__all__ = ["Sink", "ImageSink", "JsonlSink", "WindowSink", "Mp4Sink", "PushSink", "WebSink"]


class Sink(Protocol):
    """What the pipeline calls for every frame, then once at the end."""

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None: ...

    def close(self) -> None: ...


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class ImageSink:
    """Write the annotated image to ``path`` (format from the extension).

    Meant for a single-image source; with several frames the file holds the
    last one. A ``{seq}`` placeholder in the name (``out_{seq:05d}.png``)
    writes one file per frame instead. Files are written under a temporary
    name and renamed, so a reader never sees half an image.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in _IMAGE_EXTS:
            raise SinkError(
                f"image output {self.path}: unknown image type {self.path.suffix!r}; use one of "
                + ", ".join(sorted(_IMAGE_EXTS))
            )
        require_writable_folder(self.path, "image output")

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        target = Path(str(self.path).format(seq=frame.seq)) if "{seq" in str(self.path) else self.path
        ok, data = cv2.imencode(target.suffix.lower(), annotated)
        if not ok:
            raise SinkError(f"image output {target}: OpenCV cannot encode {target.suffix} images")
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, target)
        except OSError as exc:
            raise SinkError(f"image output {target}: write failed ({exc.strerror})") from None

    def close(self) -> None:
        """Nothing to release (each write is complete on its own)."""


class JsonlSink:
    """Append one JSON line per frame to ``path`` (created or truncated).

    Each line is written with a single unbuffered ``write`` call, so a crash
    leaves complete lines only.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        require_writable_folder(self.path, "JSON Lines output")
        try:
            self._file = open(self.path, "wb", buffering=0)
        except OSError as exc:
            raise SinkError(f"JSON Lines output {self.path}: cannot open ({exc.strerror})") from None

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        line = json.dumps(frame_record(frame, prediction), separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[self._file.write(view):]
        except OSError as exc:
            raise SinkError(f"JSON Lines output {self.path}: write failed ({exc.strerror})") from None

    def close(self) -> None:
        self._file.close()


def _gui_available() -> str | None:
    """None when OpenCV can open windows here, else the reason it cannot."""
    gui = cv2.getBuildInformation().split("GUI:", 1)
    if len(gui) == 2 and gui[1].split("\n", 1)[0].strip().upper() in ("NONE", ""):
        return "this OpenCV build has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class WindowSink:
    """Show annotated frames in an OpenCV window titled ``title``.

    The window is created on the first frame, in the thread that writes
    (GUI toolkits want one thread). Pressing ``q`` or Esc, or closing the
    window, sets :attr:`stop_requested`.
    """

    def __init__(self, title: str = "rtseg") -> None:
        reason = _gui_available()
        if reason is not None:
            raise SinkError(f"window output: {reason}; use --out file.mp4 or --web instead")
        self.title = title
        self.stop_requested = False
        self._shown = False

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        try:
            if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.stop_requested = True
                return
            cv2.imshow(self.title, annotated)
            self._shown = True
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stop_requested = True
        except cv2.error as exc:
            raise SinkError(f"window output: OpenCV cannot show the window ({exc.err})") from None

    def close(self) -> None:
        if self._shown:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self._shown = False
