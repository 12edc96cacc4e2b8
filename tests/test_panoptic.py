"""Panoptic fusion, panopticapi writer, and PQ/SQ/RQ cross-checked against torchmetrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rtseg
from rtseg.data.synthetic import CLASSES, SyntheticScene
from rtseg.engines.fcn import FcnEngine
from rtseg.engines.panoptic import PanopticEngine, fuse_panoptic, id_to_rgb, read_panoptic, rgb_to_id, write_panoptic
from rtseg.engines.yolact import YolactEngine
from rtseg.errors import ConfigError
from rtseg.eval.panoptic import PanopticEvaluator, panoptic_from_instances
from rtseg.models.fcn import FcnConfig
from rtseg.models.yolact import YolactConfig
from rtseg.types import Detections, Panoptic, SemanticMap

NAMES = ["background", *CLASSES]


def _dets(masks: list[np.ndarray], scores: list[float], classes: list[int], mask_scores=None) -> Detections:
    m = np.array(masks, bool)
    boxes = np.array([[0, 0, m.shape[2], m.shape[1]]] * len(masks), np.float32)
    return Detections(boxes=boxes, scores=np.array(scores, np.float32), class_ids=np.array(classes, np.int64),
                      image_size=m.shape[1:], class_names=CLASSES, _masks=m,
                      mask_scores=None if mask_scores is None else np.array(mask_scores, np.float32))


def test_fusion_order_overlap_and_stuff_area():
    h, w = 20, 20
    a = np.zeros((h, w), bool); a[2:10, 2:10] = True     # 64 px, best
    b = np.zeros((h, w), bool); b[6:14, 6:14] = True     # 64 px, 16 overlap with a: kept, 48 px
    c = np.zeros((h, w), bool); c[3:9, 3:9] = True       # inside a: skipped
    low = np.zeros((h, w), bool); low[15:18, 15:18] = True  # below the score threshold: dropped
    sem = np.zeros((h, w), np.int64); sem[:, 17:] = 3     # stuff 3 (60 px) but partly covered
    sem[0, :] = 2                                         # stuff 2: 20 px, below min area
    dets = _dets([b, a, c, low], [0.8, 0.9, 0.7, 0.1], [1, 0, 2, 0])
    pan = fuse_panoptic(dets, SemanticMap(labels=sem, class_names=NAMES), thing_category=np.arange(6) + 1,
                        stuff_categories=[0, 2, 3], stuff_min_area=25, score_threshold=0.3)
    segs = {s["id"]: s for s in pan.segments}
    assert [s["category_id"] for s in pan.segments] == [1, 2, 0, 3]  # a (class 0 → cat 1), b, stuff 0, stuff 3
    assert (pan.ids[a] == 1).all() and segs[1]["area"] == 64 and segs[1]["score"] == pytest.approx(0.9)
    assert segs[2]["area"] == 48 and (pan.ids[b & ~a] == 2).all()
    assert not segs[3]["isthing"] and not segs[4]["isthing"]
    assert (pan.ids[0, :] == 0).all()  # stuff 2 (20 px) is below the minimum area: void
    assert segs[4]["area"] == 19 * 3 and (pan.ids[low] != 0).all()  # the dropped instance's pixels went to stuff
    assert sum(s["area"] for s in pan.segments) == (pan.ids > 0).sum()
    # mask scores (MS R-CNN) take precedence over class scores for the paste order
    flipped = _dets([b, a], [0.8, 0.9], [1, 0], mask_scores=[0.9, 0.5])
    pan2 = fuse_panoptic(flipped, SemanticMap(labels=sem), thing_category=np.arange(6) + 1, stuff_categories=[])
    assert pan2.segments[0]["category_id"] == 2 and pan2.segments[1]["area"] == 48


def test_pq_by_hand_with_void():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1  # thing, category 1, 50 px
    gt[:, 5:9] = 2  # stuff, category 0, 40 px; column 9 is void (id 0)
    pred = np.zeros_like(gt)
    pred[:, :6] = 7  # category 1: IoU 50/60 with gt 1
    pred[:, 6:] = 8  # category 0: 30 px in gt 2 and 10 void px → union 40 + 40 - 30 - 10 = 40, IoU 0.75
    pred[0, 0] = 9  # a 1-px false positive of category 1 (eats one px of gt 1: IoU 49/60)
    gp = Panoptic(ids=gt, segments=[{"id": 1, "category_id": 1}, {"id": 2, "category_id": 0}])
    pp = Panoptic(ids=pred, segments=[{"id": 7, "category_id": 1}, {"id": 8, "category_id": 0},
                                      {"id": 9, "category_id": 1}])
    ev = PanopticEvaluator(2, things=[1])
    ev.add(pp, gp)
    m = ev.summarize(["bg", "thing"])
    assert m["SQ_th"] == pytest.approx(49 / 60) and m["RQ_th"] == pytest.approx(1 / 1.5)
    assert m["PQ_st"] == pytest.approx(0.75) and m["RQ_st"] == 1.0
    assert m["PQ"] == pytest.approx((49 / 60 / 1.5 + 0.75) / 2)
    with pytest.raises(ValueError, match="no segment entry"):
        ev.add(Panoptic(ids=pred, segments=[]), gp)


def _perturb(gt: Panoptic, rng: np.random.Generator) -> Panoptic:
    """A plausible, fully labelled prediction: shifted/dropped/relabelled things over a background stuff."""
    ids = np.full(gt.ids.shape, 1000, np.int64)
    segs = [{"id": 1000, "category_id": 0, "isthing": False}]
    for s in gt.segments:
        if not s["isthing"] or rng.random() < 0.15:
            continue
        mask = np.roll(gt.ids == s["id"], tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        cat = s["category_id"] if rng.random() > 0.15 else int(rng.integers(1, 7))
        ids[mask] = s["id"]
        segs.append({"id": s["id"], "category_id": cat, "isthing": True})
    if rng.random() < 0.5:  # a false positive blob
        y, x = rng.integers(0, gt.ids.shape[0] - 10), rng.integers(0, gt.ids.shape[1] - 10)
        ids[y:y + 10, x:x + 10] = 999
        segs.append({"id": 999, "category_id": int(rng.integers(1, 7)), "isthing": True})
    present = set(np.unique(ids).tolist())
    return Panoptic(ids=ids, segments=[s for s in segs if s["id"] in present])


def _as_tm(p: Panoptic) -> torch.Tensor:
    cat = np.zeros_like(p.ids)
    for s in p.segments:
        cat[p.ids == s["id"]] = s["category_id"]
    return torch.from_numpy(np.stack([cat, p.ids], -1))


def test_pq_matches_torchmetrics_on_synthetic():
    from torchmetrics.detection import PanopticQuality

    scene = SyntheticScene(3, width=120, height=90, num_frames=60)
    rng = np.random.default_rng(0)
    ours = PanopticEvaluator(len(NAMES), things=range(1, 7))
    tm = PanopticQuality(things=set(range(1, 7)), stuffs={0}, return_sq_and_rq=True, return_per_class=False)
    for i in range(0, 60, 6):
        img, inst = scene.frame(i)
        gt = panoptic_from_instances(inst, img.shape[:2], NAMES)
        pred = _perturb(gt, rng)
        ours.add(pred, gt)
        tm.update(_as_tm(pred)[None], _as_tm(gt)[None])
    m = ours.summarize(NAMES)
    pq, sq, rq = tm.compute().tolist()
    assert 0.2 < m["PQ"] < 0.95  # a non-trivial case
    assert m["PQ"] == pytest.approx(pq, abs=1e-5) and m["SQ"] == pytest.approx(sq, abs=1e-5)
    assert m["RQ"] == pytest.approx(rq, abs=1e-5)


def test_panopticapi_writer_roundtrip(tmp_path):
    ids = np.array([[0, 1, 300], [70000, 1, 1]], np.int64)
    assert (rgb_to_id(id_to_rgb(ids)) == ids).all()
    assert id_to_rgb(np.array([[1 + 2 * 256 + 3 * 65536]])).tolist() == [[[1, 2, 3]]]
    scene = SyntheticScene(2, width=64, height=48, num_frames=10)
    pans = [panoptic_from_instances(inst, img.shape[:2], NAMES) for img, inst in (scene.frame(0), scene.frame(9))]
    path = write_panoptic(tmp_path / "pan", pans, image_ids=[5, 6])
    data = json.loads(path.read_text())
    assert [a["file_name"] for a in data["annotations"]] == ["000000000005.png", "000000000006.png"]
    info = data["annotations"][0]["segments_info"][0]
    assert set(info) == {"id", "category_id", "iscrowd", "bbox", "area"}
    back = read_panoptic(path)
    for a, b in zip(pans, back):
        np.testing.assert_array_equal(a.ids, b.ids)
        assert [(s["id"], s["category_id"], s["area"]) for s in a.segments] == \
               [(s["id"], s["category_id"], s["area"]) for s in b.segments]


@pytest.mark.parametrize("image_ids, message", [
    ([5], "1 image_ids for 2 predictions"),  # was: the second prediction dropped silently
    ([5, 6, 7], "3 image_ids for 2 predictions"),
    (["a", "b"], r"image_ids\[0\] is 'a'; COCO image ids are integers >= 0"),  # was: Unknown format code 'd'
    ([5, True], r"image_ids\[1\] is True"),
    ([5, -1], r"image_ids\[1\] is -1"),
    ([5, 5], "image id 5 is given twice"),  # was: one PNG written over, two annotations naming it
])
def test_panopticapi_writer_refuses_bad_image_ids_before_writing(tmp_path, image_ids, message):
    pan = Panoptic(ids=np.zeros((4, 4), np.int64), segments=[], class_names=("a",))
    with pytest.raises(ConfigError, match=f"^write_panoptic: {message}"):
        write_panoptic(tmp_path / "pan", [pan, pan], image_ids=image_ids)
    assert not (tmp_path / "pan").exists()


def test_panopticapi_writer_takes_predictions_from_a_generator(tmp_path):
    """Checking the ids' count took len() of the predictions: a generator was a TypeError traceback."""
    pan = Panoptic(ids=np.zeros((4, 4), np.int64), segments=[], class_names=("a",))
    path = write_panoptic(tmp_path, (p for p in [pan, pan]), image_ids=[3, 4])
    assert [a["image_id"] for a in json.loads(path.read_text())["annotations"]] == [3, 4]


