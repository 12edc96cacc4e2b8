"""``rtseg eval`` for FCN (mIoU), Mask Scoring R-CNN (AP by mask score, MaskIoU correlation),
panoptic fusion (PQ / SQ / RQ) and SLIC (boundary recall, undersegmentation error, ASA).

Weights are real, untrained tiny networks saved with the engines' own save functions (panoptic's
instances: the shipped demo YOLACT); the metric paths are checked with real arrays (perfect,
shifted and permuted labels).
"""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.data.synthetic import CLASSES, SyntheticDataset, SyntheticScene
from rtseg.engines.fcn import save_fcn
from rtseg.engines.msrcnn import save_msrcnn
from rtseg.errors import ConfigError
from rtseg.engines.choose import resolve_engine
from rtseg.eval.cli import main
from rtseg.eval.coco import METRICS
from rtseg.eval.mask_scoring import SCORING_METRICS, MaskScoringEvaluator, true_mask_iou
from rtseg.eval.panoptic import panoptic_from_masks
from rtseg.eval.runners import (
    IGNORE,
    SUPERPIXEL_METRICS,
    PanopticScorer,
    class_mapping,
    engine_target,
    evaluate_semantic_engine,
    evaluate_superpixel_engine,
    remap,
    resize_sample,
    samples,
    target_lut,
)
from rtseg.eval.semantic import SemanticEvaluator, semantic_target
from rtseg.models.fcn import FCN, FcnConfig
from rtseg.models.msrcnn import MaskScoringRCNN, MsrcnnConfig
from rtseg.types import Detections, Panoptic

# engine class order differs from the data set's: the name matching must handle it
FCN_NAMES = ["background", "cross", "ring", "star", "triangle", "square", "circle"]


@pytest.fixture(scope="module")
def fcn_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = FCN(FcnConfig(arch="fcn8s", num_classes=len(FCN_NAMES), width=0.0625))
    for m in (model.score_fr, model.score_pool4, model.score_pool3):  # predict a mix of classes, not one
        torch.nn.init.normal_(m.weight, std=0.05)
    with torch.no_grad():
        model.score_fr.bias[0] = 1.0  # background about half the time
    return save_fcn(tmp_path_factory.mktemp("fcn") / "fcn.safetensors", model, FCN_NAMES)


@pytest.fixture(scope="module")
def msrcnn_weights(tmp_path_factory):
    torch.manual_seed(0)
    cfg = MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80,
                       anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20, rois_per_image=32,
                       proposals_per_image=100, box_score_thresh=0.0)
    return save_msrcnn(tmp_path_factory.mktemp("ms") / "ms.safetensors", MaskScoringRCNN(cfg), list(CLASSES))


def _one_line(err: str) -> str:
    err = err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_fcn_reports_semantic_metrics(fcn_weights, tmp_path, capsys):
    out = tmp_path / "fcn.json"
    assert main(["--weights", str(fcn_weights), "--data", "synthetic:test", "--max-images", "3",
                 "--resize", "96x72", "--json", str(out)]) == 0  # engine read from the manifest
    text = capsys.readouterr().out
    assert "synthetic:test at 96x72: 3 images, fcn" in text and "pixel_accuracy" in text and "background" in text
    record = json.loads(out.read_text())
    assert record["engine"] == "fcn" and record["images"] == 3 and record["resize"] == "96x72"
    m = record["metrics"]
    assert {"mIoU", "pixel_accuracy", "mean_accuracy", "IoU/background"} <= set(m)
    assert {k[4:] for k in m if k.startswith("IoU/")} <= set(FCN_NAMES)
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_fcn_runner_matches_name_based_pixel_accuracy(fcn_weights):
    """The runner's class-id relabelling agrees with comparing class *names* pixel by pixel."""
    import rtseg

    engine = rtseg.load("fcn", weights=str(fcn_weights))
    data = SyntheticDataset.split("test", 3, width=80, height=64)
    metrics = evaluate_semantic_engine(engine, [data[i] for i in range(3)], data.class_names)
    names_t = np.array(["background", *data.class_names])
    correct = total = 0
    for i in range(3):
        s = data[i]
        pred = np.array(engine.class_names)[engine(s.image).labels]
        correct += int((pred == names_t[semantic_target(s)]).sum())
        total += pred.size
    assert metrics["pixel_accuracy"] == pytest.approx(correct / total)
    assert 0.0 < metrics["pixel_accuracy"] < 1.0


