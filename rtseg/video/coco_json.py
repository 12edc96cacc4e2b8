"""A sink that writes a COCO results file (one JSON list for the whole run)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rtseg.data.coco_names import result_category_ids
from rtseg.errors import SinkError
from rtseg.serialize import detections_to_coco
from rtseg.types import Detections, Frame, Prediction


class CocoJsonSink:
    """Collect COCO results entries (``image_id = frame.seq + 1``, ``category_id`` from
    :func:`~rtseg.data.coco_names.result_category_ids`, RLE masks) and write them on close.

    The list goes to a hidden temporary file that is renamed to ``path`` on
    :meth:`close`, so ``path`` only ever holds a complete file; :meth:`abort`
    (a failed run) moves what was collected to ``<name>.partial.json`` instead. Entries are
    held in memory (RLE, compact): for long videos prefer JSON Lines.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from rtseg.video.sink_mp4 import require_writable_folder  # not at import time: it loads PyAV

        self.path = Path(path)
        require_writable_folder(self.path, "JSON output")
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self._file = open(self._tmp, "w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"JSON output {self.path}: cannot create ({exc.strerror}); choose another path") from None
        self._entries: list[dict] = []
        self.category_ids: Sequence[int] | None = None  # the engine's, when its weights name them

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        if not isinstance(prediction, Detections):
            raise SinkError(f"JSON output {self.path}: COCO results hold instance detections, not "
                            f"{type(prediction).__name__}; use a .jsonl file")
        ids = result_category_ids(prediction.class_names, self.category_ids)
        if len(prediction) and int(prediction.class_ids.max()) >= len(ids):
            raise SinkError(f"JSON output {self.path}: class id {int(prediction.class_ids.max())} but the engine "
                            f"names only {len(ids)} classes")
        self._entries.extend(detections_to_coco(prediction, frame.seq + 1, ids))

    def close(self) -> None:
        """Write the list and move it to ``path`` (idempotent)."""
        if self._file.closed:
            return
        try:
            with self._file:
                json.dump(self._entries, self._file, separators=(",", ":"))
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            hint = "was its folder removed?" if not self.path.parent.is_dir() else "free space or choose another path"
            raise SinkError(f"JSON output {self.path}: write failed ({exc.strerror}); {hint}") from None

    def abort(self) -> None:
        """A failed run: keep the entries collected so far in ``<name>.partial.json`` (never at ``path``)."""
        if self._file.closed:
            return
        self.partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        try:
            with self._file:
                json.dump(self._entries, self._file, separators=(",", ":"))
            os.replace(self._tmp, self.partial)
        except OSError:
            self._tmp.unlink(missing_ok=True)
