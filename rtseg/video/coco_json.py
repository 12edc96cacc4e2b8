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
from rtseg.video.outfiles import append_whole, claim, output_target, partial_path


_ENTRY_START = '{"image_id":'
"""How each entry begins in the file (compact JSON): nowhere else, since a quote within a string is escaped."""
_TAIL_BYTES = 8 << 20
"""How much of the end of a cut results file :func:`close_cut_results` reads (entries are far shorter)."""


def close_cut_results(path: Path) -> str:
    """Make the results file ``path`` that an interrupted :class:`CocoJsonSink` left valid JSON, keeping every
    complete entry: the list ended after its last complete entry (a crash leaves it without its ``]``; the sink
    writes each frame's entries whole, so only the end can be cut). Returns what was done, as a phrase for the
    warning of :func:`~rtseg.video.outfiles.claim` (``"; ..."``, or ``""`` when the file was complete)."""
    try:
        with open(path, "r+b") as file:
            size = file.seek(0, os.SEEK_END)
            base = file.seek(max(0, size - _TAIL_BYTES))
            tail = file.read().decode("latin-1")  # (ASCII JSON: one character per byte)
            end = _end_of_last_entry(tail)
            if end is None and not base and tail.startswith("["):
                end = 1  # (no complete entry: an empty list)
            if end is None:
                return "; it is cut and not valid JSON (no complete entry at its end)"
            if tail[end:].strip() == "]":
                return ""
            file.truncate(base + end)
            file.seek(base + end)
            file.write(b"]")
    except OSError as exc:
        return f"; it is cut and not valid JSON (closing it failed: {exc.strerror})"
    dropped = size - base - end
    return ("; added the closing ] that it lacked" if not tail[end:].strip() else
            f"; ended its list after the last complete entry (dropped the {dropped} bytes of a cut one)")


def _end_of_last_entry(text: str) -> int | None:
    """Where the last complete entry in ``text`` (a results file's end) ends; None when it holds none."""
    decoder = json.JSONDecoder()
    start = text.rfind(_ENTRY_START)
    while start >= 0:
        try:
            return decoder.raw_decode(text, start)[1]
        except ValueError:
            start = text.rfind(_ENTRY_START, 0, start)
    return None


def image_id(frame: Frame) -> int:
    """COCO image id of ``frame``: :attr:`Frame.index <rtseg.types.Frame.index>` + 1, the same whatever ``--start``
    and ``--vid-stride`` skipped (a live source's frames, which have no index: ``seq + 1``)."""
    return (frame.seq if frame.index is None else frame.index) + 1


class CocoJsonSink:
    """Write COCO results entries (``image_id`` from :func:`image_id`, ``category_id`` from
    :func:`~rtseg.data.coco_names.result_category_ids`, RLE masks) as one JSON list.

    Entries go to ``<name>.partial.json`` frame by frame (nothing is held in memory, however long the
    run), claimed by this run (a second run aimed at it is refused; :meth:`discard` — a run that failed before
    its first frame — removes it). :meth:`close` ends the list and
    renames the file to ``path``, so ``path`` only ever holds a complete file; :meth:`abort` (a failed
    run) ends the list and keeps it as ``<name>.partial.json``. A crash leaves that file without its
    closing ``]``: the next sink for ``path`` moves it aside to ``<name>.recovered-N.json`` and closes its list there
    (:func:`close_cut_results`), saying so in a warning. A run that wrote no frame (failed, or stopped before its
    first one) leaves no file, as the video and image outputs do, and an existing ``path`` as it was, as every
    output does: it has no result to record, and ``[]`` (frames without detections) would replace an earlier run's
    results with a false one.
    A symbolic link ``path`` is written through: the partial file is made beside its target, which the rename
    replaces (:func:`~rtseg.video.outfiles.output_target`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = output_target(Path(path), "JSON output", "to stream the detections write JSON Lines (--json - "
                                  "or a .jsonl path), else choose a file path")
        self.partial = partial_path(self.path)
        self._file = os.fdopen(claim(self.partial, self.path, "JSON output", close_cut_results), "wb", buffering=0)
        self._opened = False  # "[" written
        self.frames_written = 0  # frames written, with or without detections
        self.category_ids: Sequence[int] | None = None  # the engine's, when its weights name them

    def write(self, frame: Frame, prediction: Prediction, annotated: np.ndarray) -> None:
        if not isinstance(prediction, Detections):
            raise SinkError(f"JSON output {self.path}: COCO results hold instance detections, not "
                            f"{type(prediction).__name__}; use a .jsonl file")
        ids = result_category_ids(prediction.class_names, self.category_ids)
        if len(prediction) and int(prediction.class_ids.max()) >= len(ids):
            raise SinkError(f"JSON output {self.path}: class id {int(prediction.class_ids.max())} but the engine "
                            f"names only {len(ids)} classes")
        entries = detections_to_coco(prediction, image_id(frame), ids)
        if entries:
            self._put(("," if self._opened else "[") + json.dumps(entries, separators=(",", ":"))[1:-1])
            self._opened = True
        self.frames_written += 1

    def _put(self, text: str) -> None:
        """Append ``text``; a failed write is taken back (the file keeps whole entries only) and is a SinkError."""
        try:
            append_whole(self._file, text.encode())
        except OSError as exc:
            hint = "was its folder removed?" if not self.path.parent.is_dir() else "free space or choose another path"
            raise SinkError(f"JSON output {self.partial}: write failed ({exc.strerror}); {hint}") from None

    def _end_list(self) -> None:
        """Close the JSON list (the file stays open: its claim ends when the caller closes it)."""
        self._put("]" if self._opened else "[]")

    def close(self) -> None:
        """End the list and move the file to ``path`` (idempotent); without a frame written, :meth:`discard`."""
        if self._file.closed:
            return
        if not self.frames_written:
            self.discard()
            return
        try:
            self._end_list()
            try:
                os.replace(self.partial, self.path)
            except OSError as exc:
                raise SinkError(f"JSON output {self.path}: finalising failed ({exc.strerror}); "
                                f"the results are in {self.partial}") from None
        finally:  # claimed until the final file is in place: a run starting meanwhile takes no finished file for a
            self._file.close()  # crash's leftover (:func:`~rtseg.video.outfiles.claim` moves those aside)

    def discard(self) -> None:
        """No frame was written: remove the partial file, then close it (``path`` stays as it was)."""
        if not self._file.closed:
            self.partial.unlink(missing_ok=True)  # while claimed: never another run's new one
            self._file.close()

    def abort(self) -> None:
        """A failed run: end the list (best effort) and keep the entries written so far in ``<name>.partial.json``
        (without a frame written, :meth:`discard`)."""
        if self._file.closed:
            return
        if not self.frames_written:
            self.discard()
            return
        try:
            self._end_list()
        except SinkError:
            pass
        finally:
            self._file.close()