def test_prediction_equal_to_target_gives_miou_one():
    data = SyntheticDataset.split("test", 4, width=96, height=72)
    lut = target_lut(FCN_NAMES, data.class_names)
    assert [FCN_NAMES[i] for i in lut] == ["background", *data.class_names]
    ev = SemanticEvaluator(len(FCN_NAMES), ignore_index=IGNORE)
    for i in range(4):
        t = engine_target(data[i], lut)
        ev.add(t, t)
    m = ev.summarize(FCN_NAMES)
    assert m["mIoU"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["mean_accuracy"] == 1.0
    assert sum(k.startswith("IoU/") for k in m) >= 3  # several classes present, each with IoU 1
    shifted = SemanticEvaluator(len(FCN_NAMES), ignore_index=IGNORE)
    for i in range(4):
        t = engine_target(data[i], lut)
        shifted.add(np.roll(t, 3, axis=1), t)
    assert shifted.summarize()["mIoU"] < 0.95


def test_crowd_regions_are_ignored_in_semantic_targets():
    mask = np.zeros((2, 40, 40), bool)
    mask[0, 5:20, 5:20] = True
    mask[1, 25:38, 25:38] = True
    base = Sample.from_masks(np.zeros((40, 40, 3), np.uint8), mask, [0, 1])
    crowd = Sample(image=base.image, boxes=base.boxes, class_ids=base.class_ids, masks=mask,
                   iscrowd=np.array([False, True]))
    t = engine_target(crowd, target_lut(["background", "b", "a"], ["a", "b"]))
    assert (t[mask[0]] == 2).all() and (t[mask[1]] == IGNORE).all() and (t[~mask.any(0)] == 0).all()
    ev = SemanticEvaluator(3, ignore_index=IGNORE)
    ev.add(np.where(t == IGNORE, 1, t), t)  # a wrong label on the crowd region costs nothing
    assert ev.summarize()["mIoU"] == 1.0


def test_target_lut_rejects_unknown_classes_with_objects_only():
    """"background" is always needed; a data-set class only among ``annotated`` (the classes with objects), or
    always when that is not known (None). A class without objects gets -1: no target pixel is of it."""
    with pytest.raises(ConfigError, match="do not know data-set classes 'background'"):
        target_lut(["a", "b"], ["a", "b"], annotated=())
    with pytest.raises(ConfigError, match="do not know data-set classes 'zebra'"):
        target_lut(["background", "a"], ["a", "zebra"])
    with pytest.raises(ConfigError, match="do not know data-set classes 'zebra'"):
        target_lut(["background", "a"], ["a", "zebra"], annotated=[1])
    assert target_lut(["a", "background"], ["a", "zebra"], annotated=[0]).tolist() == [1, 0, -1]


def test_fcn_takes_a_data_set_class_without_objects_and_checks_each_sample_when_not_told(fcn_weights):
    """mIoU averages over the classes in the ground truth or the prediction (:mod:`rtseg.eval.semantic`): a
    data-set class the engine lacks, without target pixels, is in neither, so the metrics are those of the data set
    without it (was: refused). Unknown up front (annotated None), each sample is checked: a non-crowd object of such
    a class is refused, a crowd region (ignored) is not."""
    import rtseg

    engine = rtseg.load("fcn", weights=str(fcn_weights))
    data = SyntheticDataset.split("test", 2, width=80, height=64)
    some = [data[0], data[1]]
    names = [*data.class_names, "zebra"]
    expected = evaluate_semantic_engine(engine, some, data.class_names)
    assert evaluate_semantic_engine(engine, some, names) == expected
    assert evaluate_semantic_engine(engine, some, names, annotated=set(data[0].class_ids.tolist())
                                    | set(data[1].class_ids.tolist())) == expected
    mask = np.zeros((1, 64, 80), bool)
    mask[0, 5:20, 5:20] = True
    zebra = Sample(image=data[0].image, boxes=masks_to_boxes(mask), class_ids=np.array([len(names) - 1]), masks=mask,
                   iscrowd=np.array([True]))
    evaluate_semantic_engine(engine, [*some, zebra], names)
    with pytest.raises(ConfigError, match="do not know data-set classes 'zebra'"):
        evaluate_semantic_engine(engine, [*some, Sample.from_masks(zebra.image, mask, zebra.class_ids)], names)


def test_cli_msrcnn_reports_ap_by_mask_score_and_correlation(msrcnn_weights, tmp_path, capsys):
    out = tmp_path / "ms.json"
    assert main(["--weights", str(msrcnn_weights), "--engine", "msrcnn", "--data", "synthetic:test",
                 "--max-images", "3", "--resize", "80x64", "--score-threshold", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 images, msrcnn" in text and "mask score" in text and "Pearson r" in text
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert record["engine"] == "msrcnn" and set(m) == set(METRICS) | set(SCORING_METRICS)
    assert m["num_detections"] > 0  # an untrained network still proposes boxes at threshold 0
    assert all(0.0 <= m[k] <= 1.0 for k in (*METRICS, "mask_AP_mask_score", "mask_AP50_mask_score",
                                             "mask_AP75_mask_score", "mean_true_iou", "mean_abs_error"))
    assert np.isnan(m["maskiou_pearson"]) or -1.0 <= m["maskiou_pearson"] <= 1.0


def _shifted_detections(sample: Sample, shifts: np.ndarray, scores: np.ndarray) -> Detections:
    masks = np.array([np.roll(m, int(k), axis=1) for m, k in zip(sample.masks, shifts)]).reshape(sample.masks.shape)
    iou = true_mask_iou(masks, sample.class_ids, sample)
    return Detections(boxes=masks_to_boxes(masks), scores=scores.astype(np.float32), class_ids=sample.class_ids,
                      image_size=sample.image_size, class_names=CLASSES,
                      mask_scores=(scores * iou).astype(np.float32), _masks=masks)


def test_mask_scoring_evaluator_on_real_masks():
    rng = np.random.default_rng(0)
    data = [SyntheticScene(41, width=160, height=120, num_frames=80).sample(i) for i in range(0, 80, 8)]
    assert sum(len(s) for s in data) >= 15
    ev = MaskScoringEvaluator(CLASSES)
    for s in data:
        shifts = rng.integers(0, 12, len(s))
        # classification scores rank the worst masks first; the mask scores (score x true IoU) fix that
        ev.add(_shifted_detections(s, shifts, 0.5 + 0.04 * shifts), s)
    m = ev.summarize()
    assert set(m) == set(METRICS) | set(SCORING_METRICS)
    assert m["maskiou_pearson"] == pytest.approx(1.0, abs=1e-5)  # predicted IoU is the true IoU here
    assert m["mean_abs_error"] == pytest.approx(0.0, abs=1e-5) and 0.2 < m["mean_true_iou"] < 1.0
    assert m["mask_AP_mask_score"] > m["mask_AP"] + 0.05
    with pytest.raises(ValueError, match="no mask_scores"):
        ev.add(Detections.empty(data[0].image_size, CLASSES), data[0])


def test_remap_keeps_mask_scores():
    s = SyntheticScene(42, width=96, height=72, num_frames=10).sample(0)
    dets = _shifted_detections(s, np.zeros(len(s)), np.linspace(0.9, 0.5, len(s)))
    data_names = tuple(reversed(CLASSES))
    out = remap(dets, class_mapping(CLASSES, data_names), data_names)
    assert [data_names[i] for i in out.class_ids] == [CLASSES[i] for i in dets.class_ids]
    np.testing.assert_array_equal(out.mask_scores, dets.mask_scores)


def test_resize_sample_scales_the_samples_own_boxes_and_keeps_every_object():
    """Only the scale changes: the sample's boxes are scaled with the image (a COCO bbox stays the annotation's,
    not the resized mask's), and an object whose mask vanishes stays, as ground truth no mask matches (were:
    boxes re-fitted to the resized masks, vanished objects dropped)."""
    big = SyntheticDataset.split("test", 1)[0]
    small = resize_sample(big, (160, 120))
    assert small.image.shape == (120, 160, 3) and small.masks.shape[1:] == (120, 160) and len(small) == len(big)
    np.testing.assert_allclose(small.boxes, big.boxes / 4, rtol=1e-6)
    mask = np.zeros((2, 40, 40), bool)
    mask[0, 1:3, 1:3] = True  # 2x2 pixels: gone at a quarter of the size
    mask[1, 8:32, 8:32] = True
    boxes = np.array([[1, 1, 3, 3], [6, 6, 34, 30]], np.float32)  # the second: a loose box, not its mask's
    s = Sample(image=np.zeros((40, 40, 3), np.uint8), boxes=boxes, class_ids=np.array([0, 1]),
               masks=mask, iscrowd=np.array([False, True]))
    r = resize_sample(s, (10, 20))
    assert r.class_ids.tolist() == [0, 1] and r.iscrowd.tolist() == [False, True] and r.image_size == (20, 10)
    assert not r.masks[0].any() and r.masks[1, 4:16, 2:8].all() and r.masks.sum() == 72
    np.testing.assert_allclose(r.boxes, [[0.25, 0.5, 0.75, 1.5], [1.5, 3, 8.5, 15]])
    assert next(iter(samples([s], 1, (10, 20)))).masks.sum() == 72


def test_engine_is_read_from_the_manifest(fcn_weights, msrcnn_weights, tmp_path):
    assert resolve_engine(str(fcn_weights), None) == "fcn"
    assert resolve_engine(str(msrcnn_weights), None) == "msrcnn"
    assert resolve_engine(str(tmp_path / "official.pth"), None) == "yolact"
    assert resolve_engine(str(fcn_weights), "fcn") == "fcn"


@pytest.mark.parametrize("engine, weights, message", [
    ("msrcnn", "fcn", "--engine msrcnn: .* holds fcn weights .*use --engine fcn or leave --engine out"),
    ("yolact", "msrcnn", "--engine yolact: .* holds msrcnn weights"),
])
def test_wrong_engine_for_the_weights_is_one_line(fcn_weights, msrcnn_weights, capsys, engine, weights, message):
    path = {"fcn": fcn_weights, "msrcnn": msrcnn_weights}[weights]
    assert main(["--weights", str(path), "--engine", engine, "--max-images", "1"]) == 2
    assert re.search(message, _one_line(capsys.readouterr().err))


_SIDE = "at most 11585 a side keeps an image within the 134,217,728 pixels rtseg reads"


@pytest.mark.parametrize("text, line", [
    ("20x10", f"--resize 20: must be an integer in [32, 11585] pixels (the width of 20x10; {_SIDE})"),
    ("160x0", f"--resize 0: must be an integer in [32, 11585] pixels (the height of 160x0; {_SIDE})"),
    ("160X31", f"--resize 31: must be an integer in [32, 11585] pixels (the height of 160X31; {_SIDE})"),
    ("160x11586", f"--resize 11586: must be an integer in [32, 11585] pixels (the height of 160x11586; {_SIDE})"),
    ("160", "--resize 160: use WIDTHxHEIGHT, each from 32 to 11585, e.g. --resize 160x120"),
    ("160x-120", "--resize 160x-120: use WIDTHxHEIGHT, each from 32 to 11585, e.g. --resize 160x120"),
    ("1.5x120", "--resize 1.5x120: use WIDTHxHEIGHT, each from 32 to 11585, e.g. --resize 160x120"),
    ("\u00b2x120", "--resize \u00b2x120: use WIDTHxHEIGHT, each from 32 to 11585, e.g. --resize 160x120"),  # was a traceback
])
def test_resize_out_of_range_reads_like_every_numeric_option(text, line):
    """A side under 32 pixels is said as rtseg.cliargs.check_range says it (was one hand-made line for all)."""
    from rtseg.eval.cli import parse_size

    with pytest.raises(ConfigError) as info:
        parse_size(text)
    assert str(info.value) == line
    assert parse_size("160x120") == (160, 120) and parse_size("32X0032") == (32, 32)


def test_cli_user_errors_for_fcn(fcn_weights, tmp_path, capsys):
    assert main(["--weights", str(fcn_weights), "--resize", "20x10", "--max-images", "1"]) == 2
    assert f"--resize 20: must be an integer in [32, 11585] pixels (the width of 20x10; {_SIDE})" in \
        _one_line(capsys.readouterr().err)
    other = save_fcn(tmp_path / "other.safetensors", FCN(FcnConfig(num_classes=3, width=0.0625)),
                     ["background", "circle", "dog"])
    assert main(["--weights", str(other), "--max-images", "1"]) == 2
    assert "do not know data-set classes 'square', 'triangle'" in _one_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def stuff_fcn_weights(tmp_path_factory):
    """A stuff-only FCN ("background", "sky"): the panoptic categories are these, then the YOLACT classes."""
    torch.manual_seed(0)
    return save_fcn(tmp_path_factory.mktemp("stuff") / "stuff.safetensors",
                    FCN(FcnConfig(num_classes=2, width=0.0625)), ["background", "sky"])


def test_cli_panoptic_reports_pq_sq_rq(stuff_fcn_weights, tmp_path, capsys):
    out = tmp_path / "pan.json"
    assert main(["--engine", "panoptic", "--semantic", str(stuff_fcn_weights), "--data", "synthetic:test",
                 "--max-images", "3", "--resize", "128x96", "--json", str(out)]) == 0  # demo YOLACT as things
    captured = capsys.readouterr()
    assert "using the demo model" in captured.err
    assert "3 images, panoptic" in captured.out and "things" in captured.out and "stuff" in captured.out
    record = json.loads(out.read_text())
    assert record["engine"] == "panoptic" and record["weights"].endswith("yolact_demo.safetensors")
    assert record["semantic"] == str(stuff_fcn_weights) and record["score_threshold"] == 0.3
    m = record["metrics"]
    assert {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "PQ/background"} <= set(m)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["PQ"] <= min(m["SQ"], m["RQ"])  # a mean of SQ_c x RQ_c over the categories SQ and RQ average
    assert m["PQ_th"] > 0.2  # the demo model finds the synthetic shapes


def _engine_panoptic(sample: Sample, engine_names: list[str], data_names) -> Panoptic:
    """The ground truth of ``sample`` as an engine with categories ``engine_names`` would predict it."""
    cats = [engine_names.index(data_names[c]) for c in sample.class_ids]
    assert engine_names[0] == "background"
    return panoptic_from_masks(sample.masks, cats, engine_names)


def test_panoptic_scorer_perfect_prediction_unknown_category_and_crowd():
    data = SyntheticDataset.split("test", 3, width=96, height=72)
    engine_names = ["background", "sky", *reversed(data.class_names)]  # another order, and a category not in the data
    things = range(2, len(engine_names))
    perfect = PanopticScorer(engine_names, things, data.class_names)
    for i in range(3):
        perfect.add(_engine_panoptic(data[i], engine_names, data.class_names), data[i])
    m = perfect.summarize()
    assert m["PQ"] == m["SQ"] == m["RQ"] == m["PQ_th"] == m["PQ_st"] == 1.0
    assert sum(k.startswith("PQ/") for k in m) >= 3 and "PQ/sky" not in m
    sky = PanopticScorer(engine_names, things, data.class_names)  # the background predicted as "sky"
    for i in range(3):
        pred = _engine_panoptic(data[i], engine_names, data.class_names)
        segments = [{**s, "category_id": 1} if s["category_id"] == 0 else s for s in pred.segments]
        sky.add(Panoptic(ids=pred.ids, segments=segments, class_names=engine_names), data[i])
    m = sky.summarize()
    assert m["PQ_th"] == 1.0 and m["PQ_st"] == 0.0 and m["PQ/sky"] == 0.0 and m["PQ/background"] == 0.0
    assert sky.evaluator.fp[sky.names.index("sky")] == 3 and sky.evaluator.fn[0] == 3
    # a crowd region (panopticapi rules, tests/test_eval_panoptic_crowd.py): never a false negative, but its
    # pixels stay in the union of the background segment that covers it
    mask = np.zeros((2, 40, 40), bool)
    mask[0, 5:20, 5:20] = True
    mask[1, 25:38, 25:38] = True
    crowd = Sample(image=np.zeros((40, 40, 3), np.uint8), boxes=masks_to_boxes(mask), class_ids=np.array([0, 1]),
                   masks=mask, iscrowd=np.array([False, True]))
    scorer = PanopticScorer(["background", "a", "b"], [1, 2], ["a", "b"])
    scorer.add(panoptic_from_masks(mask[:1], [1], ["background", "a", "b"]), crowd)  # crowd pixels: background
    m = scorer.summarize()
    assert scorer.evaluator.fn.sum() == 0 and scorer.evaluator.fp.sum() == 0 and m["PQ/a"] == 1.0
    assert m["PQ/background"] == pytest.approx((40 * 40 - 15 * 15 - 13 * 13) / (40 * 40 - 15 * 15))


def test_panoptic_scorer_takes_a_data_set_class_without_objects():
    """A data-set class the engine lacks and no ground truth holds has no TP, FP or FN: PQ leaves it out, as
    every category without them (was: refused); one with objects (``annotated``) is still refused."""
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 5:20, 5:20] = True
    sample = Sample.from_masks(np.zeros((40, 40, 3), np.uint8), mask, [0])
    with pytest.raises(ConfigError, match="do not know data-set classes 'zebra'"):
        PanopticScorer(["background", "a"], [1], ["a", "zebra"], annotated=[0, 1])
    scorer = PanopticScorer(["background", "a"], [1], ["a", "zebra"], annotated=[0])
    scorer.add(panoptic_from_masks(mask, [1], ["background", "a"]), sample)
    m = scorer.summarize()
    assert m["PQ"] == m["PQ_th"] == m["PQ_st"] == 1.0 and "PQ/zebra" not in m


def test_cli_fcn_and_panoptic_take_a_data_set_class_without_objects(fcn_weights, stuff_fcn_weights, tmp_path,
                                                                      capsys):
    """A COCO category no evaluated image holds an object of, unknown to the weights: FCN and panoptic evaluate
    (were: refused), as instance AP does; one with objects is refused before the first image."""
    from rtseg.data.export import export_coco

    ann = export_coco(SyntheticScene(36, num_frames=4, width=96, height=72), tmp_path / "coco", every=2)
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 99, "name": "zebra"})
    ann.write_text(json.dumps(data))
    fcn = ["--weights", str(fcn_weights), "--data", f"coco:{ann}:{ann.parent}"]
    panoptic = ["--engine", "panoptic", "--semantic", str(stuff_fcn_weights), "--data", f"coco:{ann}:{ann.parent}"]
    for args in (fcn, panoptic):
        assert main(args) == 0, capsys.readouterr().err
        assert "2 images" in capsys.readouterr().out
    data["annotations"][-1]["category_id"] = 99
    ann.write_text(json.dumps(data))
    (ann.parent / data["images"][0]["file_name"]).write_bytes(b"not an image")  # any read of it fails
    for args in (fcn, panoptic):
        assert main(args) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]  # (panoptic: after the demo model's notice)
        assert error.startswith("rtseg eval: error: the weights do not know data-set classes 'zebra'")


