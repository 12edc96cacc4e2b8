"""COCO and labelme loaders (tiny fixtures written to tmp, malformed ones too) and export round trips."""
from __future__ import annotations

import base64
import json
import os
import re
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rtseg.data.coco import CocoDataset
from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.data.export import export_coco, export_labelme
from rtseg.data.labelme import LabelmeDataset, split_label
from rtseg.data.synthetic import CLASSES, SyntheticScene
from rtseg.errors import ConfigError, DatasetError, RtsegWarning

H, W = 60, 80


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _rle(mask: np.ndarray, *, as_str: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode() if as_str else rle["counts"]}


def _box_mask(x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _coco(tmp_path, annotations=None, **overrides) -> tuple:
    """Two images, categories with ids 3, 7, 12 (non-contiguous, listed out of order)."""
    cv2.imwrite(str(tmp_path / "a.png"), _image(0))
    cv2.imwrite(str(tmp_path / "b.png"), _image(1))
    uncompressed = _box_mask(50, 5, 60, 15)
    runs, last, count = [], False, 0
    for v in uncompressed.flatten(order="F"):  # column-major run lengths, starting with zeros
        if v != last:
            runs.append(count)
            last, count = v, 0
        count += 1
    runs.append(count)
    data = {
        "images": [{"id": 10, "file_name": "a.png", "height": H, "width": W},
                   {"id": 20, "file_name": "b.png", "height": H, "width": W}],
        "categories": [{"id": 12, "name": "cup"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0, "bbox": [10, 10, 20, 10],
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},  # corners: 20 x 10 pixels
            {"id": 2, "image_id": 10, "category_id": 12, "iscrowd": 0, "bbox": [40, 30, 10, 20],
             "segmentation": _rle(_box_mask(40, 30, 50, 50))},
            {"id": 3, "image_id": 10, "category_id": 3, "iscrowd": 1, "bbox": [0, 40, 20, 20],
             "segmentation": _rle(_box_mask(0, 40, 20, 60))},
            {"id": 4, "image_id": 20, "category_id": 3, "iscrowd": 0, "bbox": [50, 5, 10, 10],
             "segmentation": {"size": [H, W], "counts": runs}},
        ],
    }
    data.update(overrides)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, tmp_path


def test_coco_maps_category_ids_to_contiguous_classes(tmp_path):
    ds = CocoDataset(*_coco(tmp_path))
    assert ds.class_names == ("car", "dog", "cup") and ds.category_ids == (3, 7, 12)
    assert len(ds) == 2 and ds.image_ids == (10, 20)
    s = ds[0]
    assert isinstance(s, Sample) and np.array_equal(s.image, _image(0))
    assert s.class_ids.tolist() == [1, 2]  # crowd left out by default
    assert s.iscrowd is None
    assert s.masks[0].sum() == 20 * 10 and s.masks[0][10:20, 10:30].all()  # polygon
    assert np.array_equal(s.masks[1], _box_mask(40, 30, 50, 50))  # compressed RLE
    np.testing.assert_allclose(s.boxes, [[10, 10, 30, 20], [40, 30, 50, 50]])
    assert np.array_equal(ds[1].masks[0], _box_mask(50, 5, 60, 15))  # uncompressed RLE
    assert ds[1].class_ids.tolist() == [0]


def test_coco_include_crowd_marks_crowd_regions(tmp_path):
    s = CocoDataset(*_coco(tmp_path), include_crowd=True)[0]
    assert s.class_ids.tolist() == [1, 2, 0] and s.iscrowd.tolist() == [False, False, True]



def test_coco_says_the_classes_with_objects_of_its_first_images_without_reading_one(tmp_path):
    """What ``rtseg eval`` checks the weights against before its first image: the classes with non-crowd objects
    among the first n images, from the annotations read at open; a data set that cannot say them says None."""
    from rtseg.data.dataset import classes_with_objects
    from rtseg.data.synthetic import SyntheticDataset

    path, images = _coco(tmp_path)
    ds = CocoDataset(path, images, include_crowd=True)
    for name in ("a.png", "b.png"):
        (images / name).unlink()  # no image is read
    assert ds.classes_with_objects(1) == {1, 2}  # car (id 3) is a crowd region in the first image
    assert classes_with_objects(ds, 2) == classes_with_objects(ds, 5) == {0, 1, 2}
    assert classes_with_objects(SyntheticDataset.split("test", 2), 2) is None  # drawn: known once drawn


def test_coco_object_whose_mask_covers_no_pixel_warns_and_is_kept_for_evaluation(tmp_path):
    """A polygon that covers no pixel centre: left out of training with a warning naming it (was: silently);
    kept with ``keep_empty`` (evaluation) as an empty mask with its bbox, as pycocotools counts it."""
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 77, "image_id": 10, "category_id": 7, "iscrowd": 0, "bbox": [10.1, 10.1, 0.3, 0.3],
                                "segmentation": [[10.1, 10.1, 10.4, 10.1, 10.4, 10.4]]})
    path.write_text(json.dumps(data))
    with pytest.warns(RtsegWarning) as caught:
        s = CocoDataset(path, images)[0]
    assert [str(w.message) for w in caught if w.category is RtsegWarning] == [
        f"{path}: left out 1 annotations that are no instances: annotation id 77 of a.png: its mask covers no "
        "pixel centre"]
    assert s.class_ids.tolist() == [1, 2]
    with pytest.warns(RtsegWarning, match=r"a.png: 1 annotations \(id 77\) have a mask that covers no pixel centre; "
                                          "counted as objects no predicted mask can match"):
        s = CocoDataset(path, images, keep_empty=True)[0]
    assert s.class_ids.tolist() == [1, 2, 1] and not s.masks[2].any()
    np.testing.assert_allclose(s.boxes[2], [10.1, 10.1, 10.4, 10.4], rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RtsegWarning)
        CocoDataset(path, images)[1]  # an image without such objects: no warning


def test_coco_string_image_ids_and_whole_float_sizes_are_taken_as_pycocotools_takes_them(tmp_path):
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    for img in data["images"]:
        img["id"], img["height"], img["width"] = f"img{img['id']}", float(img["height"]), float(img["width"])
    for a in data["annotations"]:
        a["image_id"] = f"img{a['image_id']}"
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, images)
    assert ds.image_ids == ("img10", "img20") and ds[0].class_ids.tolist() == [1, 2] and ds[1].image_size == (H, W)
    data["images"][0]["height"] = H + 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[0\]: height should be a positive whole number of pixels, got 60.5"):
        CocoDataset(path, images)
    data["images"][0]["height"] = H
    data["annotations"][0]["image_id"] = 10  # an int where the image's id is a string: another id
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image_id 10 is not in 'images'"):
        CocoDataset(path, images)
    data["images"][0]["id"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[0\]: 'id' should be int or str, got float"):
        CocoDataset(path, images)


def test_coco_without_usable_annotations_is_refused_at_open(tmp_path):
    """No annotations, or only crowd regions: nothing to train or evaluate on (was a run that learned nothing)."""
    crowd = {"id": 1, "image_id": 10, "category_id": 3, "iscrowd": 1, "bbox": [0, 40, 20, 20],
             "segmentation": [[0, 40, 20, 40, 20, 60]]}
    for anns, message in (([], "no non-crowd annotations"), ([crowd], "no non-crowd annotations")):
        with pytest.raises(DatasetError, match=message):
            CocoDataset(*_coco(tmp_path, annotations=anns))
    assert len(CocoDataset(*_coco(tmp_path, annotations=[crowd]), include_crowd=True)) == 2


@pytest.mark.parametrize("change, message", [
    ({"segmentation": [[1, 1, 5, 5, 7]]}, "odd count"),
    ({"bbox": [1, 2, 3]}, "bbox of 3 numbers"),
    ({"category_id": 99}, "category_id 99 is not in 'categories'"),
    ({"image_id": 5}, "image_id 5 is not in 'images'"),
    ({"segmentation": {"size": [H, W + 1], "counts": "abc"}}, "RLE size"),
    ({"segmentation": "nope"}, "segmentation should be a list of polygons"),
    ({"segmentation": {"size": [H, W], "counts": "\x7f\x7fzz"}}, "corrupt compressed RLE"),
    ({"segmentation": {"size": [H, W], "counts": [10, 5]}}, "RLE covers 15 pixels"),
    ({"segmentation": {"size": 5, "counts": [10, 5]}}, "RLE size 5 differs"),
    ({"segmentation": [[1, 1, 5, 1, float("nan"), 5]]}, "polygon with NaN"),
    ({"segmentation": [[1, 1, 5, 1, 10**400, 5]]}, "polygon with NaN, infinity or a number beyond float range"),
    ({"bbox": [1, 1, 10**400, 4]}, "bbox with a value that is no number within"),  # was an OverflowError traceback
    ({"bbox": [1, 1, 1e308, 4]}, "bbox with a value that is no number within"),  # was an infinite target box
])
def test_malformed_coco_annotation_names_file_and_problem(tmp_path, change, message):
    ann = {"id": 5, "image_id": 10, "category_id": 7, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5]]}
    ann.update(change)
    path, images = _coco(tmp_path, annotations=[ann])
    with pytest.raises(DatasetError, match=message) as err:
        ds = CocoDataset(path, images)
        ds[0]
    assert "instances.json" in str(err.value) and "\n" not in str(err.value)


