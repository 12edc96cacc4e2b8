"""The synthetic video benchmark: determinism, visible masks, tracks, splits, MP4 export."""
from __future__ import annotations

import math
import re

import av
import cv2
import numpy as np
import pytest

from rtseg.data.dataset import masks_to_boxes
from rtseg.data.export import export_mp4, mask_to_polygons
from rtseg.data.synthetic import (CLASSES, SPLITS, TEST_SEED, TRAIN_SEED, VAL_SEED, SyntheticDataset,
                                  SyntheticScene, _gain_and_noise, scene_seed, scene_to_samples)
from rtseg.errors import ConfigError

SMALL = dict(width=160, height=120)


def _same(a, b) -> bool:
    (img_a, inst_a), (img_b, inst_b) = a, b
    return (np.array_equal(img_a, img_b) and len(inst_a) == len(inst_b)
            and all(x.class_id == y.class_id and x.track_id == y.track_id and np.array_equal(x.mask, y.mask)
                    for x, y in zip(inst_a, inst_b)))


def test_same_seed_gives_identical_frames_in_any_access_order():
    a = SyntheticScene(11, num_frames=60, **SMALL)
    b = SyntheticScene(11, num_frames=60, **SMALL)
    order = [59, 3, 30, 0]
    frames_a = {i: a.frame(i) for i in order}
    frames_b = {i: b.frame(i) for i in reversed(order)}
    assert all(_same(frames_a[i], frames_b[i]) for i in order)
    assert _same(a.frame(30), frames_a[30])  # no hidden state between calls


def test_gain_and_noise_table_is_the_per_pixel_arithmetic():
    """Frames look their lighting gain and noise up in a table: each entry is what the per-pixel float64
    arithmetic gives (the clips, and the data the demo model was trained and scored on, stay bit-identical)."""
    pixels = np.arange(256, dtype=np.int16).repeat(9)[:, None, None]
    noise = np.tile(np.arange(-4, 5, dtype=np.int16), 256)[:, None, None]
    for gain in np.linspace(0.94, 1.06, 241):  # the gain's range: 1 ± 0.06
        want = np.clip(pixels * gain + noise, 0, 255).astype(np.uint8).ravel()
        assert np.array_equal(_gain_and_noise(gain), want), gain
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frame_noise = np.random.default_rng(1).integers(-4, 5, (48, 64, 1), dtype=np.int16)
    looked_up = _gain_and_noise(1.03).take(image.astype(np.int16) * 9 + (frame_noise + 4))
    assert np.array_equal(looked_up, np.clip(image.astype(np.int16) * 1.03 + frame_noise, 0, 255).astype(np.uint8))


def test_different_seeds_differ():
    a, b = SyntheticScene(1, **SMALL), SyntheticScene(2, **SMALL)
    assert not np.array_equal(a.frame(0)[0], b.frame(0)[0])


def test_frames_have_disjoint_visible_masks_and_valid_instances():
    scene = SyntheticScene(5, num_frames=120, max_objects=6)
    counts = []
    for i in range(0, 120, 7):
        image, instances = scene.frame(i)
        assert image.shape == (480, 640, 3) and image.dtype == np.uint8
        counts.append(len(instances))
        if instances:
            masks = np.array([inst.mask for inst in instances])
            assert masks.dtype == bool and masks.shape[1:] == (480, 640)
            assert masks.sum(axis=0).max() <= 1  # visible parts never overlap
            assert masks.sum(axis=(1, 2)).min() >= scene.min_area
        assert all(0 <= inst.class_id < len(CLASSES) for inst in instances)
        assert len({inst.track_id for inst in instances}) == len(instances)
        assert len(instances) <= scene.max_objects
    assert max(counts) >= 2


def test_occlusion_hides_the_farther_object():
    """Pixels of an object hidden by a nearer one belong to the nearer object's visible mask."""
    scene = SyntheticScene(8, num_frames=300, width=320, height=240, max_objects=6)
    occluded = 0
    for i in range(0, 300, 10):
        _, instances = scene.frame(i)
        for inst in instances:
            track = scene._tracks[inst.track_id]
            full = scene._paint(np.zeros((240, 320, 3), np.uint8), track, float(i))  # unoccluded shape
            hidden = full & ~inst.mask
            assert not (inst.mask & ~full).any()
            if hidden.sum() < 20:
                continue
            occluded += 1
            nearer = [o.mask for o in instances if scene._tracks[o.track_id].depth < track.depth]
            covered = np.any(nearer, axis=0) if nearer else np.zeros_like(hidden)
            assert (hidden & covered).sum() >= 0.9 * hidden.sum()
    assert occluded >= 3


