"""COCO AP evaluation (pycocotools) and the ``rtseg eval`` command."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.data.coco import CocoDataset
from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.data.export import export_coco
from rtseg.data.synthetic import CLASSES, SyntheticScene, scene_to_samples
from rtseg.eval.cli import class_mapping, main
from rtseg.eval.coco import METRICS, CocoEvaluator, evaluate
from rtseg.errors import ConfigError
from rtseg.types import Detections
from servers.helpers import FILE_LIMIT_RUN


def _perfect(sample: Sample, scores=None, masks=None, class_ids=None) -> Detections:
    masks = sample.masks if masks is None else masks
    n = len(masks)
    return Detections(
        boxes=masks_to_boxes(masks),
        scores=np.linspace(0.9, 0.5, n).astype(np.float32) if scores is None else scores,
        class_ids=sample.class_ids if class_ids is None else class_ids,
        image_size=sample.image_size, class_names=CLASSES, _masks=masks,
    )


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    scene = SyntheticScene(31, num_frames=60, width=160, height=120)
    out = list(scene_to_samples(scene, every=6))
    assert sum(len(s) for s in out) >= 15
    return out


def test_perfect_predictions_score_one(samples):
    metrics = evaluate([_perfect(s) for s in samples], samples, CLASSES)
    assert set(metrics) == set(METRICS)
    assert all(v == pytest.approx(1.0) for v in metrics.values())


def test_instance_lists_and_samples_give_the_same_result():
    scene = SyntheticScene(32, num_frames=20, width=160, height=120)
    frames = [scene.frame(i) for i in range(0, 20, 5)]
    samples = [scene.sample(i) for i in range(0, 20, 5)]
    preds = [_perfect(s, masks=np.roll(s.masks, 3, axis=2)) for s in samples]
    assert evaluate(preds, [inst for _, inst in frames], CLASSES) == evaluate(preds, samples, CLASSES)


def test_shifted_masks_score_lower(samples):
    shifted = [_perfect(s, masks=np.roll(s.masks, 1, axis=2)) for s in samples]
    m = evaluate(shifted, samples, CLASSES)
    assert 0.0 < m["mask_AP"] < 0.9 and m["mask_AP75"] < m["mask_AP50"]


def test_missing_and_wrong_class_predictions_score_lower(samples):
    half = [_perfect(s)[np.arange(len(s)) % 2 == 0] for s in samples]
    m = evaluate(half, samples, CLASSES)
    assert 0.3 < m["mask_AP"] < 0.8 and 0.3 < m["box_AP"] < 0.8
    wrong = [_perfect(s, class_ids=(s.class_ids + 1) % len(CLASSES)) for s in samples]
    assert evaluate(wrong, samples, CLASSES)["mask_AP"] == 0.0
    empty = [Detections.empty(s.image_size, CLASSES) for s in samples]
    assert evaluate(empty, samples, CLASSES)["mask_AP"] == 0.0


def test_low_scored_false_positive_costs_less_than_high_scored():
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 5:20, 5:20] = True
    other = np.zeros((1, 40, 40), bool)
    other[0, 25:38, 25:38] = True
    gt = Sample.from_masks(np.zeros((40, 40, 3), np.uint8), mask, [0])
    both = np.concatenate([mask, other])

    def ap(scores):
        d = Detections(boxes=masks_to_boxes(both), scores=np.array(scores, np.float32), class_ids=np.zeros(2, np.int64),
                       image_size=(40, 40), _masks=both)
        return evaluate([d], [gt], ["a"])["mask_AP"]

    assert ap([0.9, 0.1]) == pytest.approx(1.0)
    assert ap([0.1, 0.9]) < 0.6


def test_mask_breakdown_by_class_and_object_size():
    sides = [10, 20, 40, 60]  # areas 100, 400, 1600, 3600: one object per size bucket
    masks = np.zeros((4, 140, 140), bool)
    for i, side in enumerate(sides):  # along the diagonal, 2 px apart
        at = 2 + sum(sides[:i]) + 2 * i
        masks[i, at:at + side, at:at + side] = True
    assert (masks.sum((1, 2)) == np.square(sides)).all() and not (masks.sum(0) > 1).any()
    gt = Sample.from_masks(np.zeros((140, 140, 3), np.uint8), masks, [0, 1, 0, 1])
    found = masks[[1, 3, 0]]  # the 400 and 3600 px objects, and the 100 px one under the wrong class
    pred = Detections(boxes=masks_to_boxes(found), scores=np.array([0.9, 0.8, 0.5], np.float32),
                      class_ids=np.array([1, 1, 1]), image_size=(140, 140), _masks=found)
    ev = CocoEvaluator(["a", "b"])
    ev.add(pred, gt)
    out = ev.mask_breakdown()
    assert out["mask_AP_per_class"] == {"a": 0.0, "b": pytest.approx(1.0)}
    assert [(b["area"][0], b["objects"], b["recall"]) for b in out["recall50_by_area"]] == [
        (0.0, 1, 0.0), (300.0, 1, 1.0), (1024.0, 1, 0.0), (3000.0, 1, 1.0)]


def test_crowd_regions_are_ignored():
    mask = np.zeros((2, 40, 40), bool)
    mask[0, 5:20, 5:20] = True
    mask[1, 25:38, 25:38] = True
    base = Sample.from_masks(np.zeros((40, 40, 3), np.uint8), mask, [0, 0])
    crowd = Sample(image=base.image, boxes=base.boxes, class_ids=base.class_ids, masks=base.masks,
                   iscrowd=np.array([False, True]))
    pred = Detections(boxes=base.boxes, scores=np.array([0.5, 0.9], np.float32), class_ids=base.class_ids,
                      image_size=(40, 40), _masks=mask)
    only_first = Sample.from_masks(base.image, mask[:1], [0])
    assert evaluate([pred], [crowd], ["a"])["mask_AP"] == pytest.approx(1.0)  # detection on the crowd: ignored
    assert evaluate([pred], [only_first], ["a"])["mask_AP"] < 0.6  # same detection is a false positive


def test_category_id_remapping_through_a_coco_file(tmp_path):
    scene = SyntheticScene(33, num_frames=20, width=160, height=120)
    path = export_coco(scene, tmp_path, every=5)
    data = json.loads(path.read_text())
    new_id = {c["id"]: 100 - 7 * c["id"] for c in data["categories"]}  # descending, non-contiguous ids
    for c in data["categories"]:
        c["id"] = new_id[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, tmp_path)
    assert ds.class_names == tuple(reversed(CLASSES))
    samples = [ds[i] for i in range(len(ds))]
    assert evaluate([_perfect(s) for s in samples], samples, ds.class_names)["mask_AP"] == pytest.approx(1.0)
    flipped = [_perfect(s, class_ids=len(CLASSES) - 1 - s.class_ids) for s in samples]
    assert evaluate(flipped, samples, ds.class_names)["mask_AP"] < 0.5


def _loose_boxes(data: dict) -> None:
    for a in data["annotations"][::2]:  # COCO boxes (drawn or from polygons) are often not the mask's tight box
        x, y, w, h = a["bbox"]
        a["bbox"] = [x - 2, y - 2, w + 4, h + 4]


def _pixelless_object(data: dict) -> None:
    data["annotations"].append({"id": 999, "image_id": data["images"][0]["id"], "category_id": 1, "iscrowd": 0,
                                "segmentation": [[10.1, 10.1, 10.4, 10.1, 10.4, 10.4]], "area": 0.045,
                                "bbox": [10.1, 10.1, 0.3, 0.3]})


def _string_ids_float_sizes(data: dict) -> None:
    _loose_boxes(data)
    for img in data["images"]:
        img["id"], img["height"] = f"frame-{img['id']}", float(img["height"])
    for a in data["annotations"]:
        a["image_id"] = f"frame-{a['image_id']}"


def _shifted_predictions(samples: list[Sample], image_ids, category_ids) -> tuple[list[Detections], list[dict]]:
    """Predictions of ``samples``: every mask one pixel off, one object missed, boxes tight around the masks, scores
    that no two detections share (COCOeval breaks ties in the order of the sorted image ids: string ids sort
    otherwise than the samples come); and the same as COCO results (``image_ids``, ``category_ids`` of the data
    set)."""
    from rtseg.serialize import detections_to_coco

    preds, results = [], []
    for k, s in enumerate(samples):
        visible = s.masks.any(axis=(1, 2))
        masks = np.roll(s.masks[visible], 1, axis=2)[1:] if k % 2 else np.roll(s.masks[visible], 1, axis=1)
        scores = np.sort(np.random.default_rng(k).uniform(0.5, 0.9, len(masks)))[::-1].astype(np.float32)
        pred = _perfect(s, scores=scores, masks=masks,
                        class_ids=s.class_ids[visible][len(s.masks[visible]) - len(masks):])
        preds.append(pred)
        results += [{**entry, "image_id": image_ids[k]} for entry in detections_to_coco(pred, 0, category_ids)]
    return preds, results


def _assert_ap_equals_cocoeval(ours: dict[str, float], path: Path, results: list[dict]) -> None:
    """``ours`` (``evaluate``'s metrics) has the mask and box AP, AP50, AP75 of pycocotools' COCOeval of
    ``results`` against the COCO file ``path``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        for iou_type, drop, prefix in (("segm", "bbox", "mask"), ("bbox", "segmentation", "box")):
            ev = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            got = {f"{prefix}_AP": ours[f"{prefix}_AP"], f"{prefix}_AP50": ours[f"{prefix}_AP50"],
                   f"{prefix}_AP75": ours[f"{prefix}_AP75"]}
            assert got == pytest.approx(dict(zip(got, ev.stats[:3])), abs=1e-6), iou_type


@pytest.mark.parametrize("change", [_loose_boxes, _pixelless_object, _string_ids_float_sizes])
def test_coco_file_ap_equals_pycocotools_cocoeval(tmp_path, change):
    """Mask and box AP of a COCO file as ``rtseg eval`` reads it (crowd and pixel-less objects kept) equal
    pycocotools' COCOeval on the file itself: the annotations' own boxes, an object whose polygon covers no pixel
    centre counted (no mask matches it), string image ids and a height of 240.0 taken as pycocotools takes them."""
    from rtseg.eval.cli import open_dataset

    path = export_coco(SyntheticScene(35, num_frames=20, width=160, height=120), tmp_path, every=5)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pixel-less object's warning
        ds = open_dataset(f"coco:{path}:{tmp_path}")
        samples = [ds[i] for i in range(len(ds))]
    preds, results = _shifted_predictions(samples, ds.image_ids, ds.category_ids)
    _assert_ap_equals_cocoeval(evaluate(preds, samples, ds.class_names), path, results)


def test_resized_coco_file_ap_equals_cocoeval_on_the_file_resized_alike(tmp_path):
    """``--resize`` changes only the scale: AP of a COCO file read at half size (``resize_sample``, as ``samples``
    does for --resize) equals COCOeval on that file halved: images and masks halved as --resize halves them, each
    annotation's own (loose) bbox halved, and every object kept, the pixel-less one and one whose single pixel
    vanishes at half size included (were: boxes re-fitted to the resized masks, both objects dropped)."""
    from pycocotools import mask as mask_utils

    from rtseg.data.coco import segmentation_to_mask
    from rtseg.eval.cli import open_dataset
    from rtseg.eval.runners import resize_sample

    path = export_coco(SyntheticScene(35, num_frames=20, width=160, height=120), tmp_path, every=5)
    data = json.loads(path.read_text())
    _loose_boxes(data)
    _pixelless_object(data)
    dot = np.zeros((120, 160), np.uint8)
    dot[11, 11] = 1  # nearest-neighbour halving keeps the even rows and columns only
    data["annotations"].append({"id": 998, "image_id": data["images"][1]["id"], "category_id": 1, "iscrowd": 0,
                                "area": 1, "bbox": [11, 11, 1, 1],
                                "segmentation": {**mask_utils.encode(np.asfortranarray(dot)), "counts":
                                                 mask_utils.encode(np.asfortranarray(dot))["counts"].decode()}})
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pixel-less object's warning
        ds = open_dataset(f"coco:{path}:{tmp_path}")
        halved = [resize_sample(ds[i], (80, 60)) for i in range(len(ds))]
    assert sum(len(s) for s in halved) == len(data["annotations"])
    for img in data["images"]:
        img["width"], img["height"] = 80, 60
    for a in data["annotations"]:
        full = segmentation_to_mask(a["segmentation"], 120, 160, "test").astype(np.uint8)
        half = cv2.resize(full, (80, 60), interpolation=cv2.INTER_NEAREST)
        rle = mask_utils.encode(np.asfortranarray(half))
        a["segmentation"], a["area"] = {**rle, "counts": rle["counts"].decode()}, int(half.sum())
        a["bbox"] = [v / 2 for v in a["bbox"]]
    halved_file = tmp_path / "halved.json"
    halved_file.write_text(json.dumps(data))
    preds, results = _shifted_predictions(halved, ds.image_ids, ds.category_ids)
    _assert_ap_equals_cocoeval(evaluate(preds, halved, ds.class_names), halved_file, results)


def test_evaluator_checks_inputs(samples):
    ev = CocoEvaluator(["a"])
    with pytest.raises(ValueError, match="class id"):
        ev.add(_perfect(samples[0]), samples[0])
    with pytest.raises(ValueError, match="ran out of ground truth after 1 images"):
        evaluate([_perfect(samples[0])] * 2, samples[:1], CLASSES)
    assert all(np.isnan(v) for v in CocoEvaluator(["a"]).summarize().values())


def test_class_mapping_by_name():
    assert class_mapping(["a", "b", "c"], ["c", "a"]).tolist() == [1, -1, 0]
    with pytest.raises(ConfigError, match="do not know data-set classes 'zebra' \\(theirs: 'a'\\)"):
        class_mapping(["a"], ["a", "zebra"])
    line = "classes 'a, b', 'c\\n' (theirs: 'x0', 'x1', 'x2', 'x3', 'x4' … (7 in all))"  # one name each, one line
    with pytest.raises(ConfigError, match=re.escape(line)):
        class_mapping([f"x{i}" for i in range(7)], ["x0", "a, b", "c\n"])


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained small YOLACT saved as rtseg safetensors (the CLI's input format)."""
    from rtseg.models.yolact import Yolact, YolactConfig
    from rtseg.weights import save_yolact

    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=len(CLASSES), input_size=128, fpn_channels=32, num_prototypes=8)
    return save_yolact(tmp_path_factory.mktemp("w") / "tiny.safetensors", Yolact(cfg), CLASSES)


def test_cli_runs_end_to_end_on_synthetic_and_coco(tiny_weights, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["--weights", str(tiny_weights), "--data", "synthetic:test", "--max-images", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "synthetic:test: 1 images" in text and "mask_AP" in text
    record = json.loads(out.read_text())
    assert record["images"] == 1 and set(record["metrics"]) == set(METRICS)
    assert all(0.0 <= v <= 1.0 for v in record["metrics"].values())
    ann = export_coco(SyntheticScene(34, num_frames=4, width=160, height=120), tmp_path / "coco", every=2)
    assert main(["--weights", str(tiny_weights), "--data", f"coco:{ann}:{ann.parent}", "--score-threshold", "0"]) == 0
    assert "2 images" in capsys.readouterr().out


def test_cli_class_names_match_an_official_pth_to_the_data_set(tmp_path, capsys):
    """An official-layout .pth of the synthetic classes carries no names (class0 … class5), so no data-set class
    matched and rtseg eval refused it; --class-names FILE names them."""
    from rtseg.models.yolact import Yolact, YolactConfig

    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=len(CLASSES), input_size=128, fpn_channels=32, num_prototypes=8)
    pth = tmp_path / "custom.pth"
    torch.save(Yolact(cfg).state_dict(), pth)
    args = ["--weights", str(pth), "--data", "synthetic:test", "--max-images", "1"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()  # says what to do: was "evaluate weights trained on these classes"
    assert error.startswith("rtseg eval: error: the weights do not know data-set classes 'square', ") and \
        error.endswith("(theirs: 'class0', 'class1', 'class2', 'class3', 'class4' … (6 in all)); those are "
                       "placeholders (the weights name no classes): give their names with --class-names FILE, one "
                       "per line in class order")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    assert main([*args, "--class-names", str(names)]) == 0
    assert "synthetic:test: 1 images" in capsys.readouterr().out
    assert main(["--engine", "slic", "--data", "synthetic:test", "--class-names", str(names)]) == 2
    assert "--class-names applies to the yolact, msrcnn and fcn engines, not slic" in capsys.readouterr().err


@pytest.mark.parametrize("data, message", [
    ("labelme:/nonexistent/folder", "labelme folder not found"),
    ("coco:only.json", "use coco:ANNOTATIONS.json:IMAGE_DIR"),
    ("voc:x", "unknown kind 'voc'"),
])
def test_cli_user_errors_are_one_line(tiny_weights, capsys, data, message):
    assert main(["--weights", str(tiny_weights), "--data", data]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_cli_bad_paths_and_options_fail_before_evaluating(tiny_weights, tmp_path, capsys):
    """A folder as COCO annotations, an unusable --json path, a bad option value, images without any
    instance (AP undefined): one line each, exit 2, no traceback; --json is refused before evaluating."""
    folder = tmp_path / "lm"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 20, 3), np.uint8))
    (folder / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "a.png", "imageHeight": 20, "imageWidth": 20}))
    cases = [
        (["--data", f"coco:{tmp_path}:{tmp_path}"], "cannot read the annotation file"),
        (["--data", "synthetic:test", "--json", str(tmp_path)], f"--json {tmp_path}: is a folder; give a file name"),
        (["--data", "synthetic:test", "--json", str(tmp_path / "no" / "m.json")],
         f"folder {tmp_path / 'no'} does not exist; create it or choose another path"),
        (["--data", "synthetic:test", "--max-images", "abc"], "invalid int value"),
        (["--data", "synthetic:test", "--max-images", "0"], "--max-images 0: must be an integer >= 1"),
        (["--data", f"labelme:{folder}"], "hold no (non-crowd) instances, so AP is undefined"),
    ]
    for args, message in cases:
        t0 = time.perf_counter()
        assert main(["--weights", str(tiny_weights), *args]) == 2, args
        err = capsys.readouterr().err.strip()  # (a progress line may come first)
        errors = [line for line in err.splitlines() if "error" in line]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (args, err)
        if "--json" in args:
            assert time.perf_counter() - t0 < 5.0  # refused at once, not after evaluating 300 images