def test_coco_missing_key_and_missing_or_broken_images(tmp_path):
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="missing key 'annotations'"):
        CocoDataset(path, images)
    path, images = _coco(tmp_path)
    (images / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images .* missing \(e.g. b.png\)"):
        CocoDataset(path, images)
    path, images = _coco(tmp_path)
    (images / "b.png").write_bytes(b"not a png")
    ds = CocoDataset(path, images)
    ds[0]
    with pytest.raises(DatasetError, match="b.png: not a readable image"):
        ds[1]
    path.write_text("{broken")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDataset(path, images)


def test_coco_image_size_mismatch_is_reported(tmp_path):
    path, images = _coco(tmp_path)
    cv2.imwrite(str(images / "a.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match="a.png: image is 10x10 but instances.json says 80x60"):
        CocoDataset(path, images)[0]


def _labelme(folder, name, shapes, *, image=True, image_data=False, **extra):
    img = _image(len(name))
    if image:
        cv2.imwrite(str(folder / f"{name}.png"), img)
    record = {"version": "5.5.0", "shapes": shapes, "imagePath": f"{name}.png", "imageHeight": H, "imageWidth": W,
              "imageData": base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode() if image_data else None}
    record.update(extra)
    (folder / f"{name}.json").write_text(json.dumps(record))
    return img


def _shape(label, points, shape_type="polygon", group_id=None):
    return {"label": label, "points": points, "shape_type": shape_type, "group_id": group_id, "flags": {}}


def test_split_label():
    assert split_label("person12") == ("person", "12")
    assert split_label("traffic_light_2") == ("traffic_light", "2")
    assert split_label("person-3") == ("person", "3") and split_label("person 4") == ("person", "4")
    assert split_label("a1b2") == ("a1b", "2") and split_label("car") == ("car", None)


@pytest.mark.parametrize("label", ["10", "7", "12_3", "1-2", "٣٤"])
def test_a_label_of_digits_alone_is_a_class_not_a_numbered_instance(label):
    """Was ``"10"`` -> ``("1", "0")``: digit labels were silently folded into the class of their first digit."""
    assert split_label(label) == (label, None)


def test_labelme_digit_labels_are_classes_of_their_own(tmp_path):
    tri = [[1, 1], [9, 1], [9, 9]]
    _labelme(tmp_path, "a", [_shape(label, tri) for label in ("20", "10", "11", "12", "10")])
    ds = LabelmeDataset(tmp_path)
    assert ds.class_names == ("10", "11", "12", "20")  # was ("1", "2"): four classes made two
    assert ds[0].class_ids.tolist() == [3, 0, 1, 2, 0]  # the two "10" shapes stay two instances
    (tmp_path / "label_names.txt").write_text("10\n11\n12\n20\n")
    _labelme(tmp_path, "b", [_shape("123", tri)])
    with pytest.raises(DatasetError, match=r"b.json: shape 0: label '123' is not a known class \(10, 11, 12, 20\); "
                                           r"add '123' to the class list"):  # was "add '1'"
        LabelmeDataset(tmp_path)


def test_labelme_instances_numbering_groups_and_shape_types(tmp_path):
    img = _labelme(tmp_path, "one", [
        _shape("person1", [[10, 10], [20, 10], [20, 20], [10, 20]]),
        _shape("person2", [[30, 30], [40, 40]], "rectangle"),
        _shape("person1", [[50, 10], [55, 10], [55, 15]]),  # second part of person1
        _shape("car", [[60, 40], [60, 45]], "circle"),
        _shape("car", [[0, 50], [5, 50], [5, 55]], group_id=4),
        _shape("car", [[70, 50], [75, 50], [75, 55]], group_id=4),
        _shape("car", [[0, 0], [4, 0], [4, 4]]),
    ])
    ds = LabelmeDataset(tmp_path, class_names=["person", "car"])
    s = ds[0]
    assert np.array_equal(s.image, img)
    assert s.class_ids.tolist() == [0, 0, 1, 1, 1]
    assert s.masks[0][15, 15] and s.masks[0][12, 54] and s.masks[0].sum() == 11 * 11 + 21
    assert s.masks[1][30:41, 30:41].all() and s.masks[1].sum() == 121
    assert s.masks[2][40, 60] and s.masks[2][45, 60] and not s.masks[2][40, 66]
    assert s.masks[3][52, 4] and s.masks[3][52, 74]  # merged by group_id
    np.testing.assert_array_equal(s.boxes, masks_to_boxes(s.masks))


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_labelme_shapes_are_drawn_as_labelme_draws_them(tmp_path):
    """Pixel counts and boxes of labelme 6.3.1's ``shape_to_mask`` (Pillow's ImageDraw) on these shapes. Was: OpenCV
    drew them (polygon 474 px, circles 197 and 149, the fractional rectangle 220: IoU down to 0.84 with labelme's),
    and an ``oriented_rectangle`` (labelme 5 / 6) was left out as "oriented_rectangle has no area"."""
    _labelme(tmp_path, "a", [
        _shape("a", [[10, 10], [40, 12], [30, 40]]),
        _shape("b", [[40, 30], [48, 30]], "circle"),
        _shape("c", [[40.5, 30.5], [46.2, 34.1]], "circle"),
        _shape("d", [[10.6, 10.4], [30.5, 20.5]], "rectangle"),
        _shape("e", [[20, 10], [40, 20], [30, 40], [10, 30]], "oriented_rectangle"),
    ])
    s = LabelmeDataset(tmp_path)[0]
    assert [(int(m.sum()), _box(m)) for m in s.masks] == [
        (460, [10, 10, 40, 40]), (221, [32, 22, 48, 38]), (177, [33, 23, 47, 37]), (231, [10, 10, 30, 20]),
        (521, [10, 10, 40, 40])]


def test_labelme_shapes_just_outside_the_image_keep_the_pixels_labelme_draws(tmp_path):
    """Pillow draws pixel centres up to 1 px beyond a shape's points: these were left out as "outside the image"."""
    _labelme(tmp_path, "a", [_shape("a", [[-1.6, 56.7], [-2.2, 57.6]], "circle"),
                             _shape("b", [[80.3, -1.7], [78.3, -0.8], [80.4, -1.1]]),
                             _shape("c", [[1.2, 61.3], [1.7, 59.9]], "rectangle")])
    s = LabelmeDataset(tmp_path)[0]
    assert [np.argwhere(m).tolist() for m in s.masks] == [[[56, 0]], [[0, 78], [0, 79]], [[59, 1]]]


@pytest.mark.parametrize("origin, top_left", [((10.6, 10.6), (10, 10)), ((-0.6, 5.5), (0, 5))])
def test_labelme_mask_shape_origin_is_truncated_as_labelme_places_it(tmp_path, origin, top_left):
    """labelme's ``shapes_to_label`` puts a mask at ``points.astype(int)``; was rounded: 1 px off (10.6 -> 11;
    -0.6 -> -1 cut its first column)."""
    patch = np.zeros((11, 21), np.uint8)
    patch[2:9, 3:18] = 255
    shape = dict(_shape("cat", [list(origin), [origin[0] + 20, origin[1] + 10]], "mask"),
                 mask=base64.b64encode(cv2.imencode(".png", patch)[1].tobytes()).decode())
    _labelme(tmp_path, "a", [shape])
    (mask,) = LabelmeDataset(tmp_path)[0].masks
    x, y = top_left
    assert _box(mask) == [x + 3, y + 2, x + 17, y + 8] and mask.sum() == 7 * 15


def _labelme_shape_to_mask(points: list[list[float]], shape_type: str) -> np.ndarray:
    """labelme 6.3.1's ``labelme.utils.shape_to_mask`` for these shape types, as it is written there."""
    import math

    import PIL.Image
    import PIL.ImageDraw

    mask = PIL.Image.fromarray(np.zeros((H, W), dtype=np.uint8))
    draw = PIL.ImageDraw.Draw(mask)
    xy = [tuple(point) for point in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse(((cx - d, cy - d), (cx + d, cy + d)), outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), outline=1, fill=1)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(mask, dtype=bool)


def test_labelme_random_shapes_match_labelmes_shape_to_mask(tmp_path):
    """200 random polygons, rectangles, circles and oriented rectangles (fractional points, some over the image's
    edges) give labelme's masks pixel for pixel."""
    rng = np.random.default_rng(0)
    shapes = []
    for k in range(200):
        kind = ("polygon", "rectangle", "circle", "oriented_rectangle")[k % 4]
        centre, size = rng.uniform([-5, -5], [W + 5, H + 5]), rng.uniform(3, 25)
        if kind == "oriented_rectangle":
            angle, (a, b) = rng.uniform(0, np.pi), rng.uniform(2, size, 2)
            u, v = np.array([np.cos(angle), np.sin(angle)]) * a, np.array([-np.sin(angle), np.cos(angle)]) * b
            points = [centre + u + v, centre - u + v, centre - u - v, centre + u - v]
        else:
            offsets = rng.uniform(1, size, ({"polygon": int(rng.integers(3, 8))}.get(kind, 2), 2))
            points = centre + offsets * rng.choice([-1, 1], offsets.shape)  # (no empty rectangle: left out)
        shapes.append(_shape(f"s{k}", np.round(np.array(points), int(rng.integers(0, 3))).tolist(), kind))
    _labelme(tmp_path, "a", shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtsegWarning)  # shapes that cover no pixel (labelme's masks are empty too)
        ds = LabelmeDataset(tmp_path, class_names=["s"])
        got = iter(ds[0].masks)
    expected = [_labelme_shape_to_mask(s["points"], s["shape_type"]) for s in shapes]
    assert sum(m.any() for m in expected) > 150
    for k, want in enumerate(expected):
        if want.any():
            assert np.array_equal(next(got), want), shapes[k]


def test_labelme_class_list_from_file_and_unknown_label(tmp_path):
    _labelme(tmp_path, "a", [_shape("dog3", [[1, 1], [9, 1], [9, 9]])])
    (tmp_path / "label_names.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    ds = LabelmeDataset(tmp_path)
    assert ds.class_names == ("cat", "dog") and ds[0].class_ids.tolist() == [1]
    (tmp_path / "label_names.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match=r"a.json: shape 0: label 'dog3' is not a known class \(cat\)"):
        LabelmeDataset(tmp_path)


def test_labelme_label_with_a_line_break_is_one_line_naming_the_folder(tmp_path):
    """Was taken, then refused by the engine the trainer built, in a message naming neither folder nor label."""
    _labelme(tmp_path, "a", [_shape("cat\x1b[2J", [[1, 1], [9, 1], [9, 9]])])
    with pytest.raises(DatasetError) as info:
        LabelmeDataset(tmp_path)
    assert str(info.value) == (f"{tmp_path}: label 'cat\\x1b[2J' holds a line break or another control character; "
                               "give it a printable one-line name")


def test_labelme_samples_are_in_name_order_with_numbers_as_numbers(tmp_path):
    """s2 before s10, as an image folder of the same names plays (plain sorting gave s1, s10, s2)."""
    for name in ("s10", "s2", "s1"):
        _labelme(tmp_path, name, [_shape("cat", [[1, 1], [9, 1], [9, 9]])])
    assert [f.name for f in LabelmeDataset(tmp_path).files] == ["s1.json", "s2.json", "s10.json"]


def test_labelme_without_class_list_uses_sorted_labels(tmp_path):
    _labelme(tmp_path, "a", [_shape("zebra1", [[1, 1], [9, 1], [9, 9]]), _shape("ant", [[1, 1], [9, 1], [9, 9]])])
    assert LabelmeDataset(tmp_path).class_names == ("ant", "zebra")


@pytest.mark.parametrize("shapes, extra, message", [
    ([_shape("cat", [[1, 1], [5, 5], [3]])], {}, "points should be a list of"),
    ([_shape("cat", [[1, 1], [float("nan"), 5], [3, 3]])], {}, "shape 0: points contain NaN"),
    ([_shape("cat", [[1, 1], [True, 5], [3, 3]])], {}, "shape 0: points contain true or false instead of numbers"),
    ([_shape("cat", [[1, 1], [9, 9]], "mask")], {}, "shape 0: mask shape without a readable base64 PNG"),
    ([], {"imageHeight": "60"}, "imageHeight should be a positive whole number of pixels, got '60'"),
    (None, {}, "'shapes' should be a list"),
    ([{"points": [[1, 1], [5, 5], [3, 3]]}], {}, "shape 0: missing key 'label'"),
    ([], {"imageHeight": None}, None),
])
def test_malformed_labelme_names_file_and_problem(tmp_path, shapes, extra, message):
    _labelme(tmp_path, "bad", shapes, **extra)
    if message is None:  # a missing key
        data = json.loads((tmp_path / "bad.json").read_text())
        del data["imageHeight"]
        (tmp_path / "bad.json").write_text(json.dumps(data))
        message = "missing key 'imageHeight'"
    with pytest.raises(DatasetError, match=message) as err:
        LabelmeDataset(tmp_path, class_names=["cat"])
    assert "bad.json" in str(err.value)


def test_labelme_image_data_fallback_and_missing_image(tmp_path):
    img = _labelme(tmp_path, "emb", [_shape("cat", [[1, 1], [9, 1], [9, 9]])], image=False, image_data=True)
    assert np.array_equal(LabelmeDataset(tmp_path, class_names=["cat"])[0].image, img)
    _labelme(tmp_path, "gone", [_shape("cat", [[1, 1], [9, 1], [9, 9]])], image=False)
    with pytest.raises(DatasetError, match=r"1 of 2 images named by the JSON files are missing \(e\.g\. .*gone\.png\)"):
        LabelmeDataset(tmp_path, class_names=["cat"])  # found when the folder is opened, not hours into training


def test_coco_export_round_trip_equals_scene(tmp_path):
    scene = SyntheticScene(7, num_frames=30, width=160, height=120)
    path = export_coco(scene, tmp_path, every=6)
    data = json.loads(path.read_text())
    assert data["videos"][0]["length"] == 5 and [c["name"] for c in data["categories"]] == list(CLASSES)
    assert [img["frame_index"] for img in data["images"]] == [0, 6, 12, 18, 24]
    assert all(img["video_id"] == 1 for img in data["images"])
    ds = CocoDataset(path, tmp_path)
    assert ds.class_names == CLASSES
    tracks = [a["track_id"] for a in data["annotations"]]
    k = 0
    for index, frame in enumerate(range(0, 30, 6)):
        image, instances = scene.frame(frame)
        s = ds[index]
        assert np.array_equal(s.image, image)
        assert s.class_ids.tolist() == [i.class_id for i in instances]
        assert all(np.array_equal(m, i.mask) for m, i in zip(s.masks, instances))
        assert tracks[k:k + len(instances)] == [i.track_id for i in instances]
        k += len(instances)
    assert k == len(tracks) > 0


def test_labelme_export_polygons_rasterise_back(tmp_path):
    scene = SyntheticScene(12, num_frames=40, width=160, height=120)
    export_labelme(scene, tmp_path, every=8)
    first = json.loads((tmp_path / "frame_000000.json").read_text())
    assert all(split_label(s["label"])[1] is not None for s in first["shapes"])
    ds = LabelmeDataset(tmp_path)
    assert ds.class_names == CLASSES and len(ds) == 5
    ious = []
    for index, frame in enumerate(range(0, 40, 8)):
        image, instances = scene.frame(frame)
        s = ds[index]
        assert np.array_equal(s.image, image)
        assert s.class_ids.tolist() == [i.class_id for i in instances]
        ious += [(m & i.mask).sum() / (m | i.mask).sum() for m, i in zip(s.masks, instances)]
    assert len(ious) > 5 and min(ious) > 0.9


def test_export_command_writes_all_formats(tmp_path, capsys):
    from rtseg.data.export import main

    args = ["--out", str(tmp_path), "--seed", "5", "--frames", "6", "--width", "96", "--height", "64", "--every", "3"]
    assert main(args) == 0
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    assert len(CocoDataset(tmp_path / "coco" / "annotations.json", tmp_path / "coco")) == 2
    assert len(LabelmeDataset(tmp_path / "labelme")) == 2
    assert main(args + ["--formats", "gif"]) == 2
    assert "choose from mp4, coco, labelme" in capsys.readouterr().err
    for empty in (["--out", ""], ["--out="]):  # "--out $UNSET" exported into the current folder (Path("") is ".")
        assert main(empty) == 2
        assert capsys.readouterr().err == ("export: error: --out is empty (an unset shell variable?); give it a value "
                                           "(see python -m rtseg.data.export --help)\n")


@pytest.mark.parametrize("export", [export_coco, export_labelme])
@pytest.mark.parametrize("every", [0, -3, True, 2.5, 2.0, float("nan"), "2"])
def test_export_every_that_is_no_integer_from_1_is_one_line_and_writes_nothing(export, every, tmp_path):
    """Was "export: every must be >= 1" after the output folder was made (0), a TypeError traceback (2.5, 2.0,
    NaN, "2") or accepted (True)."""
    scene = SyntheticScene(7, num_frames=4, width=64, height=64)
    with pytest.raises(ConfigError, match=rf"^{export.__name__}: every must be an integer >= 1, got "
                                          rf"{re.escape(repr(every))}$"):
        export(scene, tmp_path / "out", every=every)
    assert not (tmp_path / "out").exists()
    assert len(json.loads(export_coco(scene, tmp_path / "np", every=np.int64(2)).read_text())["images"]) == 2


@pytest.mark.parametrize("option, value, message", [
    ("--every", "0", "--every 0: must be an integer >= 1"),
    ("--width", "16", "--width 16: must be an integer in [32, 4096] pixels"),
    ("--height", "-1", "--height -1: must be an integer in [32, 4096] pixels"),
    ("--width", "99999", "--width 99999: must be an integer in [32, 4096] pixels"),  # (was an OpenCV traceback)
    ("--frames", "0", "--frames 0: must be an integer >= 1"),
    ("--seed", "-1", "--seed -1: must be an integer >= 0"),
])
def test_export_command_refuses_options_out_of_range_naming_them(option, value, message, tmp_path, capsys):
    """Were the Python API's lines ("SyntheticScene: need width, height >= 32 …", "export: every must be …")."""
    from rtseg.data.export import main

    assert main(["--out", str(tmp_path / "out"), "--frames", "4", option, value]) == 2
    assert capsys.readouterr().err == f"export: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_export_command_refuses_an_odd_clip_size_naming_the_options(tmp_path, capsys):
    """Was "export_mp4: H.264 yuv420p needs even width and height, got 161x121", the Python API's line."""
    from rtseg.data.export import main

    assert main(["--out", str(tmp_path / "out"), "--frames", "2", "--width", "161", "--height", "121"]) == 2
    assert capsys.readouterr().err == ("export: error: --width 161 --height 121: the clip (H.264 yuv420p) needs an "
                                       "even width and height; give even values, or --formats coco,labelme for no "
                                       "clip\n")
    assert not (tmp_path / "out").exists()
    assert main(["--out", str(tmp_path / "out"), "--frames", "2", "--width", "161", "--height", "121", "--every", "1",
                 "--formats", "coco"]) == 0


def test_labelme_ignore_shapes_and_windows_image_path(tmp_path):
    (tmp_path / "img").mkdir()
    img = _image(3)
    cv2.imwrite(str(tmp_path / "img" / "x.png"), img)
    _labelme(tmp_path, "x", [_shape("__ignore__", [[1, 1], [9, 1], [9, 9]]), _shape("cat", [[1, 1], [9, 1], [9, 9]])],
             image=False, imagePath="img\\x.png")
    s = LabelmeDataset(tmp_path, class_names=["cat"])[0]
    assert np.array_equal(s.image, img) and s.class_ids.tolist() == [0]


def test_coco_annotations_without_a_mask_are_left_out_with_one_warning(tmp_path):
    """bbox-only, too few points, zero area, outside the image, empty RLE: left out, named in one warning;
    a polygon part of 2 points beside a good part is dropped, the annotation kept."""
    good = {"image_id": 10, "category_id": 7, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}
    odd = [{"bbox": [1, 1, 4, 4]}, {"segmentation": []}, {"segmentation": [[1, 1, 5, 5]]},
           {"segmentation": [[1, 1, 10, 10, 20, 20]]}, {"segmentation": [[100, 100, 120, 100, 120, 120]]},
           {"segmentation": _rle(np.zeros((H, W), bool))},
           {"segmentation": [[40, 5, 50, 5, 50, 15], [1, 1, 5, 5]]}]
    anns = [dict(good, id=1)] + [dict({"image_id": 20, "category_id": 3}, id=k + 2, **a) for k, a in enumerate(odd)]
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(*_coco(tmp_path, annotations=anns))
    assert len(record) == 1
    message = str(record[0].message)
    assert "left out 6 annotations" in message and "annotations[1] (id 2): no segmentation (bbox only)" in message
    assert "annotations[3] (id 4): polygon with 2 points" in message and "polygon of zero area" in message
    assert "polygon outside the 80x60 image" in message and "and 1 more" in message
    assert ds[0].class_ids.tolist() == [1]
    s = ds[1]
    triangle = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[40, 5, 50, 5, 50, 15]], H, W)))
    assert s.class_ids.tolist() == [0] and np.array_equal(s.masks[0], triangle.astype(bool))


def test_coco_duplicate_ids_and_names_bom_and_windows_file_names(tmp_path):
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append({"id": 10, "file_name": "b.png", "height": H, "width": W})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[2\]: id 10 is also the id of a.png"):
        CocoDataset(path, images)  # was: a.png silently dropped, its annotations drawn on b.png
    data["images"].pop()
    data["categories"].append({"id": 8, "name": "dog"})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"categories with the same name \(dog\)"):
        CocoDataset(path, images)
    data["categories"].pop()
    (images / "sub").mkdir()
    (images / "a.png").rename(images / "sub" / "a.png")
    data["images"][0]["file_name"] = "sub\\a.png"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert np.array_equal(CocoDataset(path, images)[0].image, _image(0))
    path.write_text(json.dumps(dict(data, images=[], annotations=[])))
    with pytest.raises(DatasetError, match="no images listed"):
        CocoDataset(path, images)