def test_panopticapi_writer_takes_numpy_image_ids(tmp_path):
    pan = Panoptic(ids=np.zeros((4, 4), np.int64), segments=[], class_names=("a",))
    path = write_panoptic(tmp_path, [pan, pan], image_ids=np.array([7, 8]))  # was: int64 is not JSON serializable
    assert [a["image_id"] for a in json.loads(path.read_text())["annotations"]] == [7, 8]


def test_panopticapi_writer_refuses_predictions_of_other_class_names_before_writing(tmp_path):
    """Category ids index the class names: predictions of two engines gave one id two names (the last one written
    won in ``categories``, the other prediction's segments then named wrongly)."""
    ids = np.ones((4, 4), np.int64)
    first, second = (Panoptic(ids=ids, segments=[{"id": 1, "category_id": 1, "isthing": False, "area": 16}],
                              class_names=names) for names in (("background", "sky"), ("background", "road")))
    path = write_panoptic(tmp_path / "one", [first, first])
    assert json.loads(path.read_text())["categories"] == [{"id": 1, "name": "sky", "isthing": 0}]
    with pytest.raises(ConfigError, match=r"^write_panoptic: predictions\[1\] has other class_names than "
                                          r"predictions\[0\]; category ids index the class names"):
        write_panoptic(tmp_path / "two", [first, second])
    assert not (tmp_path / "two").exists()