def test_cli_json_never_overwrites_an_input(tiny_weights, tmp_path, capsys):
    """Was: ``--json`` replaced whatever it named with the metrics (exit 0): the weights, their manifest, a labelme
    annotation or image, the COCO annotation file or one of its images. Refused like ``rtseg --json`` instead."""
    weights = tmp_path / "w.safetensors"
    for source in (tiny_weights, tiny_weights.with_suffix(".json")):
        weights.with_suffix(source.suffix).write_bytes(source.read_bytes())
    labelme = tmp_path / "lm"
    labelme.mkdir()
    cv2.imwrite(str(labelme / "a.png"), np.zeros((20, 20, 3), np.uint8))
    (labelme / "a.json").write_text(json.dumps({"shapes": [{"label": CLASSES[0], "points": [[1, 1], [9, 1], [9, 9]]}],
                                                "imagePath": "a.png", "imageHeight": 20, "imageWidth": 20}))
    ann = export_coco(SyntheticScene(34, num_frames=2, width=160, height=120), tmp_path / "coco", every=2)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [(f"labelme:{labelme}", weights), (f"labelme:{labelme}", weights.with_suffix(".json")),
             (f"labelme:{labelme}", labelme / "a.json"), (f"labelme:{labelme}", labelme / "a.png"),
             (f"coco:{ann}:{ann.parent}", ann), (f"coco:{ann}:{ann.parent}", ann.parent / "frame_000000.png")]
    for data, output in cases:
        assert main(["--weights", str(weights), "--data", data, "--json", str(output)]) == 2, output
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --json {output} would overwrite the input {output}; choose another output path"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_json_never_overwrites_an_input_through_a_hard_link(tiny_weights, tmp_path, capsys):
    """Was: ``--json`` naming a hard link to the weights, their manifest or the COCO annotation file wrote the
    metrics into that input (exit 0: the check compared paths only). Refused as the input itself is."""
    weights = tmp_path / "w.safetensors"
    for source in (tiny_weights, tiny_weights.with_suffix(".json")):
        weights.with_suffix(source.suffix).write_bytes(source.read_bytes())
    ann = export_coco(SyntheticScene(34, num_frames=2, width=160, height=120), tmp_path / "coco", every=2)
    links = tmp_path / "links"
    links.mkdir()
    cases = [(links / "a.json", weights), (links / "b.json", weights.with_suffix(".json")), (links / "c.json", ann)]
    for link, given in cases:
        os.link(given, link)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for link, given in cases:
        assert main(["--weights", str(weights), "--data", f"coco:{ann}:{ann.parent}", "--json", str(link)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --json {link} would overwrite the input {given}; choose another output path"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_class_mismatch_and_missing_weights(tiny_weights, tmp_path, capsys):
    folder = tmp_path / "lm"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 20, 3), np.uint8))
    (folder / "a.json").write_text(json.dumps({"shapes": [{"label": "zebra1", "points": [[1, 1], [9, 1], [9, 9]]}],
                                               "imagePath": "a.png", "imageHeight": 20, "imageWidth": 20}))
    assert main(["--weights", str(tiny_weights), "--data", f"labelme:{folder}"]) == 2
    assert "do not know data-set classes 'zebra'" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path / "none.safetensors"), "--data", "synthetic:test"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_unused_data_set_category_is_no_error_but_an_annotated_one_is(tiny_weights, tmp_path, capsys):
    """pycocotools leaves a category without ground truth out of AP: ``rtseg eval`` takes weights that lack it
    (was: refused); a category of the weights' lacking with objects in the images evaluated is still refused."""
    ann = export_coco(SyntheticScene(36, num_frames=4, width=160, height=120), tmp_path / "coco", every=2)
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 99, "name": "zebra"})
    ann.write_text(json.dumps(data))
    args = ["--weights", str(tiny_weights), "--data", f"coco:{ann}:{ann.parent}", "--score-threshold", "0"]
    assert main(args) == 0
    assert "2 images" in capsys.readouterr().out
    assert class_mapping(["a"], ["a", "zebra"], annotated=[0]).tolist() == [0]
    data["annotations"][-1]["category_id"] = 99  # on the second image
    ann.write_text(json.dumps(data))
    assert main([*args, "--max-images", "1"]) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "rtseg eval: error: the weights do not know data-set classes 'zebra'" in capsys.readouterr().err