def test_cli_slic_reports_superpixel_metrics(tmp_path, capsys):
    out = tmp_path / "slic.json"
    assert main(["--engine", "slic", "--segments", "40", "--compactness", "20", "--data", "synthetic:test",
                 "--max-images", "3", "--resize", "96x72", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 images, slic" in text and "undersegmentation_error" in text and "segments/image" in text
    record = json.loads(out.read_text())
    assert record["engine"] == "slic" and record["segments"] == 40 and record["compactness"] == 20.0
    m = record["metrics"]
    assert set(m) == set(SUPERPIXEL_METRICS)
    assert 0.0 < m["boundary_recall"] <= 1.0 and 0.0 <= m["undersegmentation_error"] < 1.0 and 0.0 < m["asa"] <= 1.0
    assert 10 <= m["num_segments"] <= 80


def test_cli_slic_on_images_without_instances_is_refused(tmp_path, capsys):
    """Nothing to recall: was boundary recall 100 %, UE 0 %, ASA 100 % and exit 0 (a perfect score of nothing)."""
    folder = tmp_path / "lm"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((48, 64, 3), 90, np.uint8))
    (folder / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "a.png", "imageHeight": 48,
                                               "imageWidth": 64}))
    assert main(["--engine", "slic", "--segments", "20", "--data", f"labelme:{folder}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"rtseg eval: error: --data labelme:{folder}: the 1 images hold no (non-crowd) instances, so "
                   "boundary recall is undefined (and undersegmentation error and ASA trivially perfect); evaluate "
                   "on annotated images")
    empty = Sample.from_masks(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8), bool), np.zeros(0, np.int64))
    import rtseg

    assert np.isnan(evaluate_superpixel_engine(rtseg.load("slic", n_segments=4), [empty])["boundary_recall"])