def test_engine_yolact_plus_fcn_and_overlay():
    torch.manual_seed(0)
    yolact = YolactEngine.from_config(
        YolactConfig(backbone="resnet18", num_classes=6, input_size=128, fpn_channels=32, num_prototypes=8),
        class_names=list(CLASSES), score_threshold=0.0)
    fcn = FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=7, width=0.0625), class_names=NAMES)
    eng = rtseg.load("panoptic", instances=yolact, semantic=fcn, score_threshold=0.0, stuff_min_area=1)
    assert eng.class_names == tuple(NAMES) and eng.stuff_categories == [0]
    img = SyntheticScene(3, width=96, height=72, num_frames=1).frame(0)[0]
    out = eng([img, img])
    assert len(out) == 2 and isinstance(out[0], Panoptic) and out[0].ids.shape == (72, 96)
    dets = yolact(img)
    assert out[0].ids.max() >= 1 and sum(s["isthing"] for s in out[0].segments) <= len(dets)
    assert (out[0].ids > 0).all()  # background stuff fills every pixel no instance took
    drawn = rtseg.annotate(img, out[0])
    assert drawn.shape == img.shape
    with pytest.raises(ConfigError, match="needs instances"):
        rtseg.load("panoptic")


def test_stuff_only_fcn_with_a_things_detector():
    """Instance classes the FCN does not know become categories after the FCN's (were a ConfigError)."""
    torch.manual_seed(0)
    yolact = YolactEngine.from_config(
        YolactConfig(backbone="resnet18", num_classes=6, input_size=64, fpn_channels=16, num_prototypes=4),
        class_names=list(CLASSES), score_threshold=0.0)
    stuff = ["background", "sky", "circle"]  # shares one name with the detector
    fcn = FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=3, width=0.0625), class_names=stuff)
    eng = PanopticEngine(instances=yolact, semantic=fcn, score_threshold=0.0, stuff_min_area=1)
    names = [*stuff, *[c for c in CLASSES if c != "circle"]]
    assert eng.class_names == tuple(names) and eng.stuff_categories == [0, 1]
    assert eng.thing_category.tolist() == [names.index(c) for c in CLASSES]
    img = SyntheticScene(3, width=64, height=48, num_frames=1).frame(0)[0]
    pan = eng(img)
    things = [s for s in pan.segments if s["isthing"]]
    assert pan.class_names == tuple(names) and things
    assert all(pan.class_names[s["category_id"]] in CLASSES for s in things)
    assert all(s["category_id"] in (0, 1) for s in pan.segments if not s["isthing"])
    assert rtseg.annotate(img, pan).shape == img.shape