def test_cli_a_class_the_weights_lack_is_refused_before_the_first_image(tiny_weights, tmp_path, capsys):
    """A COCO file says its objects' classes at open: a class with objects that the weights lack is refused before
    any image is read (was: at the first image that holds one, possibly hours into the evaluation), and only when
    it has objects among the --max-images evaluated."""
    ann = export_coco(SyntheticScene(36, num_frames=4, width=160, height=120), tmp_path / "coco", every=2)
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 99, "name": "zebra"})
    data["annotations"][-1]["category_id"] = 99  # on the second image
    ann.write_text(json.dumps(data))
    (ann.parent / data["images"][0]["file_name"]).write_bytes(b"not an image")  # any read of it fails
    args = ["--weights", str(tiny_weights), "--data", f"coco:{ann}:{ann.parent}", "--score-threshold", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtseg eval: error: the weights do not know data-set classes 'zebra'") and "\n" not in err
    assert main([*args, "--max-images", "1"]) == 2  # no zebra in the first image: it is read (and is no image)
    err = capsys.readouterr().err
    assert "zebra" not in err and data["images"][0]["file_name"] in err


def test_cli_a_labelme_class_the_weights_lack_is_refused_before_the_first_image(tiny_weights, tmp_path, capsys):
    """A labelme folder says its shapes' classes at open too (its JSON files are read then): a class the weights
    lack is refused before any image is read, and only when it has shapes among the --max-images evaluated."""
    from rtseg.data.export import export_labelme

    folder = export_labelme(SyntheticScene(36, num_frames=4, width=160, height=120), tmp_path / "lm", every=2)
    (folder / "label_names.txt").write_text("\n".join([*CLASSES, "zebra"]) + "\n")
    second = folder / "frame_000002.json"
    record = json.loads(second.read_text())
    record["shapes"][-1]["label"] = "zebra1"
    second.write_text(json.dumps(record))
    (folder / "frame_000000.png").write_bytes(b"not an image")  # any read of it fails
    args = ["--weights", str(tiny_weights), "--data", f"labelme:{folder}", "--score-threshold", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtseg eval: error: the weights do not know data-set classes 'zebra'") and "\n" not in err
    assert main([*args, "--max-images", "1"]) == 2  # no zebra in the first image: it is read (and is no image)
    err = capsys.readouterr().err
    assert "zebra" not in err and "frame_000000.png" in err


def test_cli_data_set_warnings_are_one_line(tiny_weights, tmp_path, capsys):
    """A shape left out of a labelme folder is reported as ``rtseg eval: warning: …`` (not as Python's
    ``file:line: UserWarning`` followed by a source line) and the evaluation goes on."""
    folder = tmp_path / "lm"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 20, 3), np.uint8))
    shapes = [{"label": CLASSES[0], "points": [[1, 1], [9, 1], [9, 9]]},
              {"label": CLASSES[0], "points": [[1, 1], [9, 9]], "shape_type": "line"}]
    (folder / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.png", "imageHeight": 20,
                                               "imageWidth": 20}))
    assert main(["--weights", str(tiny_weights), "--data", f"labelme:{folder}"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "left out 1 shapes" in line]
    assert len(warned) == 1 and warned[0].startswith("rtseg eval: warning: "), err
    assert "UserWarning" not in err and "LabelmeDataset(" not in err


def test_cli_torchvision_fcn_needs_its_cached_file(tmp_path, monkeypatch, capsys):
    """torchvision:fcn_resnet50 is evaluated only with torchvision's pretrained file in the torch cache
    (an empty cache here: the pretrained path itself cannot be tested without that file)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights, engine, message in [
        ("torchvision:fcn_resnet50", [], "file fcn_resnet50_coco-1167a1af.pth is not in the torch cache "
                                         f"({tmp_path / 'hub' / 'checkpoints'}) and nothing is downloaded; copy it "
                                         "there first (it is https://download.pytorch.org/models/"
                                         "fcn_resnet50_coco-1167a1af.pth)"),
        ("torchvision:fcn_resnet18", [], "use torchvision:fcn_resnet50 or torchvision:fcn_resnet101"),
        ("torchvision:fcn_resnet50", ["--engine", "yolact"], "is an fcn"),
    ]:
        assert main(["--weights", weights, *engine, "--data", "synthetic:test", "--max-images", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_cli_broken_torchvision_fcn_file_in_the_cache_is_one_line(tmp_path, monkeypatch, capsys):
    """torchvision's FCN file in the torch cache but unreadable (a broken download): one line naming it and what
    to do (was a traceback from torchvision's builder)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "fcn_resnet50_coco-1167a1af.pth").write_bytes(b"\xe2 not a checkpoint" * 50)
    assert main(["--weights", "torchvision:fcn_resnet50", "--data", "synthetic:test", "--max-images", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fcn_resnet50_coco-1167a1af.pth: not a PyTorch checkpoint" in err and "delete it" in err, err
    assert "\n" not in err and "Traceback" not in err, err


def test_cli_torchvision_fcn_takes_class_names(tmp_path, monkeypatch, capsys):
    """--class-names with torchvision:fcn_resnet50 names its 21 classes (the names were dropped without a word: the
    VOC names were used) and a file of another count is one line naming it. The cached file is a random model of
    torchvision's layout (the pretrained one cannot be downloaded here; torchvision checks no hash of a cached file)."""
    import torch
    from torchvision.models.segmentation import fcn_resnet50

    from rtseg.engines.choose import load_weights_engine

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True).state_dict(),
               cache / "fcn_resnet50_coco-1167a1af.pth")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"part{i}\n" for i in range(21)))
    engine = load_weights_engine("fcn", "torchvision:fcn_resnet50", device="cpu", class_names_file=str(names))
    assert engine.pretrained and list(engine.class_names) == [f"part{i}" for i in range(21)]
    names.write_text("a\nb\n")
    assert main(["--weights", "torchvision:fcn_resnet50", "--data", "synthetic:test", "--max-images", "1",
                 "--class-names", str(names)]) == 2
    assert capsys.readouterr().err == (f"rtseg eval: error: --class-names {names}: lists 2 class names, the model of "
                                       "torchvision:fcn_resnet50 has 21 classes; list one name per class, in the "
                                       "model's class order\n")


