"""Training augmentations of dbolya/yolact (``SSDAugmentation``), on numpy arrays.

Every step takes and returns a :class:`~rtseg.data.dataset.Sample` so image,
boxes (xyxy pixels), class ids, masks and crowd flags stay consistent:
photometric distortion (brightness, contrast, saturation, hue), random expand
onto a mean-coloured canvas, random crop (objects kept when their box centre is
inside), horizontal mirror, then a square resize to the network input that
drops boxes narrower or shorter than 4/550 of it (official ``discard_box_*``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rtseg.data.dataset import Sample
from rtseg.models.yolact import MEANS_BGR

#: Official minimum box side kept after resizing, relative to the input side: just over one prototype pixel at the
#: official 550 px input, under one at smaller inputs (the mask loss counts such a side as one pixel:
#: :func:`rtseg.train.losses.box_area_on_grid`).
MIN_BOX_FRACTION = 4 / 550


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run; defaults are the official ones.

    expand_max: largest canvas/image side ratio of the random expand (1 disables it).
    crop_min_side: smallest crop side as a fraction of the image side.
    """

    photometric: bool = True
    expand_max: float = 4.0
    crop: bool = True
    crop_min_side: float = 0.3
    mirror: bool = True


def _replace(s: Sample, *, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray, keep: np.ndarray | None = None) -> Sample:
    """``s`` with new image/boxes/masks; ``keep`` (N,) bool selects objects (boxes/masks already selected)."""
    class_ids, iscrowd = s.class_ids, s.iscrowd
    if keep is not None:
        class_ids = class_ids[keep]
        iscrowd = None if iscrowd is None else iscrowd[keep]
    return Sample(image=image, boxes=boxes.astype(np.float32), class_ids=class_ids, masks=masks, iscrowd=iscrowd)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness (±32), contrast (×0.5–1.5, before or after the colour steps),
    saturation (×0.5–1.5) and hue (±18°), each with probability 1/2.

    image: (H, W, 3) uint8 BGR. Returns (H, W, 3) uint8 BGR.
    """
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    img = np.clip(img, 0, 255)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)  # float: H in [0, 360), S in [0, 1], V in [0, 255]
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
    if rng.random() < 0.5:
        hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-18, 18), 360)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def expand(s: Sample, rng: np.random.Generator, max_ratio: float) -> Sample:
    """With probability 1/2, place the image at a random spot of a canvas up to ``max_ratio`` times larger."""
    if max_ratio <= 1 or rng.random() < 0.5:
        return s
    h, w = s.image_size
    ratio = rng.uniform(1, max_ratio)
    left = int(rng.uniform(0, w * ratio - w))
    top = int(rng.uniform(0, h * ratio - h))
    big_h, big_w = int(h * ratio), int(w * ratio)
    image = np.empty((big_h, big_w, 3), np.uint8)
    image[:] = np.round(MEANS_BGR).astype(np.uint8)
    image[top:top + h, left:left + w] = s.image
    masks = np.zeros((len(s), big_h, big_w), bool)
    masks[:, top:top + h, left:left + w] = s.masks
    boxes = s.boxes + np.array([left, top, left, top], np.float32)
    return _replace(s, image=image, boxes=boxes, masks=masks)


def random_crop(s: Sample, rng: np.random.Generator, min_side: float = 0.3) -> Sample:
    """Official ``RandomSampleCrop`` as it behaves: 1 time in 6 no crop, otherwise up to 50 tries
    of a crop with sides in [min_side, 1] of the image and aspect 0.5–2 that holds at least one
    non-crowd box centre; kept boxes are clipped to the crop, their masks cut with it.

    (The official IoU constraint never rejects a crop, a known upstream bug kept because
    fixing it lowered mAP, so no IoU test is made here.)
    """
    if len(s) == 0 or rng.integers(6) == 0:
        return s
    h, w = s.image_size
    centres = (s.boxes[:, :2] + s.boxes[:, 2:]) / 2
    regular = np.ones(len(s), bool) if s.iscrowd is None else ~s.iscrowd
    for _ in range(50):
        cw, ch = rng.uniform(min_side * w, w), rng.uniform(min_side * h, h)
        if not 0.5 <= ch / cw <= 2:
            continue
        left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        x1, y1, x2, y2 = int(left), int(top), int(left + cw), int(top + ch)
        keep = (centres[:, 0] > x1) & (centres[:, 1] > y1) & (centres[:, 0] < x2) & (centres[:, 1] < y2)
        if not (keep & regular).any():
            continue
        boxes = s.boxes[keep].copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], [x1, y1]) - [x1, y1]
        boxes[:, 2:] = np.minimum(boxes[:, 2:], [x2, y2]) - [x1, y1]
        image = np.ascontiguousarray(s.image[y1:y2, x1:x2])
        masks = np.ascontiguousarray(s.masks[keep][:, y1:y2, x1:x2])
        return _replace(s, image=image, boxes=boxes, masks=masks, keep=keep)
    return s


def mirror(s: Sample, rng: np.random.Generator) -> Sample:
    """With probability 1/2, flip image, masks and boxes left-right."""
    if rng.random() < 0.5:
        return s
    w = s.image_size[1]
    boxes = s.boxes.copy()
    boxes[:, 0], boxes[:, 2] = w - s.boxes[:, 2], w - s.boxes[:, 0]
    return _replace(s, image=np.ascontiguousarray(s.image[:, ::-1]), boxes=boxes,
                    masks=np.ascontiguousarray(s.masks[:, :, ::-1]))


def resize(s: Sample, size: int, *, drop_small: bool = True) -> Sample:
    """Resize to ``size`` × ``size`` (aspect not kept, as the network input); masks bilinearly, then > 0.5.

    With ``drop_small``, objects whose box is narrower or shorter than 4/550 of the side are dropped.
    """
    h, w = s.image_size
    image = cv2.resize(s.image, (size, size), interpolation=cv2.INTER_LINEAR)
    masks = np.zeros((len(s), size, size), bool)
    for start in range(0, len(s), 256):  # cv2 handles at most 512 channels
        chunk = s.masks[start:start + 256].transpose(1, 2, 0).astype(np.float32)
        small = cv2.resize(chunk, (size, size), interpolation=cv2.INTER_LINEAR).reshape(size, size, -1)
        masks[start:start + 256] = small.transpose(2, 0, 1) > 0.5
    boxes = s.boxes * np.array([size / w, size / h, size / w, size / h], np.float32)
    if not drop_small:
        return _replace(s, image=image, boxes=boxes, masks=masks)
    side = MIN_BOX_FRACTION * size
    keep = ((boxes[:, 2] - boxes[:, 0]) > side) & ((boxes[:, 3] - boxes[:, 1]) > side)
    return _replace(s, image=image, boxes=boxes[keep], masks=masks[keep], keep=keep)


def augment(s: Sample, *, size: int, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> Sample:
    """The full training augmentation: a ``size`` × ``size`` sample."""
    if config.photometric:
        s = _replace(s, image=photometric_distort(s.image, rng), boxes=s.boxes, masks=s.masks)
    s = expand(s, rng, config.expand_max)
    if config.crop:
        s = random_crop(s, rng, config.crop_min_side)
    if config.mirror:
        s = mirror(s, rng)
    return resize(s, size)
