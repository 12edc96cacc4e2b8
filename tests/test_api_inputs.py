"""The Python API with ugly inputs: one clear error for bad ones, results for odd-but-valid ones."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import rtseg
from rtseg.errors import ConfigError, WeightsError
from rtseg.types import Detections

DEMO = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")


@pytest.fixture(scope="module")
def engine():
    return rtseg.load("yolact", weights=DEMO)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    from rtseg.data.synthetic import SyntheticScene

    return SyntheticScene(3, width=320, height=240, num_frames=10).frame(4)[0]


@pytest.mark.parametrize("bad, message", [
    (None, "got NoneType"),
    ("frame.jpg", "got str"),
    (np.zeros((0, 0, 3), np.uint8), "empty image"),
    (np.zeros((0, 10, 3), np.uint8), "empty image"),
    (np.zeros((24, 32, 3), np.float32), "got float32"),
])
def test_bad_frames_are_one_line_config_errors(engine, bad, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        engine(bad)
    assert "\n" not in str(err.value)


def test_odd_but_valid_frames_just_work(engine, frame) -> None:
    ro = frame.copy()
    ro.setflags(write=False)
    ref = engine(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only frame must not make torch warn
        got = engine(ro)
    assert np.array_equal(got.boxes, ref.boxes)
    flipped = engine(frame[:, ::-1])  # a non-contiguous view
    assert np.array_equal(flipped.boxes, engine(np.ascontiguousarray(frame[:, ::-1])).boxes)
    assert len(engine(np.zeros((1, 1, 3), np.uint8)).boxes) >= 0


@pytest.mark.parametrize("options, message", [
    ({"score_threshold": "0.3"}, "score_threshold must be a number in \\[0, 1\\]"),
    ({"iou_threshold": 2.0}, "iou_threshold must be a number in \\[0, 1\\]"),
    ({"top_k": 2.5}, "top_k must be an integer >= 1"),
    ({"top_k": None}, "top_k must be an integer >= 1"),
    ({"nms_top_k": 0}, "nms_top_k must be an integer >= 1"),
    ({"max_detections": True}, "max_detections must be an integer >= 1"),
])
def test_bad_engine_options_are_config_errors(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        rtseg.load("yolact", weights=DEMO, **options)


def test_weights_path_mistakes_name_the_fix(tmp_path) -> None:
    with pytest.raises(WeightsError, match="is a folder"):
        rtseg.load("yolact", weights=str(tmp_path))
    with pytest.raises(WeightsError, match="is the manifest; pass the weights beside it"):
        rtseg.load("yolact", weights=DEMO.replace(".safetensors", ".json"))
    with pytest.raises(ConfigError, match="instances= must be an engine or a \\(name, weights\\) pair"):
        rtseg.load("panoptic", instances="path.safetensors", semantic="fcn.safetensors")


def _dets(boxes, size=(240, 320)) -> Detections:
    n = len(boxes)
    return Detections(boxes=np.asarray(boxes, np.float32).reshape(n, 4), scores=np.linspace(0.9, 0.5, n).astype(np.float32),
                      class_ids=np.zeros(n, np.int64), image_size=size, class_names=["a"],
                      _masks=np.ones((n, *size), bool))


def test_annotate_survives_degenerate_boxes(frame) -> None:
    for boxes in ([[400, 300, 500, 400]], [[50, 50, 10, 10]], [[-1e12, -1e12, 1e12, 1e12]], [[-20, -20, -5, -5]]):
        out = rtseg.annotate(frame, _dets(boxes))
        assert out.shape == frame.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="must be finite"):
        _dets([[np.nan, 0, 10, 10]])
    with pytest.raises(TypeError, match="hud must be a mapping"):
        rtseg.annotate(frame, _dets([[1, 1, 5, 5]]), hud=["FPS", 3])
    assert rtseg.annotate(np.zeros((0, 0, 3), np.uint8), _dets([], size=(0, 0)), hud={"FPS": 1.0}).shape == (0, 0, 3)


def test_detections_integer_index_is_a_detections_of_one(engine, frame) -> None:
    dets = engine(frame)
    assert len(dets) >= 2
    one = dets[1]
    assert isinstance(one, Detections) and len(one) == 1 and np.array_equal(one.boxes[0], dets.boxes[1])
    assert np.array_equal(dets[np.int64(0)].masks[0], dets.masks[0])