def test_official_coco_class_order_maps_to_coco_category_names():
    from rtseg.data.coco_names import COCO_CATEGORY_IDS, COCO_CLASSES

    cats = [{"id": COCO_CATEGORY_IDS[i], "name": COCO_CLASSES[i]} for i in (79, 0, 11)]  # toothbrush, person, stop sign
    names = tuple(c["name"] for c in sorted(cats, key=lambda c: c["id"]))
    assert class_mapping(COCO_CLASSES, names)[[0, 11, 79]].tolist() == [0, 1, 2]
    assert (class_mapping(COCO_CLASSES, names) >= 0).sum() == 3


def test_cli_json_that_cannot_be_written_leaves_the_earlier_file_whole(tiny_weights, tmp_path):
    """--json is written beside its path and renamed: a failed write (a file size limit of 200 bytes standing in for
    a full disk) used to leave the earlier metrics file cut at 200 bytes, or a new one empty."""
    import subprocess
    import sys

    earlier = tmp_path / "m.json"
    earlier.write_text(json.dumps({"metrics": {"mask_AP": 0.5}, "note": "x" * 300}))
    before = earlier.read_bytes()
    for out in (earlier, tmp_path / "new.json"):
        r = subprocess.run([sys.executable, "-c", FILE_LIMIT_RUN, "200", "eval", "--weights", str(tiny_weights),
                            "--data", "synthetic:test", "--max-images", "1", "--json", str(out)],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == (
            f"rtseg eval: error: --json {out}: cannot write (File too large); choose another path"), r.stderr
    assert earlier.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_cli_resize_beyond_what_rtseg_reads_is_refused_before_evaluating(tiny_weights, capsys):
    """--resize 100000x100000 asked OpenCV for 30 GB after the model loaded (a cv2.error traceback)."""
    for size, side in (("100000x100000", "100000"), ("64x11586", "11586")):
        assert main(["--weights", str(tiny_weights), "--resize", size]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --resize {side}: must be an integer in [32, 11585] pixels (the "
            f"{'width' if side == '100000' else 'height'} of {size}; at most 11585 a side keeps an image within the "
            "134,217,728 pixels rtseg reads)"]


def test_cli_json_among_the_files_of_the_labelme_folder_read_is_refused(tiny_weights, tmp_path, capsys):
    """--json lm/metrics.json with --data labelme:lm succeeded, and every later eval of lm then failed (the metrics
    read as an annotation without 'shapes'). Refused as train refuses its manifest there; beside it is fine."""
    labelme = tmp_path / "lm"
    labelme.mkdir()
    cv2.imwrite(str(labelme / "a.png"), np.zeros((40, 40, 3), np.uint8))
    shape = {"label": CLASSES[0], "points": [[1, 1], [30, 1], [30, 30]]}
    (labelme / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png", "imageHeight": 40,
                                                "imageWidth": 40}))
    for out in (labelme / "metrics.json", tmp_path / "lm" / ".." / "lm" / "m.json"):
        assert main(["--weights", str(tiny_weights), "--data", f"labelme:{labelme}", "--json", str(out)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --json {out} would go among the labelme files of --data {labelme} (and be read as "
            "one); write the metrics to another folder"]
    assert sorted(p.name for p in labelme.iterdir()) == ["a.json", "a.png"]
    beside = tmp_path / "m.json"
    assert main(["--weights", str(tiny_weights), "--data", f"labelme:{labelme}", "--json", str(beside)]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 1


def test_cli_json_never_overwrites_an_image_the_data_set_reads_from_outside_its_folders(tiny_weights, tmp_path,
                                                                                         capsys):
    """Was: a labelme imagePath ``../im/a.png`` or a COCO file_name ``../im/b.png`` lies outside the folders the
    options name, so ``--json im/a.png`` replaced that image with the metrics (exit 0). Refused once the data set is
    open (its ``image_files``), through a hard link too; the image is kept."""
    images = tmp_path / "im"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.full((40, 40, 3), 90, np.uint8))
    os.link(images / "a.png", tmp_path / "link.png")
    shape = {"label": CLASSES[0], "points": [[1, 1], [30, 1], [30, 30]]}
    labelme = tmp_path / "lm"
    labelme.mkdir()
    (labelme / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "../im/a.png", "imageHeight": 40,
                                                "imageWidth": 40}))
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "../im/b.png", "width": 40, "height": 40}],
        "categories": [{"id": 1, "name": CLASSES[0]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
                         "bbox": [1, 1, 29, 29], "segmentation": [[1, 1, 30, 1, 30, 30]]}]}))
    before = {p: p.read_bytes() for p in images.iterdir()}
    cases = [(f"labelme:{labelme}", images / "a.png", images / "a.png"),
             (f"labelme:{labelme}", tmp_path / "link.png", images / "a.png"),
             (f"coco:{coco / 'ann.json'}:{coco}", images / "b.png", images / "b.png")]
    for data, output, image in cases:
        assert main(["--weights", str(tiny_weights), "--data", data, "--json", str(output)]) == 2, output
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --json {output} would overwrite the image {image} of --data {data}; choose another "
            "output path"]
    assert {p: p.read_bytes() for p in images.iterdir()} == before


