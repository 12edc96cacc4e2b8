"""Draw predictions on frames: masks, boxes, labels, a HUD.

``annotate(image, prediction)`` returns a new BGR uint8 image and never
modifies its input. Everything is vectorised: the only Python loops run over
instances (to paint each mask inside its own box, and to draw boxes/labels
with OpenCV), never over pixels, so the per-instance cost is proportional to
the instance's box area rather than to the frame.

Colours are a pure function of a key (class id, or track id when the
detections carry ``track_ids``), so they stay the same across frames.
"""
from __future__ import annotations

import math
from typing import Mapping

import cv2
import numpy as np

from rtseg.errors import ConfigError
from rtseg.ranges import check_number
from rtseg.types import Detections, Panoptic, Prediction, SemanticMap, Superpixels

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_BOUNDARY_BGR = np.array([0, 255, 255], np.uint8)  # yellow
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colors_for(keys: np.ndarray) -> np.ndarray:
    """Stable, well-spread colours for integer keys.

    keys: (N,) integer array (class ids, track ids or segment ids; any sign).
    Returns (N, 3) uint8 BGR. Hue walks the golden ratio so that consecutive
    keys differ strongly; saturation and value alternate in a few steps.
    """
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    if k.size == 0:
        return np.zeros((0, 3), np.uint8)
    hue = np.mod(k * _GOLDEN + 0.11, 1.0) * 180.0  # OpenCV hue range is [0, 180)
    sat = 170 + 40 * np.mod(k // 7, 3)
    val = 255 - 45 * np.mod(k // 3, 2)
    hsv = np.stack([hue, sat, val], axis=-1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


def annotate(
    image: np.ndarray,
    prediction: Prediction,
    *,
    hud: Mapping[str, float | int | str] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw ``prediction`` on a copy of ``image``.

    image: (H, W, 3) uint8 BGR; not modified.
    prediction: Detections (masks blended, boxes, ``"person 0.87"`` labels),
        SemanticMap (colour map blend, label 0 left clear), Superpixels
        (segment boundaries) or Panoptic (colour per segment plus boundaries).
    hud: optional text items drawn top-left, e.g. ``{"FPS": 29.7, "latency ms": 41.2}``
        (floats shown with one decimal).
    alpha: opacity of mask colours, a number in [0, 1].
    Returns a new (H, W, 3) uint8 BGR image. A wrong argument is a ConfigError (one line), as the engines' are.

    Detections of an engine that keeps frames on its device (YOLACT's ``device_overlay``) are blended there: ``image``
    as it is now goes up (it may have been drawn on since the inference), the finished frame comes back.
    """
    return _annotate(image, prediction, hud, alpha, inferred=False)


def _annotate_inferred(image: np.ndarray, prediction: Prediction, *,
                       hud: Mapping[str, float | int | str] | None = None, alpha: float = 0.45) -> np.ndarray:
    """:func:`annotate` for a caller that owns ``image`` and has not written it since the engine inferred on it (the
    pipeline): an engine's device blend then draws into the device copy of the frame it kept, with no upload.

    Internal: a frame changed after the inference would be annotated as it was then (a caller of the API gets
    :func:`annotate`, which blends the image it is given).
    """
    return _annotate(image, prediction, hud, alpha, inferred=True)


def _annotate(image: np.ndarray, prediction: Prediction, hud: Mapping[str, float | int | str] | None, alpha: float,
              inferred: bool) -> np.ndarray:
    """:func:`annotate`; ``inferred`` as :func:`_annotate_inferred` says."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ConfigError(f"annotate: expected an (H, W, 3) uint8 BGR numpy image, got {got}")
    check_number("annotate: alpha", alpha, 0, 1, integer=False)
    alpha = float(alpha)  # OpenCV takes no other real number (a Fraction)
    size = image.shape[:2]
    if isinstance(prediction, Detections):
        _check_size("Detections.image_size", prediction.image_size, size)
        out = _draw_detections(image, prediction, alpha, inferred)
    elif isinstance(prediction, SemanticMap):
        _check_size("SemanticMap.labels", prediction.labels.shape, size)
        labels = np.maximum(prediction.labels, 0)
        keys = np.arange(1, int(labels.max(initial=0)) + 1)  # label k is drawn in colours_for(k)
        out = _blend_owner(image, labels, colors_for(keys), alpha)
    elif isinstance(prediction, Superpixels):
        _check_size("Superpixels.labels", prediction.labels.shape, size)
        out = image.copy()
        out[boundaries(prediction.labels)] = _BOUNDARY_BGR
    elif isinstance(prediction, Panoptic):
        _check_size("Panoptic.ids", prediction.ids.shape, size)
        out = _draw_panoptic(image, prediction, alpha)
    else:
        raise ConfigError(f"annotate: expected Detections, SemanticMap, Superpixels or Panoptic (an engine's "
                          f"result), got {type(prediction).__name__}")
    if hud is not None and not isinstance(hud, Mapping):
        raise ConfigError(f"annotate: hud must be a mapping such as {{'FPS': 29.7}}, got {type(hud).__name__}")
    if hud and out.size:
        _draw_hud(out, hud)
    return out


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def _check_size(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise ConfigError(f"annotate: {name} is {tuple(got)} but the image is {tuple(want)} (H, W)")


def _blend_owner(image: np.ndarray, owner: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """Blend ``colors[owner - 1]`` over ``image`` where ``owner > 0``.

    image: (H, W, 3) uint8 BGR (not modified).
    owner: (H, W) non-negative integer map: 0 = leave the pixel, k = colour ``colors[k - 1]``.
    colors: (K, 3) uint8 BGR.
    Returns a new (H, W, 3) uint8 image. With at most 255 colours the lookup runs
    as an OpenCV LUT on a uint8 map (a numpy gather is ~10x slower at 1080p).
    """
    lut = np.concatenate([np.zeros((1, 3), np.uint8), colors.astype(np.uint8)])
    if len(lut) <= 256:
        mask = owner if owner.dtype == np.uint8 else owner.astype(np.uint8)
        table = np.zeros((256, 1, 3), np.uint8)
        table[: len(lut), 0] = lut
        layer = cv2.LUT(cv2.merge([mask, mask, mask]), table)
    else:
        mask = (owner > 0).view(np.uint8)
        layer = np.take(lut, owner, axis=0)
    blended = cv2.addWeighted(image, 1.0 - alpha, layer, alpha, 0.0)
    out = image.copy()
    cv2.copyTo(blended, mask, out)  # only where mask != 0
    return out


def _int_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 4) float xyxy -> (N, 4) int xyxy rounded outwards by one pixel, clipped to the image."""
    h, w = size
    lo = np.floor(boxes[:, :2]) - 1
    hi = np.ceil(boxes[:, 2:]) + 1
    out = np.concatenate([lo, hi], axis=1)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, w)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, h)
    return out.astype(np.int64)


def _instance_keys(dets: Detections) -> np.ndarray:
    """Colour key per detection: track id when tracked, else class id."""
    return dets.track_ids if dets.track_ids is not None else dets.class_ids


def _draw_detections(image: np.ndarray, dets: Detections, alpha: float, inferred: bool) -> np.ndarray:
    """A copy of ``image`` with ``dets`` drawn: masks by the detections' device blend when they have one (``inferred``
    passed on: whether ``image`` is unchanged since the inference, see :func:`_annotate_inferred`) and it takes
    ``image``, else on the host; then boxes and labels."""
    n = len(dets)
    if n == 0:
        return image.copy()
    colors = colors_for(_instance_keys(dets))
    out = dets._blend_fn(image, colors, alpha, inferred=inferred) if dets._blend_fn is not None else None
    if out is None:
        out = _blend_masks(image, dets, colors, alpha)
    _draw_boxes_and_labels(out, dets, colors)
    return out


def _blend_masks(image: np.ndarray, dets: Detections, colors: np.ndarray, alpha: float) -> np.ndarray:
    """Masks blended on the host: a copy of ``image`` with each mask in its colour, best score on top."""
    n = len(dets)
    ib = _int_boxes(dets.boxes, dets.image_size)
    masks = dets.masks
    # Work inside the union of the boxes only.
    rx0, ry0 = ib[:, :2].min(axis=0)
    rx1, ry1 = ib[:, 2:].max(axis=0)
    if rx1 <= rx0 or ry1 <= ry0:  # every box is outside the image or empty
        return image.copy()
    # Painter's order: lowest score first so the most confident instance ends on top.
    # Each step touches only its own box, so its cost is proportional to the box area.
    owner = np.zeros((max(ry1 - ry0, 0), max(rx1 - rx0, 0)), np.uint8 if n < 255 else np.int32)
    for i in np.argsort(dets.scores, kind="stable"):
        x0, y0, x1, y1 = ib[i]
        if x1 > x0 and y1 > y0:
            owner[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0][masks[i, y0:y1, x0:x1]] = i + 1
    out = image.copy()
    out[ry0:ry1, rx0:rx1] = _blend_owner(image[ry0:ry1, rx0:rx1], owner, colors, alpha)
    return out


def _label_text(dets: Detections, i: int, labels: list[str]) -> str:
    track = f" #{int(dets.track_ids[i])}" if dets.track_ids is not None else ""
    return f"{labels[i]}{track} {float(dets.scores[i]):.2f}"


def _draw_boxes_and_labels(out: np.ndarray, dets: Detections, colors: np.ndarray) -> None:
    """Boxes in the instance colour and a filled label tag above each box (in place)."""
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 1000.0)
    thick = max(1, int(round(scale * 2)))
    labels = dets.labels
    # far-outside corners are clamped just beyond the frame (OpenCV takes int32 points only)
    m = thick + 1
    boxes = np.round(np.clip(dets.boxes, -m, np.array([w, h, w, h]) + m)).astype(np.int64)
    for i in range(len(dets)):
        color = tuple(int(c) for c in colors[i])
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick, cv2.LINE_8)
        text = _label_text(dets, i, labels)
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(y0 + th + base + 2, h - 1)
        tx = min(max(x0, 0), max(w - tw, 0))
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty + 1), color, -1)
        ink = (0, 0, 0) if int(colors[i].astype(np.int32).sum()) > 380 else (255, 255, 255)
        cv2.putText(out, text, (tx, ty - base // 2), _FONT, scale, ink, 1, cv2.LINE_AA)


def _draw_panoptic(image: np.ndarray, pan: Panoptic, alpha: float) -> np.ndarray:
    """Things coloured per segment id, stuff per category; segment boundaries on top."""
    if not pan.segments:
        ids = np.unique(pan.ids)
        seg_ids, keys = ids[ids != 0], ids[ids != 0]
    else:
        seg_ids = np.array([s["id"] for s in pan.segments], np.int64)
        keys = np.array(
            [s["id"] if s.get("isthing", True) else 1_000_003 + s["category_id"] for s in pan.segments],
            np.int64,
        )
    if seg_ids.size == 0:
        return image.copy()
    order = np.argsort(seg_ids)
    seg_ids, keys = seg_ids[order], keys[order]
    pos = np.clip(np.searchsorted(seg_ids, pan.ids), 0, seg_ids.size - 1)
    owner = np.where(seg_ids[pos] == pan.ids, pos + 1, 0)  # 0 = void or unlisted id
    out = _blend_owner(image, owner, colors_for(keys), alpha)
    out[boundaries(pan.ids) & (owner > 0)] = 255
    return out


def _draw_hud(out: np.ndarray, hud: Mapping[str, float | int | str]) -> None:
    """Text items on a dark band at the top-left (in place)."""
    parts = [f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in hud.items()]
    text = "  ".join(parts)
    h, w = out.shape[:2]
    scale = max(0.45, min(h, w) / 900.0)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x1, y1 = min(tw + 12, w), min(th + base + 12, h)
    band = out[:y1, :x1]
    band[:] = (band.astype(np.uint16) * 2 // 7).astype(np.uint8)  # darken to ~30 %
    cv2.putText(out, text, (6, th + 6), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
