"""Overlay drawing: mask blending, stable colours, boxes, labels, HUD, other prediction kinds."""
from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

import rtseg
from rtseg.errors import ConfigError
from rtseg.ops.overlay import annotate, boundaries, colors_for
from rtseg.types import Detections, Panoptic, SemanticMap, Superpixels

H, W = 120, 160
NAMES = ["person", "car", "dog"]


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 200, (H, W, 3), dtype=np.uint8)


def _dets(boxes, class_ids, scores, track_ids=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), H, W), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[i, y0 + 5 : y1 - 5, x0 + 5 : x1 - 5] = True  # mask strictly inside its box
    return Detections(
        boxes=boxes,
        scores=np.asarray(scores, np.float32),
        class_ids=np.asarray(class_ids, np.int64),
        image_size=(H, W),
        class_names=NAMES,
        track_ids=None if track_ids is None else np.asarray(track_ids, np.int64),
        _masks=masks,
    )


def test_input_untouched_and_new_array():
    img = _image()
    before = img.copy()
    out = annotate(img, _dets([[10, 10, 70, 70]], [0], [0.9]))
    assert np.array_equal(img, before)
    assert out is not img and out.dtype == np.uint8 and out.shape == img.shape


def test_mask_pixels_blended_with_class_colour():
    img = _image()
    dets = _dets([[10, 40, 70, 100]], [1], [0.9])
    out = annotate(img, dets, alpha=0.5)
    color = colors_for(np.array([1]))[0].astype(np.float64)
    inner = (slice(50, 90), slice(20, 60))  # inside the mask, away from the box outline and label
    want = img[inner].astype(np.float64) * 0.5 + color * 0.5
    assert np.abs(out[inner].astype(np.float64) - want).max() <= 1.0
    # Far from the detection the image is unchanged.
    assert np.array_equal(out[:, 100:], img[:, 100:])


def test_box_outline_drawn_in_instance_colour():
    img = np.zeros((H, W, 3), np.uint8)
    dets = _dets([[40, 40, 120, 100]], [2], [0.8])
    out = annotate(img, dets)
    color = colors_for(np.array([2]))[0]
    # The bottom edge of the box (y=100) is drawn in the colour over a black image.
    row = out[100, 60:100]
    assert np.all(np.abs(row.astype(int) - color.astype(int)).max(axis=1) <= 2)


def test_label_text_changes_pixels_above_box():
    img = np.zeros((H, W, 3), np.uint8)
    out = annotate(img, _dets([[30, 50, 110, 110]], [0], [0.87]))
    assert out[30:49, 30:110].any()  # the label tag sits above the box


def test_higher_score_on_top():
    img = np.zeros((H, W, 3), np.uint8)
    dets = _dets([[10, 10, 90, 90], [40, 40, 130, 110]], [0, 1], [0.95, 0.5])
    out = annotate(img, dets, alpha=1.0)
    c0, c1 = colors_for(np.array([0, 1]))
    assert np.array_equal(out[60, 60], c0)  # overlap: the 0.95 instance wins
    assert np.array_equal(out[100, 110], c1)


def test_colours_stable_per_class_and_per_track_across_frames():
    img = np.zeros((H, W, 3), np.uint8)
    a = annotate(img, _dets([[10, 10, 70, 70]], [2], [0.9]), alpha=1.0)
    b = annotate(img, _dets([[80, 40, 150, 110], [10, 60, 50, 110]], [0, 2], [0.9, 0.3]), alpha=1.0)
    assert np.array_equal(a[40, 40], b[90, 30])  # class 2 has the same colour in both frames
    assert not np.array_equal(b[75, 115], b[90, 30])  # class 0 differs from class 2
    # With track ids, colour follows the track, not the class.
    t1 = annotate(img, _dets([[10, 10, 70, 70]], [0], [0.9], track_ids=[7]), alpha=1.0)
    t2 = annotate(img, _dets([[90, 40, 150, 100]], [1], [0.9], track_ids=[7]), alpha=1.0)
    assert np.array_equal(t1[40, 40], t2[70, 120])
    assert np.array_equal(t1[40, 40], colors_for(np.array([7]))[0])


def test_colors_distinct_for_neighbouring_keys():
    c = colors_for(np.arange(20)).astype(int)
    dist = np.abs(c[:, None] - c[None]).sum(-1)
    assert dist[~np.eye(20, dtype=bool)].min() > 20


def test_empty_detections_unchanged_except_hud():
    img = _image()
    empty = Detections.empty((H, W), NAMES)
    assert np.array_equal(annotate(img, empty), img)
    with_hud = annotate(img, empty, hud={"FPS": 29.71, "latency ms": 41.2})
    assert not np.array_equal(with_hud[:20, :80], img[:20, :80])
    assert np.array_equal(with_hud[40:], img[40:])


def test_mask_outside_box_not_painted_and_lazy_masks_used():
    calls = []

    def mask_fn():
        calls.append(1)
        m = np.zeros((1, H, W), bool)
        m[0, 20:40, 20:40] = True
        m[0, 100:110, 140:150] = True  # far outside the box: ignored
        return m

    dets = Detections(
        boxes=np.array([[15, 15, 45, 45]], np.float32), scores=np.array([0.9], np.float32),
        class_ids=np.array([0], np.int64), image_size=(H, W), class_names=NAMES, _mask_fn=mask_fn,
    )
    img = _image()
    out = annotate(img, dets)
    assert calls == [1]
    assert not np.array_equal(out[30, 30], img[30, 30])
    assert np.array_equal(out[100:110, 140:150], img[100:110, 140:150])