def test_load_by_paths_with_msrcnn(tmp_path):
    from rtseg.engines.fcn import save_fcn
    from rtseg.engines.msrcnn import MsrcnnEngine, save_msrcnn
    from rtseg.models.msrcnn import MsrcnnConfig

    torch.manual_seed(0)
    fcn = FcnEngine.from_config(FcnConfig(arch="fcn16s", num_classes=7, width=0.0625), class_names=NAMES)
    ms = MsrcnnEngine.from_config(MsrcnnConfig(num_classes=6, backbone="resnet18", min_size=64, max_size=80,
                                               proposals_per_image=50), class_names=list(CLASSES))
    fp = save_fcn(tmp_path / "fcn.safetensors", fcn.model, NAMES)
    mp = save_msrcnn(tmp_path / "ms.safetensors", ms.model, list(CLASSES))
    eng = rtseg.load("panoptic", instances=("msrcnn", str(mp)), semantic=str(fp), score_threshold=0.0)
    img = SyntheticScene(4, width=80, height=64, num_frames=1).frame(0)[0]
    pan = eng(img)
    assert isinstance(pan, Panoptic) and pan.ids.shape == (64, 80)
    ids = set(np.unique(pan.ids).tolist()) - {0}
    assert ids == {s["id"] for s in pan.segments}
    with pytest.raises(ConfigError, match="takes no weights"):
        rtseg.load("panoptic", "x.pth", instances=eng.instances, semantic=eng.semantic)