def _labelme_image(folder, name: str, shapes: list[dict]) -> None:
    """A 64×48 picture (a red square on noise, the same for each ``name``) and its labelme JSON with ``shapes`` in
    ``folder``."""
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.rectangle(image, (10, 8), (40, 36), (0, 0, 255), -1)
    cv2.imwrite(str(folder / f"{name}.png"), image)
    (folder / f"{name}.json").write_text(json.dumps({"shapes": shapes, "imagePath": f"{name}.png", "imageHeight": 48,
                                                     "imageWidth": 64}))


def test_cli_slic_leaves_images_without_instances_out_of_its_means_and_says_how_many(tmp_path, capsys):
    """An image without instances was averaged in as boundary recall 100 %, UE 0, ASA 100 % (a perfect score of
    nothing; the README said such images are left out)."""
    square = {"label": "square", "points": [[10, 8], [40, 36]], "shape_type": "rectangle", "group_id": None,
              "flags": {}}
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    for folder in (alone, mixed):
        folder.mkdir()
        _labelme_image(folder, "a", [square])
    _labelme_image(mixed, "b", [])  # same picture, nothing annotated
    records = {}
    for folder in (alone, mixed):
        out = tmp_path / f"{folder.name}.json"
        assert main(["--engine", "slic", "--segments", "40", "--data", f"labelme:{folder}", "--json", str(out)]) == 0
        records[folder.name] = (json.loads(out.read_text()), capsys.readouterr().out)
    (one, one_table), (two, two_table) = records["alone"], records["mixed"]
    assert one["images"] == 1 and two["images"] == 2
    assert 0.0 < one["metrics"]["boundary_recall"] < 1.0 and one["metrics"]["asa"] < 1.0  # (a square on noise)
    assert two["metrics"] == {**one["metrics"], "num_images_left_out": 1.0}
    assert one["metrics"]["num_images_left_out"] == 0.0 and "left out" not in one_table
    assert ("left out 1 image without instances (no boundary to recall): the means are over the other images"
            in two_table.splitlines())