def test_size_mismatch_is_one_line_error():
    dets = Detections.empty((H + 1, W), NAMES)
    with pytest.raises(ConfigError, match=r"image_size is \(121, 160\) but the image is \(120, 160\)"):
        annotate(_image(), dets)


def test_semantic_map_blend():
    labels = np.zeros((H, W), np.int64)
    labels[:, 80:] = 2
    img = _image()
    out = annotate(img, SemanticMap(labels=labels, class_names=["bg", "road", "car"]), alpha=1.0)
    assert np.array_equal(out[:, :80], img[:, :80])  # background (0) left clear
    assert np.all(out[:, 80:] == colors_for(np.array([2]))[0])


def test_superpixel_boundaries():
    labels = np.zeros((H, W), np.int64)
    labels[:, 50:] = 1
    labels[60:, :] = 2
    img = _image()
    out = annotate(img, Superpixels(labels=labels))
    edge = boundaries(labels)
    assert edge[10, 49] and not edge[10, 20]
    assert np.all(out[edge] == [0, 255, 255])
    assert np.array_equal(out[~edge], img[~edge])


def test_panoptic_colour_per_segment():
    ids = np.zeros((H, W), np.int64)
    ids[:60, :80] = 5
    ids[:60, 80:] = 9
    ids[60:, :] = 3
    segments = [
        {"id": 5, "category_id": 0, "isthing": True, "area": 4800},
        {"id": 9, "category_id": 0, "isthing": True, "area": 4800},
        {"id": 3, "category_id": 1, "isthing": False, "area": 9600},
    ]
    img = np.zeros((H, W, 3), np.uint8)
    out = annotate(img, Panoptic(ids=ids, segments=segments, class_names=["person", "sky"]), alpha=1.0)
    a, b, c = out[20, 20], out[20, 120], out[100, 20]
    assert not np.array_equal(a, b)  # two instances of one class get two colours
    assert len({tuple(a), tuple(b), tuple(c)}) == 3
    assert np.all(out[59, 10] == 255)  # boundary between segments


def test_many_instances_full_hd_runs():
    rng = np.random.default_rng(1)
    n, h, w = 30, 1080, 1920
    x0 = rng.uniform(0, w - 300, n)
    y0 = rng.uniform(0, h - 300, n)
    boxes = np.stack([x0, y0, x0 + 200, y0 + 250], 1).astype(np.float32)
    masks = np.zeros((n, h, w), bool)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, b:d, a:c] = True
    dets = Detections(boxes=boxes, scores=np.sort(rng.uniform(0.3, 1, n))[::-1].astype(np.float32),
                      class_ids=rng.integers(0, 3, n), image_size=(h, w), class_names=NAMES, _masks=masks)
    out = annotate(np.zeros((h, w, 3), np.uint8), dets)
    assert out.shape == (h, w, 3) and out.any()


def test_more_than_255_instances_and_labels():
    n = 300  # past the uint8 owner map / OpenCV LUT fast path
    boxes = np.tile(np.array([[0, 0, W - 1, H - 1]], np.float32), (n, 1))  # outlines and labels all at the rim
    masks = np.zeros((n, H, W), bool)
    for i in range(n):  # disjoint 8x8 cells, 20 per row
        masks[i, (i // 20) * 8 : (i // 20) * 8 + 8, (i % 20) * 8 : (i % 20) * 8 + 8] = True
    dets = Detections(boxes=boxes, scores=np.linspace(1, 0.1, n).astype(np.float32),
                      class_ids=np.zeros(n, np.int64), image_size=(H, W), track_ids=np.arange(n), _masks=masks)
    out = annotate(np.zeros((H, W, 3), np.uint8), dets, alpha=1.0)
    colors = colors_for(np.arange(n))
    assert np.array_equal(out[115, 155], colors[299])
    assert np.array_equal(out[60, 84], colors[150])
    labels = np.arange(H * W, dtype=np.int64).reshape(H, W) % 400
    sem = annotate(np.zeros((H, W, 3), np.uint8), SemanticMap(labels=labels), alpha=1.0)
    assert np.array_equal(sem.reshape(-1, 3)[399], colors_for(np.array([399]))[0])
    assert not sem.reshape(-1, 3)[0].any()  # label 0 stays clear


def test_all_background_semantic_map_draws_without_error():
    img = np.full((24, 32, 3), 90, np.uint8)
    out = annotate(img, SemanticMap(labels=np.zeros((24, 32), np.int64), class_names=["bg", "a"]))
    assert out.shape == img.shape and out.dtype == np.uint8


@pytest.mark.parametrize("alpha", [True, False, math.nan, math.inf, -0.1, 1.5, "0.5", None])
def test_alpha_that_is_no_number_in_0_1_is_one_config_error(alpha):
    """Was accepted (a bool, as 1 or 0), a ValueError (NaN, out of range) or a TypeError ("0.5", None)."""
    with pytest.raises(ConfigError, match=rf"^annotate: alpha must be a number in \[0, 1\], got "
                                          rf"{re.escape(repr(alpha))}$"):
        rtseg.annotate(_image(), _dets([[10, 10, 70, 70]], [0], [0.9]), alpha=alpha)


def test_alpha_takes_any_real_number_in_0_1():
    """numpy scalars and fractions blend as the equal float does (a Fraction was an OpenCV error)."""
    img, dets = _image(), _dets([[10, 10, 70, 70]], [0], [0.9])
    half = rtseg.annotate(img, dets, alpha=0.5)
    for alpha in (np.float32(0.5), np.float64(0.5), Fraction(1, 2)):
        assert np.array_equal(rtseg.annotate(img, dets, alpha=alpha), half)
    assert np.array_equal(rtseg.annotate(img, dets, alpha=np.int64(0)), rtseg.annotate(img, dets, alpha=0.0))