def test_tracks_are_consistent_across_frames():
    scene = SyntheticScene(21, num_frames=200, width=320, height=240)
    class_of: dict[int, int] = {}
    overlaps, pairs = 0, 0
    prev: dict[int, np.ndarray] = {}
    seen_per_frame = []
    for i in range(200):
        _, instances = scene.frame(i)
        seen_per_frame.append({inst.track_id for inst in instances})
        cur = {}
        for inst in instances:
            assert class_of.setdefault(inst.track_id, inst.class_id) == inst.class_id
            cur[inst.track_id] = inst.mask
            if inst.track_id in prev:
                pairs += 1
                overlaps += bool((prev[inst.track_id] & inst.mask).any())
        prev = cur
    assert pairs > 100 and overlaps / pairs > 0.95  # objects move smoothly
    all_tracks = set().union(*seen_per_frame)
    assert len(all_tracks) > max(len(s) for s in seen_per_frame)  # objects enter and leave
    assert seen_per_frame[0] != seen_per_frame[-1]


def test_objects_move_and_cover_all_classes():
    ds = SyntheticDataset(TRAIN_SEED, 64, **SMALL)
    classes = {int(c) for k in range(len(ds)) for c in ds[k].class_ids}
    assert classes == set(range(len(CLASSES)))
    scene = SyntheticScene(3, num_frames=40, **SMALL)
    a, b = scene.frame(0)[1], scene.frame(39)[1]
    moved = [not np.array_equal(x.mask, y.mask) for x in a for y in b if x.track_id == y.track_id]
    assert moved and all(moved)


def test_object_sizes_span_small_to_large():
    ds = SyntheticDataset(VAL_SEED, 40)
    sides = np.concatenate([np.maximum(*(ds[k].boxes[:, 2:] - ds[k].boxes[:, :2]).T) for k in range(len(ds))])
    assert sides.min() < 45 and sides.max() > 120 and np.median(sides) > 40


def test_splits_use_disjoint_seeds():
    assert len({TRAIN_SEED, VAL_SEED, TEST_SEED}) == 3
    assert {SPLITS[s][0] for s in SPLITS} == {TRAIN_SEED, VAL_SEED, TEST_SEED}
    seeds = {name: {scene_seed(seed, k) for k in range(200)} for name, (seed, _) in SPLITS.items()}
    assert len(seeds["train"] | seeds["val"] | seeds["test"]) == 600
    train, test = SyntheticDataset.split("train", 1, **SMALL), SyntheticDataset.split("test", 1, **SMALL)
    assert len(SyntheticDataset.split("test")) == SPLITS["test"][1]
    assert not np.array_equal(train[0].image, test[0].image)
    with pytest.raises(ConfigError, match="unknown synthetic split"):
        SyntheticDataset.split("holdout")


def test_samples_match_scene_frames():
    scene = SyntheticScene(4, num_frames=25, **SMALL)
    samples = scene_to_samples(scene, every=10)
    assert len(samples) == 3
    image, instances = scene.frame(20)
    s = samples[2]
    assert np.array_equal(s.image, image)
    assert np.array_equal(s.class_ids, [i.class_id for i in instances])
    assert np.array_equal(s.boxes, masks_to_boxes(np.array([i.mask for i in instances]).reshape(-1, 120, 160)))
    with pytest.raises(IndexError):
        samples[3]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ConfigError, match=r"^SyntheticScene: width must be an integer in \[32, 4096\], got 10$"):
        SyntheticScene(0, width=10, height=10)
    with pytest.raises(ConfigError, match=r"^SyntheticScene: height must be an integer in \[32, 4096\], got 99999$"):
        SyntheticScene(0, height=99999)  # (was 50 GB of noise texture asked for, failing deep in OpenCV)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticScene(0, num_frames=5, **SMALL).frame(5)


BAD_INTEGERS = [True, 1.5, 64.0, math.nan, "64", None]
"""Values no integer argument takes (besides those below its least): bools, floats (even whole), NaN, strings."""


def _allowed(name: str, least: int) -> str:
    """The range an argument's error line gives, as a regular expression: ``>= 1`` or, for a frame side,
    ``in \\[32, 4096\\]``."""
    return rf"in \[{least}, 4096\]" if name in ("width", "height") else f">= {least}"


@pytest.mark.parametrize("name, least", [("seed", 0), ("width", 32), ("height", 32), ("num_frames", 1),
                                         ("max_objects", 0), ("min_area", 0)])
