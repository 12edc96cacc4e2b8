"""Synthetic video benchmark: textured shapes that move, spin, scale and occlude.

``SyntheticScene(seed)`` is a deterministic clip. Each object (track) gets seeded
motion parameters once; its state at frame ``t`` is a closed-form function of
``t``, so ``scene.frame(i)`` costs one render whatever ``i`` is. Masks are the
*visible* parts (objects are painted far to near), so the masks of one frame
never overlap. Instances whose visible area is below ``min_area`` pixels are
dropped.

Train, validation and held-out test data come from disjoint seeds
(``TRAIN_SEED``, ``VAL_SEED``, ``TEST_SEED``); ``SyntheticDataset`` draws still
images from many short scenes of one seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from rtseg.data.dataset import Sample
from rtseg.data.textures import background, object_texture
from rtseg.errors import ConfigError
from rtseg.ranges import check_number

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
TRAIN_SEED = 1
VAL_SEED = 2
TEST_SEED = 3
SPLITS: dict[str, tuple[int, int]] = {"train": (TRAIN_SEED, 20000), "val": (VAL_SEED, 200), "test": (TEST_SEED, 300)}
"""Split name -> (seed, default number of images) for ``SyntheticDataset``."""
LEAST: dict[str, int] = {"seed": 0, "width": 32, "height": 32, "num_frames": 1, "max_objects": 0, "min_area": 0,
                         "num_images": 0, "images_per_scene": 1, "frame_stride": 1, "every": 1}
"""Least value of each integer argument of :class:`SyntheticScene`, :class:`SyntheticDataset` and
:func:`scene_to_samples`; the export command line checks its options against them too."""
MOST: dict[str, int] = {"width": 4096, "height": 4096}
"""Most value of those arguments that have one: a frame side in pixels (4096: DCI 4K; a 99999-pixel side asked for
50 GB of noise texture and failed deep in OpenCV)."""

_TEXTURE_SIZE = 96


def check_scene_args(owner: str, **values: object) -> None:
    """ConfigError ``"<owner>: width must be an integer in [32, 4096], got 16"`` for the first of ``values``
    (argument name → value) that is not an integer from its least value (:data:`LEAST`) to its most (:data:`MOST`,
    where it has one)."""
    for name, value in values.items():
        check_number(f"{owner}: {name}", value, LEAST[name], MOST.get(name, math.inf), integer=True)


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(a), np.sin(a)], axis=1) * radius


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.32) -> np.ndarray:
    a, e = arm, 1.0
    return np.array([(-a, -e), (a, -e), (a, -a), (e, -a), (e, a), (a, a),
                     (a, e), (-a, e), (-a, a), (-e, a), (-e, -a), (-a, -a)], dtype=np.float64)


_SHAPES: dict[str, tuple[np.ndarray, tuple[np.ndarray, ...]]] = {
    # class name -> (outline, holes) in unit object coordinates (circumradius 1)
    "circle": (_regular(48), ()),
    "square": (_regular(4, phase=np.pi / 4), ()),
    "triangle": (_regular(3) + np.array([0.0, 0.25]), ()),
    "star": (_star(), ()),
    "ring": (_regular(48), (_regular(48, 0.55),)),
    "cross": (_cross(), ()),
}


@dataclass(frozen=True)
class Instance:
    """One visible object in a synthetic frame.

    mask: (H, W) bool visible pixels. class_id: 0-based index into ``CLASSES``.
    track_id: identity of the object, stable across the frames of one scene.
    """

    mask: np.ndarray
    class_id: int
    track_id: int


@dataclass(frozen=True)
class _Track:
    """Seeded motion of one object; all times in frames, lengths in pixels."""

    track_id: int
    class_id: int
    start: float
    end: float
    p0: np.ndarray  # (2,) xy centre at ``start``
    p1: np.ndarray  # (2,) xy centre at ``end``
    wobble: np.ndarray  # (2,) amplitude of a sinusoidal sway
    wobble_freq: float  # cycles per frame
    radius: float  # circumradius
    scale_amp: float  # relative size oscillation
    scale_freq: float
    angle0: float  # radians
    spin: float  # radians per frame
    phase: float
    depth: float  # larger is farther
    texture: np.ndarray  # (T, T, 3) uint8 fill in object coordinates

    def state(self, t: float) -> tuple[np.ndarray, float, float]:
        """Centre (2,) xy, circumradius and angle at frame ``t``."""
        s = (t - self.start) / (self.end - self.start)
        sway = self.wobble * np.sin(2 * np.pi * self.wobble_freq * t + np.array([self.phase, 2 * self.phase]))
        centre = self.p0 + (self.p1 - self.p0) * s + sway
        radius = self.radius * (1.0 + self.scale_amp * np.sin(2 * np.pi * self.scale_freq * t + self.phase))
        return centre, radius, self.angle0 + self.spin * t


class SyntheticScene:
    """A deterministic synthetic clip.

    ``scene.frame(i)`` -> ``(image (H, W, 3) uint8 BGR, instances: list[Instance])``,
    instances sorted by ``track_id``. Objects enter and leave the frame; at most
    ``max_objects`` are alive at a time. ``fps`` is the nominal frame rate for export.
    """

    fps = 30
    class_names = CLASSES

    def __init__(self, seed: int, *, width: int = 640, height: int = 480, num_frames: int = 300,
                 max_objects: int = 6, min_area: int = 30) -> None:
        check_scene_args("SyntheticScene", seed=seed, width=width, height=height, num_frames=num_frames,
                    max_objects=max_objects, min_area=min_area)
        self.seed, self.width, self.height = int(seed), width, height
        self.num_frames, self.max_objects, self.min_area = num_frames, max_objects, min_area
        rng = np.random.default_rng([self.seed, 0])
        self._pan = int(round(0.06 * max(width, height)))
        self._background = background(rng, height + 2 * self._pan, width + 2 * self._pan)
        self._pan_freq = rng.uniform(1 / 400, 1 / 120, 2)
        self._pan_phase = rng.uniform(0, 2 * np.pi, 2)
        self._tracks = self._make_tracks(rng)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[Instance]]]:
        return (self.frame(i) for i in range(self.num_frames))

    def _make_tracks(self, rng: np.random.Generator) -> list[_Track]:
        tracks: list[_Track] = []
        short = min(self.width, self.height)
        for _ in range(self.max_objects):  # one slot: a sequence of objects, one alive at a time
            t = -rng.uniform(0, 250)
            while t < self.num_frames:
                life = rng.uniform(60, 260)
                if t + life > 0:
                    radius = float(np.exp(rng.uniform(np.log(0.04 * short), np.log(0.17 * short))))
                    tracks.append(_Track(
                        track_id=len(tracks), class_id=int(rng.integers(len(CLASSES))),
                        start=t, end=t + life,
                        p0=self._endpoint(rng, radius), p1=self._endpoint(rng, radius),
                        wobble=rng.uniform(0, 0.04 * short, 2), wobble_freq=rng.uniform(1 / 120, 1 / 30),
                        radius=radius, scale_amp=rng.uniform(0, 0.2), scale_freq=rng.uniform(1 / 150, 1 / 40),
                        angle0=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-0.06, 0.06),
                        phase=rng.uniform(0, 2 * np.pi), depth=rng.random(),
                        texture=object_texture(rng, _TEXTURE_SIZE),
                    ))
                t += life + rng.uniform(0, 60)
        return tracks

    def _endpoint(self, rng: np.random.Generator, radius: float) -> np.ndarray:
        """A start/end centre: inside the frame, or just outside one edge (enter/leave)."""
        w, h = self.width, self.height
        if rng.random() < 0.5:
            return np.array([rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)])
        out = 1.1 * radius
        edge = rng.integers(4)
        along = rng.uniform(0, w if edge < 2 else h)
        return np.array([(along, -out), (along, h + out), (-out, along), (w + out, along)][edge])

    def frame(self, i: int) -> tuple[np.ndarray, list[Instance]]:
        """Image (H, W, 3) uint8 BGR and the visible instances of frame ``i``."""
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range [0, {self.num_frames})")
        h, w = self.height, self.width
        off = (self._pan * (1 + np.sin(2 * np.pi * self._pan_freq * i + self._pan_phase))).round().astype(int)
        image = self._background[off[1]:off[1] + h, off[0]:off[0] + w].copy()
        alive = sorted((tr for tr in self._tracks if tr.start <= i < tr.end), key=lambda tr: tr.depth, reverse=True)
        masks: list[tuple[_Track, np.ndarray]] = []
        for tr in alive:  # far to near: nearer objects paint over farther ones
            mask = self._paint(image, tr, float(i))
            if mask is not None:
                masks.append((tr, mask))
        instances, covered = [], np.zeros((h, w), bool)
        for tr, mask in reversed(masks):  # near to far: visible = mask minus what is in front
            visible = mask & ~covered
            covered |= mask
            if visible.sum() >= self.min_area:
                instances.append(Instance(mask=visible, class_id=tr.class_id, track_id=tr.track_id))
        frng = np.random.default_rng([self.seed, 1, i])
        gain = 1.0 + 0.06 * np.sin(2 * np.pi * i / 90 + self._pan_phase[0])
        noise = frng.integers(-4, 5, (h, w, 1), dtype=np.int16)
        image = _gain_and_noise(gain).take(image.astype(np.int16) * _NOISE_LEVELS + (noise + 4))
        return image, sorted(instances, key=lambda inst: inst.track_id)

    def _paint(self, image: np.ndarray, tr: _Track, t: float) -> np.ndarray | None:
        """Paint ``tr`` onto ``image`` in place; returns its full (H, W) bool mask or None if off-frame."""
        h, w = image.shape[:2]
        centre, radius, angle = tr.state(t)
        rot = radius * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        outline, holes = _SHAPES[CLASSES[tr.class_id]]
        pts = outline @ rot.T + centre
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            return None
        origin = np.array([x0, y0])
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(local, [_fixed(pts - origin)], 1, lineType=cv2.LINE_8, shift=4)
        for hole in holes:
            cv2.fillPoly(local, [_fixed(hole @ rot.T + centre - origin)], 0, lineType=cv2.LINE_8, shift=4)
        half = _TEXTURE_SIZE / 2
        affine = np.hstack([rot / half, (centre - origin - rot @ np.array([1.0, 1.0]) * (half - 0.5) / half)[:, None]])
        fill = cv2.warpAffine(tr.texture, affine, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
        inside = local.astype(bool)
        image[y0:y1, x0:x1][inside] = fill[inside]
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = inside
        return mask

    def sample(self, i: int) -> Sample:
        """Frame ``i`` as a still-image ``Sample``."""
        image, instances = self.frame(i)
        return Sample.from_masks(image, np.array([inst.mask for inst in instances]).reshape(-1, *image.shape[:2]),
                                 [inst.class_id for inst in instances])


_NOISE_LEVELS = 9  # the per-pixel noise is an integer in [-4, 4]


def _gain_and_noise(gain: float) -> np.ndarray:
    """(256 · 9,) uint8 table: entry ``v · 9 + n + 4`` is ``clip(v · gain + n, 0, 255)`` truncated to uint8, the
    frame's pixel value ``v`` after the lighting gain and noise ``n``: the very float64 arithmetic done per
    pixel, done once per pair (4× faster per 640×480 frame)."""
    values = np.arange(256, dtype=np.int16)[:, None]
    levels = np.arange(-4, 5, dtype=np.int16)[None, :]
    return np.clip(values * gain + levels, 0, 255).astype(np.uint8).ravel()


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Float (K, 2) xy points -> int32 fixed point with 4 fractional bits for ``cv2.fillPoly(shift=4)``."""
    return np.round(pts * 16).astype(np.int32)


