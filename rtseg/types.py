"""The data that travels through rtseg: frames in, typed predictions out.

Every result type validates its arrays on construction and states the expected
versus actual shape when they disagree. They compare by identity (``==`` is ``is``:
value equality of numpy arrays has no single truth value) and pickle, so results
can cross a ``multiprocessing`` queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


def _check(name: str, arr: np.ndarray, shape: tuple[int | None, ...], dtype: type | None) -> None:
    """Raise ValueError unless ``arr`` has ``shape`` (None = any) and ``dtype``."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    if dtype is not None and arr.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {arr.dtype}")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded video frame.

    image: (H, W, 3) uint8 BGR.
    source_id: which source produced it (e.g. the URL with credentials removed).
    seq: 0-based sequence number within the source (counts decoded frames, including dropped ones).
    pts: presentation timestamp in seconds from the source's start (None when unknown).
    capture_time: ``time.monotonic()`` when the frame left the decoder, seconds.
    file: the image file it was read from (image folders, globs and single images); None for video files,
    streams and cameras.
    index: 0-based number of the frame in its video file, image list or synthetic clip, counting the frames that
        ``--start`` and ``--vid-stride`` passed over (frame 0 of a file is its first frame, whatever the start); None
        where the source has no such numbering (cameras, live streams). A COCO results file's ``image_id`` is
        ``index + 1`` (``seq + 1`` where it is None): the ids of rtseg's COCO export of a clip (``--every 1``) or of
        its image folder.
    duration: seconds the frame is shown, as the source times it: a video file's frame duration as its decoder gives
        it (else 1 / fps), an image folder's or a synthetic clip's frame period; a frame standing for those that
        ``--vid-stride`` passes over after it lasts until the last of them ends (at most until ``--end``). A recording
        shows its last frame that long; None where unknown (cameras, live streams).
    """

    image: np.ndarray
    source_id: str = ""
    seq: int = 0
    pts: float | None = None
    capture_time: float = 0.0
    file: str | None = None
    index: int | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        _check("Frame.image", self.image, (None, None, 3), np.uint8)


@dataclass(eq=False)
class Detections:
    """Instance segmentation result for one frame (shared by every instance engine).

    boxes: (N, 4) float32 xyxy in frame pixels.
    scores: (N,) float32. The engines give them sorted descending; nothing relies on the order
        (a subset by integer indices may reorder them).
    class_ids: (N,) int64, 0-based index into ``class_names``.
    masks: (N, H, W) bool at full frame resolution. Materialised lazily when a
        ``mask_fn`` is given (e.g. YOLACT prototypes x coefficients): the first
        access calls it and caches the result.
    class_names: names of all classes the engine knows.
    mask_scores: optional (N,) float32 mask quality (e.g. MS R-CNN's score).
    track_ids: optional (N,) int64 track identities.
    image_size: (H, W) of the frame the detections refer to, two ints >= 0.

    Engines that keep the frame on their device may also give a ``blend_fn(image, colors,
    alpha, *, inferred=False)``: it blends the masks into ``image`` where the network ran and
    returns the host (H, W, 3) uint8 result, or None when ``image`` is not the frame the
    detections came from; ``inferred=True``: the caller vouches ``image`` is unchanged since
    the inference, and the engine's device copy of it is used (no upload; the pipeline's case).
    :func:`rtseg.annotate` uses it, so masks never travel to the host just to be drawn.
    Likewise an ``rle_fn()`` returns the masks' COCO RLE dicts encoded on the device (see
    :meth:`rles`), so JSON output needs only the run boundaries from the device.
    A pickled or copied Detections has its masks materialised and none of these functions
    (they hold the engine's device tensors): it blends and encodes on the host.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    image_size: tuple[int, int]
    class_names: Sequence[str] = ()
    mask_scores: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    _masks: np.ndarray | None = field(default=None, repr=False)
    _mask_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _blend_fn: Callable[..., np.ndarray | None] | None = field(default=None, repr=False)
    _rle_fn: Callable[[], list[dict]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        size = self.image_size
        if not (isinstance(size, (tuple, list)) and len(size) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in size)):
            raise ValueError(f"Detections.image_size: expected (H, W), two ints >= 0, got {size!r}")
        self.image_size = (int(size[0]), int(size[1]))
        n = len(self.boxes)
        _check("Detections.boxes", self.boxes, (n, 4), np.float32)
        _check("Detections.scores", self.scores, (n,), np.float32)
        _check("Detections.class_ids", self.class_ids, (n,), np.int64)
        if self.mask_scores is not None:
            _check("Detections.mask_scores", self.mask_scores, (n,), np.float32)
        if self.track_ids is not None:
            _check("Detections.track_ids", self.track_ids, (n,), np.int64)
        if self._masks is not None:
            _check("Detections.masks", self._masks, (n, *self.image_size), np.bool_)
        if not (np.isfinite(self.boxes).all() and np.isfinite(self.scores).all()):
            raise ValueError("Detections: boxes and scores must be finite (got NaN or inf)")
        if n and int(self.class_ids.min()) < 0:
            raise ValueError(f"Detections.class_ids: ids must be >= 0, got {int(self.class_ids.min())}")
        if n and self.class_names and int(self.class_ids.max()) >= len(self.class_names):
            raise ValueError(
                f"Detections.class_ids: max id {int(self.class_ids.max())} "
                f"but only {len(self.class_names)} class names"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getstate__(self) -> dict:
        """State for pickle and copy: the masks materialised, the engine-side functions left out."""
        return dict(self.__dict__, _masks=self.masks, _mask_fn=None, _blend_fn=None, _rle_fn=None)

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool full-resolution masks (materialised on first access; ``mask_fn`` and ``rle_fn``,
        which hold the engine's prototypes, are dropped then: :meth:`rles` encodes these masks from then on)."""
        make = self._mask_fn  # read before the masks: another thread that builds them sets them, then drops it
        masks = self._masks
        if masks is None:
            masks = np.zeros((len(self), *self.image_size), dtype=bool) if make is None else make()
            _check("Detections.masks", masks, (len(self), *self.image_size), np.bool_)
            self._masks = masks
            self._mask_fn = self._rle_fn = None
        return masks

    def rles(self) -> list[dict]:
        """COCO RLE ``{"size": [H, W], "counts": str}`` of every mask (as ``pycocotools.mask.encode``).

        Encoded by the engine's ``rle_fn`` where the masks are made, unless they are already
        materialised on the host.
        """
        from rtseg.ops.rle import encode_rle

        encode = self._rle_fn  # (read once: building the masks drops it)
        if self._masks is None and encode is not None:
            rles = encode()
            if len(rles) != len(self):
                raise ValueError(f"Detections.rles: rle_fn gave {len(rles)} encodings for {len(self)} detections")
            return rles
        return encode_rle(self.masks)

    @property
    def labels(self) -> list[str]:
        """Class name of every detection (``str(id)`` when names are unknown)."""
        names = self.class_names
        return [names[i] if i < len(names) else str(i) for i in self.class_ids.tolist()]

    def __getitem__(self, index: np.ndarray | list | slice | int) -> "Detections":
        """Subset by boolean mask (N,), integer indices (a list or 1-D array, each in -N..N-1), slice or one
        integer (a Detections of one); masks materialised. TypeError for other kinds of index, IndexError for
        indices out of range or a mask of another length."""
        index = self._rows(index)
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            class_ids=self.class_ids[index],
            image_size=self.image_size,
            class_names=self.class_names,
            mask_scores=None if self.mask_scores is None else self.mask_scores[index],
            track_ids=None if self.track_ids is None else self.track_ids[index],
            _masks=self.masks[index],
        )

    def _rows(self, index: object) -> np.ndarray:
        """``index`` (see :meth:`__getitem__`) as a 1-D int64 array of rows in range."""
        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        n = len(self)
        if isinstance(index, slice) and all(v is None or is_int(v) for v in (index.start, index.stop, index.step)):
            return np.arange(n, dtype=np.int64)[index]
        if is_int(index):
            index = [index]
        if isinstance(index, (list, np.ndarray)):
            rows = np.asarray(index)
            if rows.ndim == 1 and rows.dtype == np.bool_:
                if len(rows) != n:
                    raise IndexError(f"Detections: boolean mask of length {len(rows)} for {n} detections")
                return np.flatnonzero(rows)
            if rows.ndim == 1 and (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
                bad = rows[(rows < -n) | (rows >= n)]
                if bad.size:
                    raise IndexError(f"Detections: index {int(bad[0])} out of range for {n} detections")
                return rows.astype(np.int64)
        what = (f"an array of dtype {index.dtype} and shape {index.shape}" if isinstance(index, np.ndarray)
                else f"{type(index).__name__} {index!r:.60}")
        raise TypeError(f"Detections: an index is an int, a slice, a boolean mask of length N or a 1-D list or "
                        f"array of ints, got {what}")

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: Sequence[str] = ()) -> "Detections":
        """No detections for a frame of ``image_size`` (H, W)."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            image_size=image_size,
            class_names=class_names,
        )


@dataclass(eq=False)
class SemanticMap:
    """Per-pixel classes for one frame.

    labels: (H, W) int64 class index per pixel (0 = background by convention).
    class_names: names indexed by label.
    scores: optional (H, W) float32 confidence of the chosen label.
    """

    labels: np.ndarray
    class_names: Sequence[str] = ()
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check("SemanticMap.labels", self.labels, (None, None), np.int64)
        if self.scores is not None:
            _check("SemanticMap.scores", self.scores, self.labels.shape, np.float32)


@dataclass(eq=False)
class Superpixels:
    """SLIC-style over-segmentation of one frame.

    labels: (H, W) int64 segment id per pixel, ids 0..K-1.
    """

    labels: np.ndarray

    def __post_init__(self) -> None:
        _check("Superpixels.labels", self.labels, (None, None), np.int64)

    @property
    def num_segments(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0


@dataclass(eq=False)
class Panoptic:
    """Panoptic segmentation of one frame (panopticapi conventions).

    ids: (H, W) int64 segment id per pixel, 0 = void.
    segments: one dict per segment: {"id", "category_id", "isthing", "area", "score"?, "iscrowd"?} ("iscrowd":
        ground truth only, a COCO crowd region; missing means False).
    class_names: names indexed by category id.
    """

    ids: np.ndarray
    segments: list[dict] = field(default_factory=list)
    class_names: Sequence[str] = ()

    def __post_init__(self) -> None:
        _check("Panoptic.ids", self.ids, (None, None), np.int64)
        for s in self.segments:
            if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
                raise ValueError(f"Panoptic.segments: every segment needs 'id' and 'category_id', got {s!r:.80}")


Prediction = Detections | SemanticMap | Superpixels | Panoptic
