"""rtseg.types results as values: pickling (multiprocessing), equality, Detections indexing and image_size."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import rtseg
from rtseg.data.synthetic import CLASSES, SyntheticScene
from rtseg.engines.msrcnn import MsrcnnEngine
from rtseg.models.msrcnn import MsrcnnConfig
from rtseg.types import Detections, Frame, Panoptic, SemanticMap, Superpixels

DEMO = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")
H, W = 240, 320


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return SyntheticScene(3, width=W, height=H, num_frames=10).frame(4)[0]


@pytest.fixture(scope="module")
def yolact():
    """The demo YOLACT with the device overlay on (on the CPU here): results carry blend_fn and rle_fn too."""
    return rtseg.load("yolact", weights=DEMO, device_overlay=True)


@pytest.fixture(scope="module")
def msrcnn():
    """An untrained tiny MS R-CNN with no score threshold: many detections, masks pasted lazily."""
    torch.manual_seed(0)
    cfg = MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80)
    return MsrcnnEngine.from_config(cfg, class_names=list(CLASSES), score_threshold=0.0)


def _dets(n: int = 3, size: tuple[int, int] = (8, 10)) -> Detections:
    """n detections with distinct boxes, scores, classes, track ids and masks (detection i covers row i)."""
    masks = np.zeros((n, *size), bool)
    masks[np.arange(n), np.arange(n)] = True
    return Detections(boxes=np.array([[0, i, size[1], i + 1] for i in range(n)], np.float32).reshape(n, 4),
                      scores=np.linspace(0.9, 0.5, n).astype(np.float32), class_ids=np.arange(n, dtype=np.int64),
                      image_size=size, class_names=[f"c{i}" for i in range(max(n, 1))],
                      mask_scores=np.linspace(0.8, 0.4, n).astype(np.float32),
                      track_ids=np.arange(10, 10 + n, dtype=np.int64), _masks=masks)


@pytest.mark.parametrize("case", ["yolact", "yolact_none", "msrcnn"])
def test_engine_results_pickle_and_equal_the_original(request, frame, case):
    """Were "Can't pickle local object 'YolactEngine._detections.<locals>.masks'" (msrcnn: its lambda), even with
    no detections: results could not cross a multiprocessing queue."""
    engine = request.getfixturevalue(case.split("_")[0])
    image = np.zeros_like(frame) if case == "yolact_none" else frame
    dets = engine(image)
    assert (len(dets) == 0) == (case == "yolact_none")
    rles, drawn = dets.rles(), rtseg.annotate(image, dets)
    back = pickle.loads(pickle.dumps(dets))
    for name in ("boxes", "scores", "class_ids", "masks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(dets, name))
    if dets.mask_scores is not None:
        np.testing.assert_array_equal(back.mask_scores, dets.mask_scores)
    assert (back.image_size, tuple(back.class_names)) == (dets.image_size, tuple(dets.class_names))
    assert back._mask_fn is None and back._blend_fn is None and back._rle_fn is None
    assert back.rles() == rles
    np.testing.assert_array_equal(rtseg.annotate(image, back), drawn)  # blended on the host


def test_other_results_pickle():
    labels = np.arange(12, dtype=np.int64).reshape(3, 4)
    results = [SemanticMap(labels, ("a",) * 12, np.ones((3, 4), np.float32)), Superpixels(labels),
               Panoptic(labels, [{"id": 1, "category_id": 0}], ("a",)), Frame(np.ones((3, 4, 3), np.uint8), "cam", 2)]
    for result in results:
        back = pickle.loads(pickle.dumps(result))
        assert vars(back).keys() == vars(result).keys()
        for key, value in vars(result).items():
            np.testing.assert_array_equal(getattr(back, key), value)


def test_results_compare_by_identity(yolact, frame):
    """Were "truth value of an array ... is ambiguous" from the dataclass ``==`` over numpy arrays (and Frame,
    frozen, was unhashable)."""
    dets = yolact(frame)
    other = yolact(frame)
    assert dets == dets and dets != copy.deepcopy(dets) and dets != other
    assert dets not in [other] and [other, dets].index(dets) == 1
    labels = np.zeros((3, 4), np.int64)
    for result in (SemanticMap(labels), Superpixels(labels), Panoptic(labels), Frame(np.zeros((3, 4, 3), np.uint8))):
        twin = copy.deepcopy(result)
        assert result == result and result != twin and [twin, result].index(result) == 1
        assert len({result, twin, result}) == 2


def test_materialised_masks_drop_the_engine_functions(yolact, frame):
    """The mask and RLE closures hold the engine's prototypes: once the masks are on the host they go (the RLEs
    are encoded from the masks then); the device blend stays."""
    dets = yolact(frame)
    assert len(dets) and dets._mask_fn is not None and dets._rle_fn is not None
    rles = dets.rles()
    masks = dets.masks
    assert dets._mask_fn is None and dets._rle_fn is None and dets._blend_fn is not None
    assert dets.masks is masks and dets.rles() == rles


@pytest.mark.parametrize("index, rows", [
    (1, [1]), (-1, [3]), (np.int64(2), [2]), (slice(1, 3), [1, 2]), (slice(None, None, -2), [3, 1]),
    (slice(np.int64(2), None), [2, 3]), (slice(9, 20), []),
    ([True, False, True, False], [0, 2]), (np.array([False, True, True, False]), [1, 2]),
    ([2, 0], [2, 0]), (np.array([3, -4], np.int32), [3, 0]), (np.array([1], np.uint64), [1]), ([], []),
])
def test_valid_indices_select_those_rows(index, rows):
    dets = _dets(4)
    sub = dets[index]
    assert isinstance(sub, Detections) and len(sub) == len(rows) and sub.image_size == dets.image_size
    for name in ("boxes", "scores", "class_ids", "mask_scores", "track_ids", "masks"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(dets, name)[rows])


def test_iterating_gives_one_detection_at_a_time():
    assert [d.class_ids.tolist() for d in _dets(3)] == [[0], [1], [2]]
    assert list(_dets(0)) == []


@pytest.mark.parametrize("index, error, message", [
    (True, TypeError, "got bool True"), (np.True_, TypeError, "got bool"), (None, TypeError, "got NoneType None"),
    ("a", TypeError, "got str 'a'"), (1.0, TypeError, "got float 1.0"), ((0, 1), TypeError, r"got tuple \(0, 1\)"),
    ([0.5], TypeError, r"got list \[0.5\]"), (slice(0.5, 2), TypeError, "got slice"),
    (np.zeros((2, 2), np.int64), TypeError, r"got an array of dtype int64 and shape \(2, 2\)"),
    (np.array(1), TypeError, r"shape \(\)"),
    (3, IndexError, "index 3 out of range for 3 detections"), (-4, IndexError, "index -4 out of range"),
    ([0, 7, 1], IndexError, "index 7 out of range for 3 detections"),
    ([True, False], IndexError, "boolean mask of length 2 for 3 detections"),
])
def test_bad_indices_are_one_clear_error(index, error, message):
    """Were numpy's IndexErrors (True taken as 1 then as a mask of one), or "Detections.boxes: expected shape
    (1, 4), got (1, 4, 4)" for None."""
    with pytest.raises(error, match=rf"^Detections: .*{message}") as err:
        _dets(3)[index]
    assert "\n" not in str(err.value)
    if error is TypeError:
        assert "an int, a slice, a boolean mask of length N or a 1-D list or array of ints" in str(err.value)


def test_no_detections_have_no_row_zero():
    empty = Detections.empty((8, 10))
    with pytest.raises(IndexError, match="^Detections: index 0 out of range for 0 detections$"):
        empty[0]
    assert len(empty[:]) == len(empty[[]]) == len(empty[np.zeros(0, bool)]) == 0


@pytest.mark.parametrize("size", [(-4, 5), (5, -1), (2.0, 3.0), (True, 5), (5,), (1, 2, 3), "ab", None, 7])
def test_a_bad_image_size_is_refused_on_construction(size):
    with pytest.raises(ValueError, match=r"^Detections.image_size: expected \(H, W\), two ints >= 0, got "):
        Detections.empty(size)
    with pytest.raises(ValueError, match=r"^Detections.image_size: "):
        Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                   class_ids=np.zeros(0, np.int64), image_size=size)


def test_image_size_becomes_a_tuple_of_ints():
    dets = Detections.empty([np.int64(4), 5])
    assert dets.image_size == (4, 5) and all(type(v) is int for v in dets.image_size)
    assert json.dumps(dets.image_size) == "[4, 5]" and dets.masks.shape == (0, 4, 5)
    assert Detections.empty((0, 0)).masks.shape == (0, 0, 0)  # an empty image (annotate draws on it)