@pytest.mark.parametrize("value", ["least - 1", *BAD_INTEGERS])
def test_scene_argument_that_is_no_integer_from_its_least_is_one_line(name, least, value):
    """Were one line for all of them without naming the one at fault, a TypeError / ValueError / OpenCV traceback
    (64.0, NaN, "64", None), or accepted (True; a 1.5 seed or num_frames; any min_area)."""
    value = least - 1 if value == "least - 1" else value
    args = {"seed": 0, "num_frames": 2, **SMALL, name: value}
    with pytest.raises(ConfigError, match=rf"^SyntheticScene: {name} must be an integer {_allowed(name, least)}, got "
                                          rf"{re.escape(repr(value))}$"):
        SyntheticScene(**args)


@pytest.mark.parametrize("name, least", [("seed", 0), ("num_images", 0), ("width", 32), ("height", 32),
                                         ("images_per_scene", 1), ("frame_stride", 1), ("max_objects", 0)])
@pytest.mark.parametrize("value", ["least - 1", *BAD_INTEGERS])
def test_dataset_argument_that_is_no_integer_from_its_least_is_one_line(name, least, value):
    """Were one line for three of them without the value, else accepted until the first image was read (then the
    scene's line or a traceback: 1.5, NaN, None; True, "64" as a seed read on)."""
    value = least - 1 if value == "least - 1" else value
    args = {"seed": 1, "num_images": 2, **SMALL, name: value}
    with pytest.raises(ConfigError, match=rf"^SyntheticDataset: {name} must be an integer {_allowed(name, least)}, got "
                                          rf"{re.escape(repr(value))}$"):
        SyntheticDataset(**args)


@pytest.mark.parametrize("every", [0, -1, *BAD_INTEGERS])
def test_scene_to_samples_every_that_is_no_integer_from_1_is_one_line(every):
    """Were accepted (True, 1.5, NaN: an error at the first sample read) or a TypeError traceback ("64", None)."""
    scene = SyntheticScene(4, num_frames=5, **SMALL)
    with pytest.raises(ConfigError, match=rf"^scene_to_samples: every must be an integer >= 1, got "
                                          rf"{re.escape(repr(every))}$"):
        scene_to_samples(scene, every=every)


def test_numpy_integers_are_taken_as_integers():
    scene = SyntheticScene(np.int64(4), width=np.int32(160), height=np.int64(120), num_frames=np.uint16(25))
    assert _same(scene.frame(20), SyntheticScene(4, num_frames=25, **SMALL).frame(20))
    assert len(scene_to_samples(scene, every=np.int64(10))) == 3
    data = SyntheticDataset(np.int64(1), np.int64(3), images_per_scene=np.int64(2), frame_stride=np.int64(4), **SMALL)
    assert len(data) == 3 and np.array_equal(data[2].image, SyntheticDataset(1, 3, images_per_scene=2,
                                                                              frame_stride=4, **SMALL)[2].image)


def test_mp4_export_decodes_with_right_frame_count(tmp_path):
    scene = SyntheticScene(9, num_frames=24, **SMALL)
    path = export_mp4(scene, tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
    assert len(frames) == 24
    assert frames[0].shape == (120, 160, 3)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))

    for k in (0, 10, 23):  # each decoded frame is its scene frame (not a neighbour 5 frames away)
        assert psnr(frames[k], scene.frame(k)[0]) > 25
        assert psnr(frames[k], scene.frame(k)[0]) > psnr(frames[k], scene.frame((k + 5) % 24)[0]) + 3


@pytest.mark.parametrize("crf", [-1, 52, 100, 23.0, True, float("nan"), "18"])
def test_mp4_export_crf_that_is_no_libx264_crf_is_one_line(crf, tmp_path):
    """Was encoded without a word (libx264 takes -1 or 100), or a file of another quality than asked."""
    with pytest.raises(ConfigError, match=rf"^export_mp4: crf must be an integer in \[0, 51\], got "
                                          rf"{re.escape(repr(crf))}$"):
        export_mp4(SyntheticScene(9, num_frames=2, **SMALL), tmp_path / "out" / "clip.mp4", crf=crf)
    assert list(tmp_path.iterdir()) == []  # refused before the folder is made
    assert export_mp4(SyntheticScene(9, num_frames=2, **SMALL), tmp_path / "ok.mp4", crf=np.int64(51)).is_file()


def test_mask_to_polygons_keeps_holes():
    ring = np.zeros((80, 80), np.uint8)
    cv2.circle(ring, (40, 40), 30, 1, -1)
    cv2.circle(ring, (40, 40), 15, 0, -1)
    polys = mask_to_polygons(ring.astype(bool))
    assert len(polys) == 1
    back = np.zeros_like(ring)
    cv2.fillPoly(back, polys, 1)
    assert back[40, 40] == 0
    iou = (back & ring).sum() / (back | ring).sum()
    assert iou > 0.95
