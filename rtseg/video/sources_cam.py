"""Webcam source (OpenCV ``cv2.VideoCapture``) by index (``0``) or device path (``/dev/video0``)."""
from __future__ import annotations

import time
from typing import Callable, Iterator

import cv2
import numpy as np

from rtseg.errors import SourceError
from rtseg.video.sources import Source


class CameraSource(Source):
    """Live frames from a camera.

    The driver's buffer is set to one frame so that a slow consumer gets the
    newest picture. A camera that delivers nothing for ``read_timeout`` seconds
    raises SourceError. ``capture_factory`` builds the capture object (default
    ``cv2.VideoCapture``); pts: seconds since the first frame (wall clock).
    """

    is_live = True

    def __init__(self, spec: str, *, read_timeout: float = 5.0,
                 capture_factory: Callable[..., cv2.VideoCapture] = cv2.VideoCapture) -> None:
        super().__init__(source_id=f"camera:{spec}")
        device: int | str = int(spec) if spec.isdigit() else spec
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one-line error says it all
        try:
            # /dev/video* exists only on Linux: ask V4L2 directly (no FFmpeg probing noise).
            self._cap = capture_factory(device, cv2.CAP_V4L2 if isinstance(device, str) else cv2.CAP_ANY)
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"camera {spec} not present or busy (cannot open it); check the index or "
                f"/dev/video* path, that no other program uses it, and permissions"
            )
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        self._read_timeout = read_timeout

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        t0: float | None = None
        last_ok = time.monotonic()
        while not self._stop.is_set():
            t_read = time.perf_counter()
            ok, image = self._cap.read()  # blocks until the driver has a frame: counted as decode
            now = time.monotonic()
            if not ok or image is None:
                if now - last_ok > self._read_timeout:
                    raise SourceError(
                        f"{self.source_id} delivered no frame for {self._read_timeout:g}s; was it unplugged?"
                    )
                self._stop.wait(0.01)
                continue
            last_ok = now
            t0 = now if t0 is None else t0
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            self.decode_seconds = time.perf_counter() - t_read
            yield np.ascontiguousarray(image), now - t0

    def close(self) -> None:
        super().close()
        self._cap.release()
