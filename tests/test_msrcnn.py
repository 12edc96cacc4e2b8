"""Mask Scoring R-CNN: MaskIoU head shapes, training targets, losses, engine API and weights I/O."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import rtseg
from rtseg.data.synthetic import CLASSES, SyntheticDataset
from rtseg.engines.msrcnn import MsrcnnEngine, rescored, save_msrcnn
from rtseg.errors import ConfigError, WeightsError
from rtseg.models.msrcnn import MaskIoUHead, MaskScoringRCNN, MsrcnnConfig, maskiou_targets
from rtseg.eval.mask_scoring import true_mask_iou
from rtseg.train.msrcnn_trainer import MsrcnnTrainConfig, train_msrcnn

TINY = MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80,
                    anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20,
                    rois_per_image=32, proposals_per_image=100)


def test_maskiou_head_architecture():
    head = MaskIoUHead(num_classes=7)
    convs = [m for m in head.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (257, 256, (3, 3), (1, 1)), (256, 256, (3, 3), (1, 1)), (256, 256, (3, 3), (1, 1)), (256, 256, (3, 3), (2, 2))]
    fcs = [m for m in head.fcs if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256 * 7 * 7, 1024), (1024, 1024), (1024, 7)]
    assert head(torch.randn(3, 256, 14, 14), torch.rand(3, 1, 28, 28)).shape == (3, 7)


def test_maskiou_target_accounts_for_gt_outside_the_box():
    gt = torch.zeros(1, 64, 64, dtype=torch.uint8)
    gt[0, 16:48, 16:48] = 1  # a 32x32 square
    m = 28
    # the proposal covers exactly the left half of the square; the prediction fills the whole box
    box = torch.tensor([[16.0, 16.0, 32.0, 48.0]])
    logits = torch.full((1, 3, m, m), 10.0)  # class 2 predicts "all inside the box"
    iou = maskiou_targets(logits, torch.tensor([2]), box, gt, torch.tensor([0]))
    # inside the box IoU would be 1; with the GT's outside half counted, I = half of GT, union = GT -> 0.5
    assert iou.item() == pytest.approx(0.5, abs=0.03)
    full = maskiou_targets(logits, torch.tensor([2]), torch.tensor([[16.0, 16.0, 48.0, 48.0]]), gt, torch.tensor([0]))
    assert full.item() == pytest.approx(1.0, abs=0.03)
    empty = maskiou_targets(torch.full((1, 3, m, m), -10.0), torch.tensor([2]), box, gt, torch.tensor([0]))
    assert empty.item() == 0.0


def test_true_mask_iou_matches_same_class_only():
    s = SyntheticDataset.split("val", 1, width=64, height=48)[0]
    assert len(s) > 0
    ious = true_mask_iou(s.masks, s.class_ids, s)
    np.testing.assert_allclose(ious, 1.0)
    wrong = true_mask_iou(s.masks, (s.class_ids + 1) % len(CLASSES), s)
    assert (wrong < 1.0).all()


def _tiny_engine(**options) -> MsrcnnEngine:
    torch.manual_seed(0)
    return MsrcnnEngine.from_config(TINY, class_names=list(CLASSES), **options)


def _train_data() -> SyntheticDataset:
    return SyntheticDataset.split("train", 2, width=80, height=64, max_objects=3)


#: The training run the tests below compare against or start from: 4 steps whose warm-up (3 steps) is still under
#: way at step 2, so a resume that lost the warm-up state would show.
TRAIN_CFG = MsrcnnTrainConfig(steps=4, batch_size=2, lr=0.01, warmup=3)


@pytest.fixture(scope="module")
def whole_run():
    """(engine, loss terms of every step) of the uninterrupted 4-step run, trained once for the module (the
    engine's score threshold 0.0 only matters at inference). Tests read it and run inference; none trains it."""
    data = _train_data()
    engine = _tiny_engine(score_threshold=0.0)
    return engine, train_msrcnn(engine, data, TRAIN_CFG, log=False)


@pytest.fixture(scope="module")
def partial_checkpoint(tmp_path_factory):
    """The checkpoint of the same run stopped after 2 of its 4 steps (an unfinished run), written once for the
    module; copy it before resuming from it (a resumed run writes its checkpoint back)."""
    data, ckpt = _train_data(), tmp_path_factory.mktemp("ms") / "ms.train" / "checkpoint.pth"
    train_msrcnn(_tiny_engine(), data, replace(TRAIN_CFG, steps=2), log=False, checkpoint=ckpt)
    return ckpt


def test_resumed_training_equals_the_uninterrupted_run(tmp_path, whole_run, partial_checkpoint):
    data, cfg, ckpt = _train_data(), TRAIN_CFG, tmp_path / "ckpt.pth"
    whole, whole_hist = whole_run
    ckpt.write_bytes(partial_checkpoint.read_bytes())  # 2 of the 4 steps, with checkpoint=
    torch.manual_seed(123)  # the checkpoint's random state (RPN / RoI sampling) must win
    resumed = _tiny_engine()
    hist = train_msrcnn(resumed, data, cfg, log=False, checkpoint=ckpt, resume=True)
    assert len(hist) == 2
    for h, w in zip(hist, whole_hist[2:]):
        assert h == pytest.approx(w, rel=1e-4)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)
    with pytest.raises(ConfigError, match="resume=True needs checkpoint="):  # was: silently from step 0
        train_msrcnn(_tiny_engine(), data, cfg, resume=True)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, capsys, sigint_at_call, whole_run):
    """A real SIGINT during step 3 of 3: the two steps done (weights, optimizer, warm-up) are saved and the
    resumed run's last step equals the uninterrupted run's (the same steps; the module's run goes on to a 4th)."""
    data, ckpt = _train_data(), tmp_path / "ckpt.pth"
    cfg = replace(TRAIN_CFG, steps=3)
    whole_hist = whole_run[1]
    interrupted = _tiny_engine()
    sigint_at_call(interrupted, "preprocess", 3)
    with pytest.raises(KeyboardInterrupt):
        train_msrcnn(interrupted, data, cfg, log=False, checkpoint=ckpt)
    assert f"interrupted at step 2: checkpoint {ckpt}; continue with --resume" in capsys.readouterr().err
    hist = train_msrcnn(_tiny_engine(), data, cfg, log=False, checkpoint=ckpt, resume=True)
    assert len(hist) == 1 and hist[0] == pytest.approx(whole_hist[2], rel=1e-4)