def test_superpixel_runner_more_segments_follow_more_boundaries():
    import rtseg

    data = SyntheticDataset.split("test", 3, width=96, height=72)
    few, many = (evaluate_superpixel_engine(rtseg.load("slic", n_segments=k), [data[i] for i in range(3)])
                 for k in (4, 150))
    assert few["num_segments"] < many["num_segments"]
    assert few["boundary_recall"] < many["boundary_recall"] and few["asa"] < many["asa"]


@pytest.mark.parametrize("args, message", [
    (["--engine", "slic", "--weights", "{fcn}"], "--engine slic takes no --weights (superpixels need no model); drop"),
    (["--weights", "{fcn}", "--semantic", "{fcn}"], "--semantic applies to --engine panoptic only"),
    (["--engine", "panoptic"], "--engine panoptic needs --semantic FCN_WEIGHTS"),
    (["--engine", "panoptic", "--semantic", "{missing}"], "--semantic {missing} not found; give the weights file"),
    (["--engine", "panoptic", "--weights", "{fcn}", "--semantic", "{fcn}"],
     "holds fcn weights; give the weights of an instance engine"),
    (["--segments", "50"], "--segments / --compactness apply to --engine slic only, not yolact"),
    (["--weights", "{fcn}", "--compactness", "5"], "--segments / --compactness apply to --engine slic only, not fcn"),
    (["--engine", "slic", "--score-threshold", "0.5"], "--score-threshold applies to yolact, msrcnn and panoptic only"),
    (["--engine", "slic", "--segments", "0"], "--segments 0: must be an integer >= 1"),
    (["--engine", "msrcnn"], "--engine msrcnn needs --weights PATH"),
    # a folder of weights is no input folder: was "--json … would overwrite the input {dir}/m.json"
    (["--weights", "{dir}", "--json", "{dir}/m.json"], "--weights {dir} is a folder; give the weights file"),
    (["--engine", "panoptic", "--semantic", "{dir}", "--json", "{dir}/m.json"], "--semantic {dir} is a folder"),
])
def test_cli_engine_option_errors_are_one_line(fcn_weights, tmp_path, capsys, args, message):
    names = {"fcn": fcn_weights, "missing": tmp_path / "none.safetensors", "dir": tmp_path}
    (tmp_path / "m.json").write_text("{}")
    assert main([*[a.format(**names) for a in args], "--max-images", "1"]) == 2
    assert message.format(**names) in _one_line(capsys.readouterr().err)