def test_cli_json_given_twice_is_refused(tiny_weights, tmp_path, capsys):
    """Was: only the last one written."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["--weights", str(tiny_weights), "--json", str(first), f"--json={second}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rtseg eval: error: --json given twice ({first}, {second}); give it once (see rtseg eval --help)"]


SLIC_ONE_IMAGE = ["--engine", "slic", "--data", "synthetic:test", "--max-images", "1"]


def test_cli_json_dash_prints_the_metrics_on_stdout_and_the_table_on_stderr(tmp_path, monkeypatch, capsys):
    """``--json -`` as ``rtseg --json -``: was a file named '-' written in the current folder."""
    monkeypatch.chdir(tmp_path)
    assert main([*SLIC_ONE_IMAGE, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["engine"] == "slic" and record["images"] == 1 and "boundary_recall" in record["metrics"]
    assert "synthetic:test: 1 images, slic" in err and "boundary_recall" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_json_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    """Was: the rename replaced the link with a regular file, its target left stale."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "m.json").write_text("stale")
    link, dangling = tmp_path / "m.json", tmp_path / "new.json"
    link.symlink_to(real / "m.json")
    dangling.symlink_to(real / "new.json")  # its target is made
    for out in (link, dangling):
        assert main([*SLIC_ONE_IMAGE, "--json", str(out)]) == 0
        assert out.is_symlink() and json.loads(out.read_text())["images"] == 1
    assert sorted(p.name for p in real.iterdir()) == ["m.json", "new.json"]