def test_resume_checks_the_recipe_and_the_steps(tmp_path, capsys, partial_checkpoint):
    """``msrcnn_trainer --resume`` (the FCN trainer's whole command: tests/test_resume_recipe.py): a checkpoint without
    a recipe (an older rtseg's, as partial_checkpoint) resumes at the run's LR (was: the checkpoint's) times the
    warm-up's factor, and the checkpoint the run writes holds its recipe; then a resume with other --images / --size
    is refused naming both values (was: trained on, on other images at the new size), and one with --steps below the
    checkpoint's step too (was: wrote the 3-step model as a 2-step one)."""
    from rtseg.train.msrcnn_trainer import main, parse

    out = tmp_path / "m.safetensors"
    ckpt = out.with_suffix(".train") / "checkpoint.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(partial_checkpoint.read_bytes())  # 2 steps
    recipe = parse(["--out", str(out), "--images", "2", "--size", "80", "64"]).recipe
    longer = replace(TRAIN_CFG, steps=3, lr=0.02, warmup=8)  # after step 3: 0.02 * 4/8 (was: the old base, 0.01)
    hist = train_msrcnn(_tiny_engine(), _train_data(), longer, log=False, checkpoint=ckpt, resume=True, recipe=recipe)
    state = torch.load(ckpt, weights_only=True)
    assert len(hist) == 1 and state["step"] == 3 and state["scheduler"]["base_lrs"] == [0.02]
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [pytest.approx(0.01)]
    assert state["recipe"] == recipe == {"--images": 2, "--size": [80, 64], "--backbone": "resnet18"}
    written = ckpt.read_bytes()
    with pytest.raises(ConfigError, match=f"^checkpoint {re.escape(str(ckpt))} is at step 3, past --steps 2; give "
                                          "--steps 3 or more to continue it$"):
        train_msrcnn(_tiny_engine(), _train_data(), replace(TRAIN_CFG, steps=2), log=False, checkpoint=ckpt,
                     resume=True, recipe=recipe)
    capsys.readouterr()
    assert main(["--out", str(out), "--images", "3", "--size", "80", "48", "--resume"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"msrcnn_trainer: error: checkpoint {ckpt} was written by a run with other data or options (--images 2 in the "
        "checkpoint, 3 now; --size [80, 64] in the checkpoint, [80, 48] now); resume with that run's data and options "
        "(the checkpoint's values) or train afresh without --resume"]
    assert ckpt.read_bytes() == written and sorted(tmp_path.rglob("*")) == [ckpt.parent, ckpt]


def test_training_step_reduces_losses_and_engine_roundtrip(tmp_path, whole_run):
    data = _train_data()
    engine, hist = whole_run  # trained from seed 0 with score_threshold=0.0
    assert set(hist[0]) >= {"loss_classifier", "loss_mask", "loss_maskiou", "loss_objectness"}
    assert all(np.isfinite(v) for h in hist for v in h.values())
    total = [sum(h.values()) for h in hist]
    assert np.mean(total[-2:]) < total[0]
    img = data[0].image
    dets = engine(img)
    assert isinstance(dets, rtseg.Detections) and dets.image_size == img.shape[:2]
    assert dets.mask_scores is not None and dets.masks.shape == (len(dets), *img.shape[:2])
    assert (np.diff(dets.scores) <= 0).all()
    assert (dets.mask_scores <= dets.scores + 1e-6).all() and (dets.mask_scores >= 0).all()
    rs = rescored(dets)
    assert (np.diff(rs.scores) <= 0).all() and sorted(rs.scores.tolist()) == sorted(dets.mask_scores.tolist())
    path = save_msrcnn(tmp_path / "ms.safetensors", engine.model, list(CLASSES))
    loaded = rtseg.load("msrcnn", weights=str(path), score_threshold=0.0)
    again, other = loaded([img, data[1].image])
    np.testing.assert_allclose(again.boxes, dets.boxes, atol=1e-3)
    np.testing.assert_allclose(again.mask_scores, dets.mask_scores, atol=1e-5)
    assert other.image_size == img.shape[:2] and rtseg.annotate(img, again).shape == img.shape


def test_errors():
    with pytest.raises(WeightsError, match="needs weights"):
        rtseg.load("msrcnn")
    with pytest.raises(ConfigError, match="unknown backbone"):
        MsrcnnConfig(backbone="vgg")
    with pytest.raises(ConfigError, match="class names"):
        MsrcnnEngine.from_config(TINY, class_names=["a"])


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Tiny MS R-CNN weights and their manifest as a dict."""
    path = save_msrcnn(tmp_path_factory.mktemp("ms") / "ms.safetensors", _tiny_engine().model, list(CLASSES))
    return path, json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("change, detail", [
    ({"anchor_sizes": 7}, "anchor_sizes must be a list, got 7"),
    ({"anchor_sizes": [8, 16]}, re.escape("anchor_sizes must be 5 positive integers (anchor sides in pixels, one "
                                          "per FPN level), got (8, 16)")),
    ({"anchor_sizes": [8, 16, 32, 64, 0]}, "anchor_sizes must be 5 positive integers"),
    ({"min_size": 0}, re.escape("MsrcnnConfig: min_size must be an integer in [1, 4096], got 0")),
    ({"box_score_thresh": 1.5}, re.escape("MsrcnnConfig: box_score_thresh must be a number in [0, 1], got 1.5")),
    ({"min_size": 64.5}, "min_size must be int, got 64.5"),
    ({"mask_head": "light"}, r"unknown key\(s\) mask_head"),
])
def test_invalid_manifest_config_is_one_weights_error(tiny_weights, change, detail):
    """Was a TypeError traceback from MsrcnnConfig(**config) / tuple(7)."""
    path, manifest = tiny_weights
    bad = path.with_name("bad.safetensors")
    bad.write_bytes(path.read_bytes())
    bad.with_suffix(".json").write_text(json.dumps({**manifest, "config": {**manifest["config"], **change}}))
    with pytest.raises(WeightsError, match=rf"bad\.json: its config is invalid \(.*{detail}.*\); re-export") as e:
        MsrcnnEngine.from_weights(str(bad))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, expected", [
    *[(f, v, f"an integer in [1, {most}]") for f, most in (("num_classes", 5000), ("min_size", 4096),
                                                             ("max_size", 4096), ("detections_per_img", 10000),
                                                             ("rois_per_image", 10000), ("proposals_per_image", 100000))
      for v in (0, -1, True, 2.5, 64.0, math.nan, "64", None, most + 1)],  # (most + 1: min_size 100000 took 28 GiB)
    *[("box_score_thresh", v, "a number in [0, 1]") for v in (-0.1, 1.5, math.nan, math.inf, True, "0.5", None)],
])
def test_config_field_out_of_range_is_one_line_naming_it(field, value, expected):
    """Only num_classes < 1 was refused (in one line with the anchor sizes; "64" and None were TypeError
    tracebacks); every other value was accepted, to fail in torchvision or to keep nothing (a NaN threshold)."""
    with pytest.raises(ConfigError, match=rf"^MsrcnnConfig: {field} must be {re.escape(expected)}, got "
                                          rf"{re.escape(repr(value))}$"):
        MsrcnnConfig(**{field: value})


@pytest.mark.parametrize("sizes", [(8, 16, 32, 64), (8, 16, 32, 64, 128, 256), (8, 16, 32, 64, 0),
                                   (8, 16, 32, 64, 128.5), (8, 16, 32, 64, True), 7, None])
def test_config_anchor_sizes_must_be_five_positive_integers(sizes):
    """Only their number was checked (7 and None were TypeError tracebacks); 0, 128.5 and True were accepted."""
    with pytest.raises(ConfigError, match=rf"^MsrcnnConfig: anchor_sizes must be 5 positive integers \(anchor sides "
                                          rf"in pixels, one per FPN level\), got {re.escape(repr(sizes))}$"):
        MsrcnnConfig(anchor_sizes=sizes)


def test_config_takes_numpy_numbers():
    cfg = replace(TINY, num_classes=np.int64(len(CLASSES)), min_size=np.int64(64),
                  box_score_thresh=np.float64(TINY.box_score_thresh),
                  anchor_sizes=tuple(np.int64(s) for s in TINY.anchor_sizes))
    torch.manual_seed(0)
    engine = MsrcnnEngine.from_config(cfg, class_names=list(CLASSES), score_threshold=0.0)
    torch.manual_seed(0)
    plain = MsrcnnEngine.from_config(TINY, class_names=list(CLASSES), score_threshold=0.0)
    img = np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)
    np.testing.assert_allclose(engine(img).boxes, plain(img).boxes)


def test_elongated_frames_are_padded_and_cropped_back():
    """Were refused (8x4000 resized to max side 80 leaves < 1 pixel); now padded, detections cropped back."""
    engine = MsrcnnEngine.from_config(TINY, class_names=list(CLASSES), score_threshold=0.0)
    rng = np.random.default_rng(0)
    thin, tall = rng.integers(0, 255, (8, 4000, 3), np.uint8), rng.integers(0, 255, (900, 3, 3), np.uint8)
    for dets, img in zip(engine([np.zeros((64, 64, 3), np.uint8), thin, tall]), [None, thin, tall]):
        if img is None:
            continue
        h, w = img.shape[:2]
        assert dets.image_size == (h, w) and len(dets) > 0 and dets.masks.shape == (len(dets), h, w)
        assert (dets.boxes >= 0).all() and (dets.boxes[:, 0::2] <= w).all() and (dets.boxes[:, 1::2] <= h).all()
        assert (dets.boxes[:, 2:] > dets.boxes[:, :2]).all()
        assert rtseg.annotate(img, dets).shape == img.shape


def test_masks_are_pasted_lazily_as_torchvision_pastes_them():
    """torchvision pasted every mask into a float32 frame-size map in the forward pass (4.8 GB for 100
    detections at 4000x3000); the engine now keeps the 28x28 probabilities and pastes into bool on demand."""
    from torchvision.models.detection.transform import paste_masks_in_image

    engine = MsrcnnEngine.from_config(TINY, class_names=list(CLASSES), score_threshold=0.0)
    img = SyntheticDataset.split("val", 1, width=80, height=64)[0].image
    raw = engine.forward(engine.preprocess([img]))
    assert raw[0]["masks"].shape[1:] == (1, 28, 28)  # not pasted by the network
    dets = engine.postprocess(raw, [img.shape[:2]])[0]
    assert dets._masks is None and len(dets) > 0
    expected = (paste_masks_in_image(raw[0]["masks"], raw[0]["boxes"], img.shape[:2])[:, 0] > 0.5).numpy()
    np.testing.assert_array_equal(dets.masks, expected[: len(dets)])
    assert dets.masks.any()


def test_score_threshold_and_top_k_reach_past_the_trained_limits():
    """TINY was built with box_score_thresh 0.05 and detections_per_img 20: score_threshold=0.0 and
    top_k=60 were silently capped by them."""
    img = SyntheticDataset.split("val", 1, width=80, height=64)[0].image
    torch.manual_seed(0)
    many = MsrcnnEngine.from_config(TINY, class_names=list(CLASSES), score_threshold=0.0, top_k=60)(img)
    assert 20 < len(many) <= 60
    few = MsrcnnEngine(model=MaskScoringRCNN(TINY), class_names=list(CLASSES), score_threshold=0.99)(img)
    assert (few.scores > 0.99).all()


def test_training_checkpoint_as_weights_says_how_to_finish(partial_checkpoint):
    with pytest.raises(WeightsError, match="is a training checkpoint of an unfinished run .* finish the run with "
                                           "--resume to export the .safetensors"):
        rtseg.load("msrcnn", str(partial_checkpoint))


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--images", "-1"], ["--size", "32", "4000"], ["--size", "16", "32"],
                                 ["--threads", "2000"], ["--lr", "nan"]])
def test_trainer_command_line_range_checks_every_number(tmp_path, capsys, bad):
    """Each numeric option of `python -m rtseg.train.msrcnn_trainer` out of range is one line naming it, exit 2,
    nothing written (was: a traceback, an untrained model written, or the memory exhausted)."""
    from rtseg.train.msrcnn_trainer import main

    assert main(["--out", str(tmp_path / "m.safetensors"), *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"msrcnn_trainer: error: {bad[0]} ") and "must be" in err, err
    assert list(tmp_path.iterdir()) == []


def test_trainer_says_its_whole_command_to_continue_and_checks_out_first(tmp_path, capsys):
    """The continue-with line is the run's own command with --resume (once), not ``--resume (and the same --out)``,
    which refused a run of other --images or trained to the default --steps; an --out whose checkpoint folder cannot
    be made is one line before training (was: a FileNotFoundError traceback at the first checkpoint)."""
    from rtseg.train.msrcnn_trainer import main, parse

    args = parse(["--out", "m 1.safetensors", "--images", "4", "--steps=9"])
    assert args.resume_hint == "python -m rtseg.train.msrcnn_trainer --out 'm 1.safetensors' --images 4 --steps=9 " \
                               "--resume"
    assert main(["--out", "/proc/x.safetensors", "--steps", "1", "--images", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("msrcnn_trainer: error: --out /proc/x.safetensors: its checkpoint folder /proc/x.train: "
                          "cannot create the folder"), err