def test_yolact_instances_run_on_the_backend_given(tmp_path, monkeypatch):
    """``rtseg.load("panoptic", instances=("yolact", PATH), ..., backend="onnx")`` was refused (unknown option): the
    YOLACT part now loads on that backend (the FCN runs eager, as always) and gives the eager engine's panoptic
    segmentation; other instances refuse it before loading (tests/test_engine_options.py)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rtseg.engines.fcn import save_fcn
    from rtseg.models.yolact import Yolact
    from rtseg.weights import save_yolact

    monkeypatch.setenv("RTSEG_ENGINE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=6, input_size=64, fpn_channels=16, num_prototypes=4)
    yp = str(save_yolact(tmp_path / "yolact.safetensors", Yolact(cfg), list(CLASSES)))
    fcn = FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=7, width=0.0625), class_names=NAMES)
    fp = str(save_fcn(tmp_path / "fcn.safetensors", fcn.model, NAMES))
    options = {"instances": ("yolact", yp), "semantic": fp, "score_threshold": 0.0, "stuff_min_area": 1}
    onnx, eager = rtseg.load("panoptic", backend="onnx", **options), rtseg.load("panoptic", **options)
    assert (onnx.backend.name, eager.backend.name) == ("onnx", "eager")
    assert list((tmp_path / "cache").glob("yolact-*.onnx"))
    img = SyntheticScene(3, width=80, height=64, num_frames=1).frame(0)[0]
    got, want = onnx(img), eager(img)
    assert sum(s["isthing"] for s in want.segments) > 0
    assert [s["category_id"] for s in got.segments] == [s["category_id"] for s in want.segments]
    assert (got.ids == want.ids).mean() > 0.999


@pytest.fixture(scope="module")
def tiny():
    """(yolact, fcn) engines with matching classes, random weights."""
    torch.manual_seed(0)
    yolact = YolactEngine.from_config(
        YolactConfig(backbone="resnet18", num_classes=6, input_size=64, fpn_channels=16, num_prototypes=4),
        class_names=list(CLASSES))
    return yolact, FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=7, width=0.0625), class_names=NAMES)


def test_wrong_engines_are_refused_when_loading(tiny, tmp_path):
    """Each was accepted and crashed on the first frame with an AttributeError."""
    from rtseg.engines.fcn import save_fcn

    yolact, fcn = tiny
    fp = str(save_fcn(tmp_path / "fcn.safetensors", fcn.model, NAMES))
    pair = "is not a \\(name, weights\\) pair with name one of yolact, msrcnn and a weights path"
    for instances, semantic, message in [
        (("fcn", fp), fp, pair), (("slic", None), fp, pair), (("yolact",), fp, pair),
        (fcn, fcn, "instances= must be an engine producing Detections .* got FcnEngine"),
        (rtseg.load("slic"), fcn, "got SlicEngine"),
        (yolact, yolact, "semantic= must be an FCN engine or an FCN weights path, got YolactEngine"),
        (yolact, 123, "semantic= must be an FCN engine or an FCN weights path, got int"),
    ]:
        with pytest.raises(ConfigError, match=f"^panoptic: .*{message}"):
            rtseg.load("panoptic", instances=instances, semantic=semantic)
    with pytest.raises(ConfigError, match="unknown device 'mps'"):
        rtseg.load("panoptic", instances=yolact, semantic=fcn, device="mps")


@pytest.mark.parametrize("options, message", [
    ({"score_threshold": float("nan")}, "score_threshold must be a number in \\[0, 1\\], got nan"),  # dropped all
    ({"overlap_threshold": 5}, "overlap_threshold must be a number in \\[0, 1\\], got 5"),
    ({"stuff_min_area": -1}, "stuff_min_area must be an integer >= 0, got -1"),
    ({"stuff_min_area": 2.5}, "stuff_min_area must be an integer >= 0, got 2.5"),
    ({"stuff_classes": 5}, "stuff_classes must be a class name or a list of class names, got 5"),
])
def test_bad_thresholds_are_config_errors(tiny, options, message):
    with pytest.raises(ConfigError, match=f"^panoptic: {message}"):
        PanopticEngine(instances=tiny[0], semantic=tiny[1], **options)


def test_one_stuff_class_name_as_a_string(tiny):
    """A str is one class name (was split into characters: 'background' -> 'b', 'a', ...)."""
    eng = PanopticEngine(instances=tiny[0], semantic=tiny[1], stuff_classes="background")
    assert eng.stuff_categories == [0]
    with pytest.raises(ConfigError, match="stuff classes \\['backgroun'\\] are not semantic classes"):
        PanopticEngine(instances=tiny[0], semantic=tiny[1], stuff_classes="backgroun")


def test_a_custom_instance_engine_returning_no_detections_is_named(tiny):
    class SemanticAsInstances:  # satisfies the Engine protocol, but returns semantic maps
        class_names, device = tiny[0].class_names, "cpu"

        def __call__(self, frames):
            return tiny[1](frames)

        def warmup(self) -> None:
            pass

    eng = PanopticEngine(instances=SemanticAsInstances(), semantic=tiny[1])
    with pytest.raises(ConfigError, match="the instances engine returned SemanticMap, expected Detections"):
        eng(np.zeros((8, 8, 3), np.uint8))