class SceneSamples:
    """Every ``every``-th frame of a scene as a lazy still-image data set of ``Sample``."""

    def __init__(self, scene: SyntheticScene, *, every: int = 1) -> None:
        check_scene_args("scene_to_samples", every=every)
        self.scene, self.every = scene, every
        self.class_names = CLASSES
        self.image_files: tuple[Path, ...] = ()  # (drawn, not read)

    def __len__(self) -> int:
        return (len(self.scene) + self.every - 1) // self.every

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        return self.scene.sample((index % len(self)) * self.every)


def scene_to_samples(scene: SyntheticScene, *, every: int = 10) -> SceneSamples:
    """Still-image data set from frames 0, every, 2*every, ... of ``scene`` (lazy)."""
    return SceneSamples(scene, every=every)


def scene_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th scene of a data set with ``seed`` (64-bit, split-disjoint in practice)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


class SyntheticDataset:
    """``num_images`` still images drawn from short scenes of one ``seed``.

    Image ``k`` is frame ``(k % images_per_scene) * frame_stride`` of scene
    ``k // images_per_scene``; scene seeds derive from ``seed`` (``scene_seed``).
    """

    class_names = CLASSES
    image_files: tuple[Path, ...] = ()  # (drawn, not read)

    def __init__(self, seed: int, num_images: int, *, width: int = 640, height: int = 480,
                 images_per_scene: int = 8, frame_stride: int = 20, max_objects: int = 6) -> None:
        check_scene_args("SyntheticDataset", seed=seed, num_images=num_images, width=width, height=height,
                    images_per_scene=images_per_scene, frame_stride=frame_stride, max_objects=max_objects)
        self.seed, self.num_images = seed, num_images
        self.images_per_scene, self.frame_stride = images_per_scene, frame_stride
        self._scene_args = dict(width=width, height=height, max_objects=max_objects,
                                num_frames=(images_per_scene - 1) * frame_stride + 1)
        self._last: tuple[int, SyntheticScene] | None = None

    @classmethod
    def split(cls, name: str, num_images: int | None = None, **kwargs) -> "SyntheticDataset":
        """The ``"train"``, ``"val"`` or ``"test"`` split (see ``SPLITS``)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown synthetic split {name!r}; choose one of {', '.join(SPLITS)}")
        seed, default = SPLITS[name]
        return cls(seed, default if num_images is None else num_images, **kwargs)

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> SyntheticScene:
        """The ``index``-th scene (the last one is kept, as consecutive images share it)."""
        if self._last is None or self._last[0] != index:
            self._last = (index, SyntheticScene(scene_seed(self.seed, index), **self._scene_args))
        return self._last[1]

    def __getitem__(self, index: int) -> Sample:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"image {index} out of range [0, {self.num_images})")
        index %= self.num_images
        scene = self.scene(index // self.images_per_scene)
        return scene.sample((index % self.images_per_scene) * self.frame_stride)