def test_labelme_shapes_without_area_are_left_out_with_one_warning(tmp_path):
    good = _shape("cat", [[5, 5], [30, 5], [30, 30], [5, 30]])
    odd = [_shape("cat", [[1, 1], [5, 5]]), _shape("cat", [[1, 1], [5, 5]], "line"), _shape("cat", [[1, 1]], "point"),
           _shape("cat", [[1, 1], [10, 10], [20, 20]]), _shape("cat", [[200, 200], [230, 200], [230, 230]]),
           _shape("cat", [[5, 5], [5, 20]], "rectangle"), _shape("cat", [[9, 9], [9, 9]], "circle"),
           _shape("", [[1, 1], [9, 1], [9, 9]]), _shape("cat", [[1e12, 1], [5, 5], [9, 1]])]
    bowtie = _shape("cat", [[40, 5], [60, 25], [60, 5], [40, 25]])  # self-intersecting: both lobes filled
    _labelme(tmp_path, "a", [good, *odd, bowtie])
    with pytest.warns(UserWarning) as record:
        ds = LabelmeDataset(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "left out 9 shapes" in message and "a.json: shape 1: polygon with 2 points (need 3)" in message
    assert "shape 2: line has no area" in message and "shape 4: polygon of zero area" in message
    assert "shape 5: polygon outside the 80x60 image" in message and "and 4 more" in message
    s = ds[0]
    assert ds.class_names == ("cat",) and len(s) == 2
    assert s.masks[1][15, 42] and s.masks[1][15, 58] and not s.masks[1][7, 50]


def test_labelme_folder_without_instances_is_refused_at_open(tmp_path):
    _labelme(tmp_path, "a", [])
    _labelme(tmp_path, "b", [_shape("cat", [[1, 1], [5, 5]], "line"), _shape("__ignore__", [[1, 1], [9, 1], [9, 9]])])
    with pytest.warns(UserWarning, match="line has no area"):
        with pytest.raises(DatasetError, match="all 1 shapes in the 2 JSON files were left out"):
            LabelmeDataset(tmp_path, class_names=["cat"])


def test_labelme_image_found_beside_the_json_when_image_path_is_stale(tmp_path):
    """Folders moved from Windows, renamed images, imagePath null or missing: the image beside the JSON is used."""
    cat = [_shape("cat", [[1, 1], [9, 1], [9, 9]])]
    imgs = [_labelme(tmp_path, "a", cat, imagePath="C:\\Users\\bob\\Pictures\\a.png"),
            _labelme(tmp_path, "b", cat, imagePath="renamed.png"), _labelme(tmp_path, "c", cat, imagePath=None)]
    d = json.loads((tmp_path / "c.json").read_text())
    del d["imagePath"]
    (tmp_path / "d.json").write_text(json.dumps(d))
    cv2.imwrite(str(tmp_path / "d.png"), imgs[2])
    with pytest.warns(UserWarning, match=r"2 JSON files name an image that is not there.*a.json: "
                                         r"C:/Users/bob/Pictures/a.png -> a.png; b.json: renamed.png -> b.png"):
        ds = LabelmeDataset(tmp_path)
    assert [np.array_equal(ds[i].image, im) for i, im in enumerate(imgs + imgs[2:])] == [True] * 4


def test_labelme_odd_files_and_images(tmp_path):
    """BOM, group_id of any JSON value, grey / RGBA / 16-bit images; broken imageData and non-UTF-8 are one line."""
    square = [[5, 5], [30, 5], [30, 30], [5, 30]]
    _labelme(tmp_path, "a", [_shape("cat", square, group_id=[1]), _shape("cat", [[40, 5], [60, 5], [60, 30]],
                                                                          group_id=[1])], image=False)
    grey = _image(4)[:, :, 0]
    cv2.imwrite(str(tmp_path / "a.png"), (grey.astype(np.uint16) * 257))
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _labelme(tmp_path, "b", [_shape("cat", square)], image=False)
    cv2.imwrite(str(tmp_path / "b.png"), np.dstack([_image(5), np.full((H, W), 7, np.uint8)]))
    ds = LabelmeDataset(tmp_path)
    s = ds[0]
    assert len(s) == 1 and s.masks[0][10, 10] and s.masks[0][10, 50]  # merged by group_id [1]
    assert np.array_equal(s.image, np.dstack([grey] * 3)) and np.array_equal(ds[1].image, _image(5))
    _labelme(tmp_path, "c", [_shape("cat", square)], image=False, image_data=True)
    d = json.loads((tmp_path / "c.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps(dict(d, imageData="!!!notbase64")))
    with pytest.raises(DatasetError, match="c.json: imageData is not a base64 image") as err:
        LabelmeDataset(tmp_path)[2]
    assert "\n" not in str(err.value)
    (tmp_path / "c.json").write_bytes(json.dumps(d).replace('"cat"', '"caf\\u00e9"').encode("utf-8")
                                      .replace("caf\\u00e9".encode(), "café".encode("latin-1")))
    with pytest.raises(DatasetError, match=r"c.json: not UTF-8 \(byte \d+ is 0xe9\); save the file as UTF-8"):
        LabelmeDataset(tmp_path)


def test_coco_polygon_with_huge_coordinates_is_left_out_by_name(tmp_path):
    """Coordinates of ~3e9 overflowed pycocotools' rasteriser (a segfault at ds[i]): beyond the labelme limit
    (1e6 pixels) the annotation is left out, named in the one warning as other annotations without a mask."""
    good = {"id": 1, "image_id": 10, "category_id": 7, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}
    huge = {"id": 9, "image_id": 10, "category_id": 3, "segmentation": [[10, 10, 3e9, 10, 3e9, 3e9, 10, 20]]}
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(*_coco(tmp_path, annotations=[good, huge]))
    assert len(record) == 1
    assert "annotations[1] (id 9): polygon with points beyond 1e+06 pixels" in str(record[0].message)
    assert ds[0].class_ids.tolist() == [1]


def test_coco_file_nested_too_deeply_is_one_line(tmp_path):
    """A JSON file nested 100 000 levels deep raised RecursionError (a traceback) from the JSON parser."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="deep.json: JSON nested too deeply") as info:
        CocoDataset(path, tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("where, change, message", [
    ("images", {"height": 0}, "images[0]: height should be a positive whole number of pixels, got 0"),
    ("images", {"width": -80}, "images[0]: width should be a positive whole number of pixels, got -80"),
    ("images", {"file_name": " "}, "images[0]: empty file_name; give the image file's name relative to the image"),
    ("categories", {"name": ""}, "categories[0] (id 12): empty name; give every category a name"),
    # was: taken, then refused in a message naming neither file nor category when an engine got the class names
    ("categories", {"name": "a\nb"}, "categories[0] (id 12): name 'a\\nb' holds a line break or another control "
                                      "character; give it a printable one-line name"),
])
def test_coco_image_without_a_size_or_name_and_unnamed_category_are_one_line(tmp_path, where, change, message):
    """A height of 0 or below was taken for the image's size ("polygon outside the 80x0 image", then "no
    annotations with a mask"); an empty file_name was "1 of 2 images ... are missing (e.g. )"; a category without
    a name became a class named "" ("the weights do not know data-set classes ; ...")."""
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data[where][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        CocoDataset(path, images)
    assert str(info.value).startswith(f"{path}: {message}")


def test_json_with_a_number_too_long_for_python_and_a_folder_named_json_are_handled(tmp_path):
    """A number of more than 4300 digits raised ValueError (a traceback) from the JSON parser; a labelme folder's
    subfolder named x.json was read as a labelme file ("cannot read the labelme file (not a regular file ...)"):
    it is passed over, as an image folder's subfolders are."""
    path = tmp_path / "long.json"
    path.write_text('{"images": [{"id": 1' + "0" * 5000 + "}]}")
    with pytest.raises(DatasetError) as info:
        CocoDataset(path, tmp_path)
    assert str(info.value) == (f"{path}: not readable JSON: a number has more than 4300 digits; repair or remove "
                               "the annotation file")
    folder = tmp_path / "lm"
    folder.mkdir()
    _labelme(folder, "a", [_shape("cat", [[5, 5], [30, 5], [30, 30]])])
    (folder / "x.json").mkdir()
    assert [p.name for p in LabelmeDataset(folder).files] == ["a.json"]


def test_data_specs_of_train_and_eval_parse_in_one_place(tmp_path):
    """synthetic[:SPLIT] / coco:ANN:IMAGES / labelme:FOLDER, with the paths each reads (the commands check their
    outputs against them); a malformed spec is one line naming the option."""
    from rtseg.data.spec import DataSpec, parse_data

    assert parse_data("synthetic") == DataSpec("synthetic") and parse_data("synthetic").paths == ()
    assert parse_data("synthetic:val").split == "val"
    assert parse_data("coco:a/b.json:imgs").paths == (Path("a/b.json"), Path("imgs"))
    assert parse_data(f"labelme:{tmp_path}").paths == (tmp_path,)
    (tmp_path / "one.json").write_text("{}")
    for spec, message in (("coco:only.json", "use coco:ANNOTATIONS.json:IMAGE_DIR"), ("labelme:", "use labelme:FOLDER"),
                          ("synthetic:", "use synthetic or synthetic:SPLIT"),  # was the default split, unnoticed
                          (f"labelme:{tmp_path / 'one.json'}", "is a file, not a folder"),
                          ("voc:x", "unknown kind 'voc'; expected synthetic[:SPLIT]")):
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            parse_data(spec, "--val-data")
        assert str(info.value).startswith(f"--val-data {spec!r}: ")


@pytest.mark.parametrize("shape, message", [
    (_shape("cat", [1, 1, 20, 1, 20, 20]), "shape 0: points should be a list of [x, y] pairs, got a flat list of "
                                           "numbers; write [[x1, y1], [x2, y2], ...]"),
    (_shape(3, [[1, 1], [20, 1], [20, 20]]), "shape 0: label should be text, got 3; put the label in quotes"),
    (_shape("cat", [[1, 1], [9, 9]], ["polygon"]), "shape 0: shape_type should be text (e.g. \"polygon\"), "
                                                    "got ['polygon']"),
    (dict(_shape("cat", [[i, i % 7] for i in range(60)], "mask"), mask="!!notbase64"),
     "shape 0: mask shape without a readable base64 PNG in 'mask'; delete the shape or draw it again in labelme"),
    (_shape("cat", [[10**400, 1], [20, 1], [20, 20]]),
     "shape 0: points contain NaN, infinity or a number beyond float range; fix or delete the shape"),
])
def test_labelme_shape_malformed_by_hand_is_one_line_naming_it(tmp_path, shape, message):
    """Were accepted (a flat point list read as pairs, an integer label as text), a traceback (a list as
    shape_type, an integer beyond float range), or the wrong reason (a mask with a broken 'mask' said 'mask with 60 points (need 2)')."""
    _labelme(tmp_path, "bad", [shape])
    with pytest.raises(DatasetError) as info:
        LabelmeDataset(tmp_path, class_names=["cat", "3"])
    assert str(info.value) == f"{tmp_path / 'bad.json'}: {message}"


def test_labelme_class_file_that_is_a_folder_or_lists_a_name_twice_is_one_line(tmp_path):
    """A folder label_names.txt was ignored (classes taken from the labels); a name listed twice shifted every
    class index after it and surfaced only as 'not a known class (cat, dog, cat)'."""
    _labelme(tmp_path, "a", [_shape("cat", [[1, 1], [9, 1], [9, 9]])])
    names = tmp_path / "label_names.txt"
    names.mkdir()
    with pytest.raises(DatasetError) as info:
        LabelmeDataset(tmp_path)
    assert str(info.value) == (f"{names}: cannot read class names (not a regular file (a FIFO, socket, device or "
                               "folder)); give a text file with one class name per line")
    names.rmdir()
    names.write_text("cat\ndog\n\ncat\n")
    with pytest.raises(DatasetError) as info:
        LabelmeDataset(tmp_path)
    assert str(info.value) == f"{names}: class 'cat' is listed twice (lines 1 and 4); list each class once"


def _error_without_blocking(fn, fifo: Path) -> str:
    """The DatasetError line of ``fn()``; fails the test (after releasing the reader) when ``fn`` waits on ``fifo``."""
    found: list[str] = []

    def run() -> None:
        try:
            fn()
        except DatasetError as exc:
            found.append(str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer that leaves at once: the reader sees EOF
        pytest.fail(f"blocked reading the FIFO {fifo}")
    assert found, "no DatasetError"
    return found[0]


@pytest.mark.parametrize("kind", ["coco", "labelme", "class file"])
def test_json_or_class_file_that_is_a_fifo_is_refused_without_waiting(tmp_path, kind):
    """A FIFO given as the COCO file, named like a labelme file or label_names.txt was opened for reading and
    waited on for ever (no writer)."""
    _labelme(tmp_path, "a", [_shape("cat", [[1, 1], [9, 1], [9, 9]])])
    fifo = tmp_path / {"coco": "instances.json", "labelme": "b.json", "class file": "label_names.txt"}[kind]
    os.mkfifo(fifo)
    fn = (lambda: CocoDataset(fifo, tmp_path)) if kind == "coco" else (lambda: LabelmeDataset(tmp_path))
    line = _error_without_blocking(fn, fifo)
    what = {"coco": "the annotation file", "labelme": "the labelme file", "class file": "class names"}[kind]
    assert line.startswith(f"{fifo}: cannot read {what} (not a regular file (a FIFO, socket, device or folder))")


def test_polygon_parts_are_checked_together() -> None:
    """All parts' points are checked as one array: a part of zero area or outside the image is fine while another
    part has area inside it; a short part is dropped; a bool is no number."""
    from rtseg.data.coco import check_segmentation

    line, square, outside = [1, 1, 2, 2, 3, 3], [10, 10, 20, 10, 20, 20, 10, 20], [200, 200, 210, 200, 210, 210]
    assert check_segmentation([line, square], 60, 80, "a") == ([line, square], None)
    assert check_segmentation([line, [4, 4, 5, 5, 6, 6]], 60, 80, "a")[1] == "polygon of zero area"
    assert check_segmentation([outside, square], 60, 80, "a")[1] is None
    assert check_segmentation([outside], 60, 80, "a")[1] == "polygon outside the 80x60 image"
    assert check_segmentation([[1, 2], square], 60, 80, "a") == ([square], None)
    with pytest.raises(DatasetError, match="a: a polygon must be a list of numbers"):
        check_segmentation([[1, 1, True, 2, 3, 3]], 60, 80, "a")


def test_a_coco_spec_whose_paths_hold_colons_splits_after_the_annotation_file(tmp_path):
    """Was: ``coco:ANN:IMAGES`` was split at its first ':', so a path with a colon (a timestamped folder
    ``2024-01-01T10:00/``) could not be given, and the error named a piece of it as the annotation file. Now the
    split is after the existing file, else after the part ending ``.json``, else before the existing folder; a
    spec still ambiguous is one line saying how to write it."""
    from rtseg.data.spec import parse_data

    folder = tmp_path / "2024-01-01T10:00"
    ann = export_coco(SyntheticScene(34, num_frames=4, width=160, height=120), folder / "coco", every=2)
    data = parse_data(f"coco:{ann}:{ann.parent}")
    assert data.paths == (ann, ann.parent) and len(CocoDataset(*data.paths)) == 2  # read from there
    assert parse_data(f"coco:{folder}/none.json:{folder}").paths == (folder / "none.json", folder)  # missing
    plain = folder / "instances"  # an existing annotation file not named *.json
    plain.write_text("{}")
    assert parse_data(f"coco:{plain}:{folder}").paths == (plain, folder)
    odd = tmp_path / "a.json:b.json"  # an existing file, whose name alone could be split after a.json
    odd.write_text("{}")
    assert parse_data(f"coco:{odd}:{folder}").paths == (odd, folder)
    assert parse_data(f"coco:{tmp_path}/x:y/ann:{folder}").paths == (tmp_path / "x:y/ann", folder)  # a folder
    for spec, could_be in ((f"coco:{tmp_path}/x:y/ann:{tmp_path}/none", f"{tmp_path}/x or {tmp_path}/x:y/ann"),
                           (f"coco:{tmp_path}/n.json:m.json:{tmp_path}/none",
                            f"{tmp_path}/n.json or {tmp_path}/n.json:m.json")):
        with pytest.raises(ConfigError, match=re.escape(
                f"--data {spec!r}: cannot tell which ':' ends the annotation file (it could be {could_be}); give "
                "an existing ANNOTATIONS.json file, or paths without ':' (e.g. relative to the current folder)")):
            parse_data(spec)


def test_a_coco_spec_with_colons_beyond_reason_is_one_short_line():
    """Every colon made a split of two paths (16000 colons: 1 GB and a line of hundreds of MB naming them all):
    over MAX_COCO_COLONS is refused at once; an ambiguous spec names three candidates at most."""
    from rtseg.data.spec import MAX_COCO_COLONS, parse_data

    with pytest.raises(ConfigError) as caught:
        parse_data("coco:" + "x:" * 16000 + "y")
    assert str(caught.value) == (f"--data coco:…: 16000 ':' in its paths, more than {MAX_COCO_COLONS}; give paths "
                                 "without ':' (e.g. relative to the current folder)")
    with pytest.raises(ConfigError, match=re.escape("(it could be a or a:a or a:a:a or …); give")):
        parse_data("coco:" + "a:" * 10 + "b")


@pytest.mark.parametrize("command", [["eval"], ["train", "--iters", "1", "--out", "OUT"]])
def test_rtseg_eval_and_train_name_a_missing_annotation_file_in_a_folder_with_a_colon(tmp_path, command):
    """Was: ``rtseg eval --data coco:/x/col:on/ann.json:/x/col:on`` said ``/x/col: annotation file not found``."""
    import subprocess
    import sys

    folder = tmp_path / "2024-01-01T10:00"
    folder.mkdir()
    args = [a.replace("OUT", str(tmp_path / "m.safetensors")) for a in command]
    r = subprocess.run([sys.executable, "-m", "rtseg", *args, "--data", f"coco:{folder}/ann.json:{folder}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"rtseg {command[0]}: error: {folder}/ann.json: annotation file not found"], r.stderr


def test_coco_windows_file_name_is_read_as_a_path_unless_a_file_of_that_name_exists(tmp_path):
    """``sub\\a.png`` is ``sub/a.png``, but a file named ``sub\\a.png`` (a Linux name may hold a backslash) wins:
    was always read as ``sub/a.png`` (the literal file 'missing', or the other file's picture used)."""
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "sub\\a.png"
    path.write_text(json.dumps(data))
    (images / "a.png").rename(images / "sub\\a.png")
    assert np.array_equal(CocoDataset(path, images)[0].image, _image(0))
    (images / "sub").mkdir()
    cv2.imwrite(str(images / "sub" / "a.png"), _image(5))
    assert np.array_equal(CocoDataset(path, images)[0].image, _image(0))
    (images / "sub\\a.png").unlink()
    assert np.array_equal(CocoDataset(path, images)[0].image, _image(5))


@pytest.mark.parametrize("second", ["a.png", "./a.png", "sub/../a.png", "sub\\..\\a.png"])
def test_coco_two_images_naming_one_file_are_one_line(tmp_path, second):
    """Was: both opened, one picture yielded twice, each time with part of its annotations (the other part's
    objects taught, or scored, as background)."""
    path, images = _coco(tmp_path)
    (images / "sub").mkdir()
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = second
    path.write_text(json.dumps(data))
    names = "a.png" if second == "a.png" else f"a.png and {second}"
    with pytest.raises(DatasetError) as err:
        CocoDataset(path, images, include_crowd=True)  # as rtseg eval opens it
    assert str(err.value) == (f"{path}: images[0] (id 10) and images[1] (id 20) name one file ({names}); "
                              "list the image once, under one id, and give all its annotations that id")


def test_image_names_too_long_to_look_up_are_missing_images_not_a_traceback(tmp_path):
    """Was: OSError 'File name too long' from pathlib's is_file."""
    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "b" * 300 + ".png"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"1 of 2 images listed in instances.json are missing \(e.g. bbbb"):
        CocoDataset(path, images)
    folder = tmp_path / "lm"
    folder.mkdir()
    _labelme(folder, "a", [_shape("cat", [[1, 1], [9, 1], [9, 9]])], image=False, imagePath="a" * 300 + ".png")
    with pytest.raises(DatasetError, match=r"1 of 1 images named by the JSON files are missing \(e.g. .*/aaaa"):
        LabelmeDataset(folder)


def test_labelme_image_path_with_a_backslash_that_names_a_file_as_written_uses_that_file(tmp_path):
    """Was: always read as a Windows path, ``sub/x.png`` (missing, or another picture)."""
    _labelme(tmp_path, "x", [_shape("cat", [[1, 1], [9, 1], [9, 9]])], image=False, imagePath="sub\\x.png")
    cv2.imwrite(str(tmp_path / "sub\\x.png"), _image(3))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "x.png"), _image(4))
    assert np.array_equal(LabelmeDataset(tmp_path)[0].image, _image(3))


def test_labelme_two_json_files_of_one_image_are_one_line(tmp_path):
    """Was: the picture yielded twice, each time with part of its shapes; also when the two name it another way
    (``../lm/a.png``, an absolute path, Windows separators) or one finds it beside itself."""
    folder = tmp_path / "lm"
    folder.mkdir()
    tri = [_shape("cat", [[1, 1], [9, 1], [9, 9]])]
    _labelme(folder, "a", tri)
    for second in ["a.png", "../lm/a.png", "..\\lm\\a.png", str(folder / "a.png"), "C:\\Users\\bob\\a.png"]:
        _labelme(folder, "b", tri, image=False, imagePath=second)
        with pytest.raises(DatasetError) as err:
            LabelmeDataset(folder)
        assert str(err.value).startswith(f"{folder}: a.json and b.json both annotate the image {folder}/"), second
        assert str(err.value).endswith("; keep one JSON file per image (copy the shapes of one into the other and "
                                       "delete it)")
    (folder / "a.png").unlink()
    _labelme(folder, "a", tri, image=False, image_data=True)
    _labelme(folder, "b", tri, image=False, image_data=True, imagePath="a.png")
    assert len(LabelmeDataset(folder)) == 2  # two embedded images: no file of one picture


def test_labelme_image_data_that_is_no_base64_is_refused_when_opened_and_an_image_beside_is_used(tmp_path):
    """Was: a folder whose only image of a JSON was broken imageData opened, and failed at that sample (hours into
    a training); and broken imageData hid the image named like the JSON (``x.json`` -> ``x.png``)."""
    cat = [_shape("cat", [[1, 1], [9, 1], [9, 9]])]
    _labelme(tmp_path, "a", cat)
    for junk in ["!!!notbase64", 5, ["AAAA"]]:
        _labelme(tmp_path, "b", cat, image=False, imageData=junk)
        with pytest.raises(DatasetError) as err:
            LabelmeDataset(tmp_path)
        assert str(err.value) == (f"{tmp_path / 'b.json'}: imageData is not a base64 image and no image file was "
                                  "found; put the image beside the JSON file")
    _labelme(tmp_path, "b", cat, imagePath="stale.png", imageData="!!!notbase64")
    with pytest.warns(UserWarning, match=r"b.json: stale.png -> b.png"):
        ds = LabelmeDataset(tmp_path)
    assert np.array_equal(ds[1].image, _image(1))


def _float_tiff_base64() -> str:
    """Base64 text of a 60 x 80 TIFF of 32-bit float samples (Pillow's mode "F": a depth map, scientific data)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(_image()[:, :, 0].astype(np.float32) / 255).save(out, "TIFF")
    return base64.b64encode(out.getvalue()).decode()


FLOAT_TIFF = ("a TIFF of 32-bit floating-point samples, which rtseg does not read (only 8- and 16-bit integers); "
              "save it as an 8- or 16-bit image")


def test_labelme_image_data_or_mask_of_a_float_tiff_says_its_samples(tmp_path):
    """Was 'imageData is not a base64 image and no image file was found; put the image beside the JSON file' (and
    'mask shape without a readable base64 PNG'): base64 text it is, of a TIFF that rtseg does not read. Base64 of no
    image keeps that line."""
    cat = [_shape("cat", [[1, 1], [9, 1], [9, 9]])]
    _labelme(tmp_path, "a", cat, image=False, imageData=_float_tiff_base64())
    with pytest.raises(DatasetError) as err:
        LabelmeDataset(tmp_path)[0]
    assert str(err.value) == f"{tmp_path / 'a.json'}: the image in imageData (no image file beside it) is {FLOAT_TIFF}"
    _labelme(tmp_path, "a", cat, image=False, imageData=base64.b64encode(b"no image, but base64").decode())
    with pytest.raises(DatasetError) as err:
        LabelmeDataset(tmp_path)[0]
    assert str(err.value) == (f"{tmp_path / 'a.json'}: imageData is not a base64 image and no image file was found; "
                              "put the image beside the JSON file")
    _labelme(tmp_path, "a", [dict(_shape("cat", [[1, 1], [9, 9]], "mask"), mask=_float_tiff_base64())])
    with pytest.raises(DatasetError) as err:
        LabelmeDataset(tmp_path)
    assert str(err.value) == f"{tmp_path / 'a.json'}: shape 0: the PNG of this mask shape is {FLOAT_TIFF}"


def _exif_turned_labelme(folder: Path, suffix: str, orientation: int) -> Path:
    """A labelme folder of one 80 x 60 picture ``a{suffix}`` stored with the EXIF ``orientation`` (5-8: read as
    60 x 80) and its ``a.json`` giving that stored size (as labelme before 3.7 wrote it), one polygon within either;
    the picture's path."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_image()).save(folder / f"a{suffix}", exif=exif.tobytes())
    _labelme(folder, "a", [_shape("circle", [[5, 5], [40, 5], [40, 40]])], image=False, imagePath=f"a{suffix}")
    return folder / f"a{suffix}"


def _exif_turned_labelme_line(file: Path) -> str:
    return (f"{file}: its EXIF orientation turns it on its side, from the stored 80x60 that a.json gives to 60x80; "
            "if the annotations were drawn on the stored picture (as labelme before 3.7 showed it; later versions show "
            "the turned one and write its size), remove the file's orientation tag (e.g. exiftool -Orientation= FILE), "
            "if on the turned one, swap imageWidth and imageHeight in a.json")


@pytest.mark.parametrize("suffix, orientation", [(".jpg", 5), (".jpg", 6), (".jpg", 7), (".jpg", 8), (".png", 6)])
def test_labelme_image_that_its_exif_orientation_turns_on_its_side_says_so_and_both_ways_out(tmp_path, suffix,
                                                                                              orientation):
    """Was 'image is 60x80 but the file says 80x60 (imageWidth x imageHeight); annotate this image again or put
    back the one annotated', with no word of the EXIF orientation. labelme 3.7+ reads the picture turned
    (apply_exif_orientation) and writes that size; a JSON with the stored size was drawn on the stored picture by an
    older labelme, or written by another tool. Either way out, as said, reads the sample."""
    file = _exif_turned_labelme(tmp_path, suffix, orientation)
    with pytest.raises(DatasetError) as caught:
        LabelmeDataset(tmp_path)[0]
    assert str(caught.value) == _exif_turned_labelme_line(file)
    path = tmp_path / "a.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, imageWidth=H, imageHeight=W)))
    sample = LabelmeDataset(tmp_path)[0]
    assert sample.image.shape == (W, H, 3) and sample.masks.shape == (1, W, H)
    path.write_text(json.dumps(record))
    cv2.imwrite(str(file), cv2.imread(str(file), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION))  # tag removed
    sample = LabelmeDataset(tmp_path)[0]
    assert sample.image.shape == (H, W, 3) and sample.masks.shape == (1, H, W)


def test_labelme_image_turned_by_exif_to_another_size_than_given_keeps_the_plain_line(tmp_path):
    _exif_turned_labelme(tmp_path, ".jpg", 6)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), imageWidth=50, imageHeight=40)))
    with pytest.raises(DatasetError) as caught:
        LabelmeDataset(tmp_path)[0]
    assert str(caught.value) == (f"{path}: image is 60x80 but the file says 50x40 (imageWidth x imageHeight); "
                                 "annotate this image again or put back the one annotated")