def test_cli_json_that_is_a_fifo_a_device_or_a_descriptor_is_refused_before_evaluating(tmp_path, monkeypatch,
                                                                                         capsys):
    """Was: evaluated, then replaced the FIFO, the device node or (as root) the link /dev/stdout of the whole
    machine with a regular file holding the metrics. Refused in one line before the data set is opened."""
    import rtseg.eval.cli

    def opened(spec):
        raise AssertionError(f"--data {spec} opened before --json was checked")

    monkeypatch.setattr(rtseg.eval.cli, "open_dataset", opened)
    fifo, to_stdout, to_fd, loop = (tmp_path / name for name in ("f.json", "o.json", "fd.json", "loop.json"))
    os.mkfifo(fifo)
    to_stdout.symlink_to("/dev/stdout")
    to_fd.symlink_to("/proc/self/fd/1")
    loop.symlink_to(loop)
    cases = [(fifo, "is a FIFO, not a regular file (the output is written whole, by replacing the file)"),
             (to_stdout, "names an open descriptor, not a file"), (to_fd, "names an open descriptor, not a file"),
             (loop, "a symbolic link that loops")]
    node = tmp_path / "null.json"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        cases.append((node, "is a character device, not a regular file (the output is written whole, by replacing "
                            "the file)"))
    except OSError:
        pass  # (this user cannot make a device node here)
    for path, problem in cases:
        assert main([*SLIC_ONE_IMAGE, "--json", str(path)]) == 2, path
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg eval: error: --json {path}: {problem}; give --json - for the metrics on standard output, or a "
            "file path"]
    assert fifo.is_fifo() and to_stdout.is_symlink() and to_fd.is_symlink()
    assert not node.exists() or node.is_char_device()


