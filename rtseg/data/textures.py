"""Seeded textures for the synthetic benchmark: object fills and backgrounds.

Every function takes a ``numpy.random.Generator`` and returns uint8 BGR images,
so the same generator state always gives the same pixels.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
"""Photos shipped with scikit-image (``skimage.data``) used as backgrounds."""

OBJECT_TEXTURES = ("stripes", "checkers", "noise", "gradient", "dots", "solid")
BACKGROUNDS = ("photo", "photo", "gradient", "noise")


@lru_cache(maxsize=len(PHOTOS))
def _photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR photo from ``skimage.data`` (read-only, cached)."""
    import skimage.data

    rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    bgr = np.ascontiguousarray(rgb[..., ::-1].astype(np.uint8))
    bgr.setflags(write=False)
    return bgr


def vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 BGR colour with high saturation and mid-to-high value."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(110, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) float32 u, v coordinates in [-1, 1]."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(axis, axis)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) float32 smooth noise in [0, 1] (bicubic-upsampled random grid of ``cells``)."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    up = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(up, 0.0, 1.0)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a, b (3,) by weights t (H, W) in [0, 1] -> (H, W, 3) float32."""
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def object_texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8 BGR fill for one object in its own (rotating) frame."""
    kind = OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))]
    a, b = vivid_colour(rng), vivid_colour(rng)
    u, v = _grid(size)
    angle = rng.uniform(0, np.pi)
    along = u * np.cos(angle) + v * np.sin(angle)
    period = rng.uniform(0.25, 0.6)
    if kind == "stripes":
        t = (np.sin(along * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == "checkers":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "noise":
        t = _smooth_noise(rng, (size, size), int(rng.integers(3, 8)))
    elif kind == "gradient":
        t = (along + 1.5) / 3.0
    elif kind == "dots":
        t = (np.hypot((u / period) % 1 - 0.5, (v / period) % 1 - 0.5) < 0.3).astype(np.float32)
    else:
        t = np.zeros((size, size), np.float32)
    img = _blend(a, b, t) + rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 BGR background: a photo crop, a gradient or smooth noise.

    The result is dimmed and desaturated a little so that the objects stand out.
    """
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if kind == "photo":
        photo = _photo(PHOTOS[rng.integers(len(PHOTOS))])
        ph, pw = photo.shape[:2]
        ch = int(ph * rng.uniform(0.5, 1.0))
        cw = min(pw, int(ch * width / height * rng.uniform(0.8, 1.25)))
        y0, x0 = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        img = cv2.resize(photo[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img.astype(np.float32)
    elif kind == "gradient":
        u, v = np.meshgrid(np.linspace(-1, 1, width, dtype=np.float32), np.linspace(-1, 1, height, dtype=np.float32))
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip((u * np.cos(angle) + v * np.sin(angle) + 1.4) / 2.8, 0, 1)
        img = _blend(vivid_colour(rng), vivid_colour(rng), t)
        img += (_smooth_noise(rng, (height, width), 6)[..., None] - 0.5) * 60
    else:
        t = _smooth_noise(rng, (height, width), int(rng.integers(4, 16)))
        img = _blend(vivid_colour(rng) * 0.7, vivid_colour(rng) * 0.7, t)
    grey = img.mean(axis=2, keepdims=True)
    img = 0.55 * img + 0.25 * grey + 0.2 * float(rng.uniform(40, 160))
    return np.clip(img, 0, 255).astype(np.uint8)