def test_rtseg_eval_of_a_labelme_image_turned_by_its_exif_orientation_is_one_line_saying_so(tmp_path):
    import subprocess
    import sys

    file = _exif_turned_labelme(tmp_path, ".jpg", 6)
    r = subprocess.run([sys.executable, "-m", "rtseg", "eval", "--data", f"labelme:{tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == f"rtseg eval: error: {_exif_turned_labelme_line(file)}", r.stderr


@pytest.mark.parametrize("command", [["eval"], ["train", "--iters", "1", "--out", "OUT"]])
def test_rtseg_eval_and_train_refuse_two_coco_images_of_one_file_in_one_line(tmp_path, command):
    """Was: both commands went on, the picture read twice with part of its annotations each time."""
    import subprocess
    import sys

    path, images = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "a.png"
    path.write_text(json.dumps(data))
    args = [a.replace("OUT", str(tmp_path / "m.safetensors")) for a in command]
    r = subprocess.run([sys.executable, "-m", "rtseg", *args, "--data", f"coco:{path}:{images}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"rtseg {command[0]}: error: {path}: images[0] (id 10) and images[1] (id 20) name one file (a.png); list the "
        "image once, under one id, and give all its annotations that id"], r.stderr


def test_export_command_refuses_an_out_holding_an_earlier_export_and_writes_nothing(tmp_path, capsys):
    """Was a labelme/ (and coco/) mixing the new frame_000000.* with the stale frame_000003.* of another scene,
    which rtseg train / eval then read alike."""
    from rtseg.data.export import main

    small = ["--frames", "6", "--width", "96", "--height", "64"]
    assert main(["--out", str(tmp_path), "--seed", "5", "--every", "3", *small]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert main(["--out", str(tmp_path), "--seed", "6", "--every", "6", *small]) == 2
    assert capsys.readouterr().err == (
        f"export: error: --out {tmp_path}: {tmp_path / 'clip.mp4'}, {tmp_path / 'coco'}, {tmp_path / 'labelme'} "
        "already exist (an earlier export? its files would mix with this one's); choose an empty folder or remove "
        "them first\n")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert len(LabelmeDataset(tmp_path / "labelme")) == 2
    (tmp_path / "new" / "coco").mkdir(parents=True)  # an empty format folder is taken
    (tmp_path / "new" / "labelme").mkdir()
    (tmp_path / "new" / "labelme" / "mine.txt").write_text("x")  # a folder holding anything is not
    assert main(["--out", str(tmp_path / "new"), "--formats", "coco,labelme", *small]) == 2
    assert capsys.readouterr().err.endswith(f": {tmp_path / 'new' / 'labelme'} already exists (an earlier export? "
                                            "its files would mix with this one's); choose an empty folder or remove "
                                            "it first\n")
    assert main(["--out", str(tmp_path / "new"), "--formats", "coco", *small]) == 0  # labelme/ is not written
    assert len(CocoDataset(tmp_path / "new" / "coco" / "annotations.json", tmp_path / "new" / "coco")) == 1
    assert (tmp_path / "new" / "labelme" / "mine.txt").read_text() == "x"


def test_export_command_help_shows_every_default(capsys):
    from rtseg.data.export import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"--every EVERY\s+annotate every N-th frame \(COCO, labelme; default:\s+10\)",
                     capsys.readouterr().out)


def _exif_turned_coco(tmp_path: Path, suffix: str, orientation: int) -> tuple[Path, Path]:
    """A COCO data set of one 80 x 60 picture stored with the EXIF ``orientation`` (5-8: read as 60 x 80), its
    stored size listed, one polygon within either."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_image()).save(tmp_path / f"a{suffix}", exif=exif.tobytes())
    data = {"images": [{"id": 1, "file_name": f"a{suffix}", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "circle"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 40, 5, 40, 40, 5, 40]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json", tmp_path / f"a{suffix}"


def _exif_turned_line(file: Path) -> str:
    return (f"{file}: its EXIF orientation turns it on its side, from the stored 80x60 that ann.json gives to 60x80; "
            "if the annotations were drawn on the turned picture (as most annotation tools show it), swap the image's "
            "width and height in ann.json, if on the stored one, remove the file's orientation tag "
            "(e.g. exiftool -Orientation= FILE)")


@pytest.mark.parametrize("suffix, orientation", [(".jpg", 5), (".jpg", 6), (".jpg", 7), (".jpg", 8), (".png", 6)])
def test_coco_image_that_its_exif_orientation_turns_on_its_side_says_so_and_both_ways_out(tmp_path, suffix,
                                                                                           orientation):
    """Was 'image is 60x80 but ann.json says 80x60; fix its width/height or use the annotated image': sent to the
    JSON, whose size is the file's own, with no word of the EXIF orientation (a tool that wrote the stored size, or
    drew on the stored pixels). Swapping the size, as said, reads the turned picture."""
    path, file = _exif_turned_coco(tmp_path, suffix, orientation)
    with pytest.raises(DatasetError) as caught:
        CocoDataset(path, tmp_path)[0]
    assert str(caught.value) == _exif_turned_line(file)
    data = json.loads(path.read_text())
    data["images"][0].update(width=H, height=W)
    path.write_text(json.dumps(data))
    sample = CocoDataset(path, tmp_path)[0]
    assert sample.image.shape == (W, H, 3) and sample.masks.shape == (1, W, H)


def test_coco_image_turned_by_exif_to_another_size_than_listed_keeps_the_plain_line(tmp_path):
    path, file = _exif_turned_coco(tmp_path, ".jpg", 6)
    data = json.loads(path.read_text())
    data["images"][0].update(width=50, height=40)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as caught:
        CocoDataset(path, tmp_path)[0]
    assert str(caught.value) == (f"{file}: image is 60x80 but ann.json says 50x40; fix its width/height or use the "
                                 "annotated image")


def test_rtseg_eval_of_a_coco_image_turned_by_its_exif_orientation_is_one_line_saying_so(tmp_path):
    import subprocess
    import sys

    path, file = _exif_turned_coco(tmp_path, ".jpg", 6)
    r = subprocess.run([sys.executable, "-m", "rtseg", "eval", "--data", f"coco:{path}:{tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == f"rtseg eval: error: {_exif_turned_line(file)}", r.stderr