def test_cli_json_in_a_folder_this_user_cannot_write_is_refused_before_evaluating(tmp_path):
    """Was noticed only when the metrics were written, after the whole evaluation (hours on COCO): 'cannot write
    (Permission denied)'. Now refused up front, as rtseg refuses its outputs; through a link too."""
    import shutil
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    link = tmp_path / "m.json"
    link.symlink_to(locked / "m.json")
    cmd = [sys.executable, "-m", "rtseg", "eval", *SLIC_ONE_IMAGE]
    if os.geteuid() == 0:  # root writes anywhere: without its permission override (as tests/test_entry.py does)
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: every folder is writable")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    for out, named in ((locked / "m.json", f"{locked / 'm.json'}"), (link, f"{link} -> {locked / 'm.json'}")):
        r = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and r.stderr.splitlines() == [
            f"rtseg eval: error: --json {named}: folder {locked} is not writable; choose another path"], r.stderr
    assert list(locked.iterdir()) == []


def test_cli_demo_model_notice_names_rtseg_eval(tmp_path, capsys):
    """Was 'rtseg: no --weights: …' though rtseg eval ran."""
    assert main(["--data", "synthetic:test", "--max-images", "1"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "no --weights" in line]
    assert len(notices) == 1 and notices[0].startswith("rtseg eval: no --weights: using the demo model "), notices
