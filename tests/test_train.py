"""YOLACT training: matching, encoding, OHEM, augmentations, a real tiny training run, resume, CLI."""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import multiprocessing
import os
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from rtseg.data.dataset import Sample, masks_to_boxes
from rtseg.data.synthetic import SyntheticScene
from rtseg.errors import ConfigError, WeightsError
from rtseg.models.yolact import Yolact, YolactConfig, make_priors
from rtseg.ops.boxes import box_iou, decode, point_form
from rtseg.train import augment as aug
from rtseg.train.losses import LossConfig, Target, ohem_negatives, yolact_loss
from rtseg.train.matching import NEUTRAL, encode, match
from rtseg.train.trainer import TrainConfig, Trainer, evaluate_engine


TINY = YolactConfig(backbone="resnet18", num_classes=6, fpn_channels=32, num_prototypes=8).with_input_size(128)
#: TINY at 64 px, for the runs on 64 px frames whose point is the schedule, the checkpoint or the time budget, not
#: what is learnt: a quarter of the pixels of each step (the 128 px network trains in the other tests).
TINY_64 = TINY.with_input_size(64)
NO_AUGMENT = aug.AugmentConfig(photometric=False, expand_max=1.0, crop=False, mirror=False)


class ListDataset:
    """A fixed list of samples as a data set."""

    class_names = SyntheticScene.class_names

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


@functools.lru_cache(maxsize=None)
def _scene_samples(size: int, seed: int) -> tuple[Sample, ...]:
    """The frames of the scene that hold at least one object (drawn once per size and seed: ~0.4 s at 128 px)."""
    scene = SyntheticScene(seed, width=size, height=size, num_frames=400, max_objects=3, min_area=40)
    return tuple(s for s in (scene.sample(i) for i in range(0, 400, 7)) if len(s))


def _frames(n: int, size: int = 128, seed: int = 11) -> ListDataset:
    """``n`` synthetic frames of ``size`` px that each hold at least one object (copies: a test may change them)."""
    samples = _scene_samples(size, seed)
    assert len(samples) >= n
    return ListDataset(copy.deepcopy(list(samples[:n])))


# -- matching ---------------------------------------------------------------------------------
def _prior_with_iou(r: float) -> list[float]:
    """A prior sharing the top-left corner of box [0, 0, .4, .4], IoU = r with it (cx, cy, w, h)."""
    return [0.2, 0.2 * r, 0.4, 0.4 * r]


def test_match_thresholds_and_forced_best_prior() -> None:
    priors = torch.tensor([_prior_with_iou(0.55), _prior_with_iou(0.45), _prior_with_iou(0.35),
                           [0.9, 0.1, 0.1, 0.1],      # overlaps nothing
                           [0.85, 0.85, 0.3, 0.3]])   # best (but tiny IoU) prior of the small box
    gt = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.80, 0.80, 0.82, 0.82]])
    labels = torch.tensor([2, 4])
    ious = box_iou(gt, point_form(priors))
    assert ious[0, 0] > 0.5 and 0.4 < ious[0, 1] < 0.5 and ious[0, 2] < 0.4 and ious[1].max() < 0.01
    m = match(gt, labels, priors)
    assert m.conf_t.tolist() == [3, NEUTRAL, 0, 0, 5]  # class + 1; the small box forced onto prior 4
    assert m.idx_t[0] == 0 and m.idx_t[4] == 1
    assert torch.allclose(decode(m.loc_t[[0, 4]], priors[[0, 4]]), gt, atol=1e-5)
    # with a looser negative threshold the neutral prior becomes background
    assert match(gt, labels, priors, neg_threshold=0.5).conf_t[1] == 0


def test_forced_priors_are_distinct_and_each_box_keeps_one() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]])
    gt = torch.tensor([[0.41, 0.41, 0.59, 0.59], [0.40, 0.40, 0.60, 0.60]])  # both prefer prior 0
    m = match(gt, torch.tensor([0, 1]), priors)
    assert sorted(m.idx_t[m.conf_t > 0].tolist()) == [0, 1]  # the runner-up box takes the other prior


def test_match_empty_and_crowd() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    empty = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), priors)
    assert empty.conf_t.tolist() == [0, 0]
    crowd = torch.tensor([[0.3, 0.3, 0.7, 0.7]])  # covers prior 0 completely, prior 1 not at all
    m = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), priors, crowd_boxes=crowd)
    assert m.conf_t.tolist() == [NEUTRAL, 0]


def test_encode_decode_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(500, 2, generator=g), 0.02 + 0.5 * torch.rand(500, 2, generator=g)], 1)
    xy = torch.rand(500, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + 0.01 + 0.3 * torch.rand(500, 2, generator=g)], 1)
    assert torch.allclose(decode(encode(boxes, priors), priors), boxes, atol=1e-5)
    assert torch.allclose(encode(point_form(priors), priors), torch.zeros(500, 4), atol=1e-4)


# -- OHEM ---------------------------------------------------------------------------------------
def test_ohem_keeps_three_hardest_negatives_per_positive() -> None:
    a = 20
    conf = torch.zeros(2, a, 3)
    conf[:, :, 1] = torch.arange(a, dtype=torch.float32)  # prior i: foreground logit i -> hardness grows with i
    conf_t = torch.zeros(2, a, dtype=torch.int64)
    conf_t[0, [19, 5]] = 1          # two positives (19 is also the hardest prior)
    conf_t[0, 18] = NEUTRAL         # a neutral among the hardest
    conf_t[1, 0] = 2                # one positive in image 1
    neg = ohem_negatives(conf, conf_t, 3)
    assert neg[0].nonzero().flatten().tolist() == [12, 13, 14, 15, 16, 17]
    assert neg[1].nonzero().flatten().tolist() == [17, 18, 19]
    few = torch.zeros(1, 4, dtype=torch.int64)
    few[0, :3] = 1                  # 3 positives, only 1 background left
    assert ohem_negatives(torch.zeros(1, 4, 3), few, 3)[0].tolist() == [False, False, False, True]


def test_loss_terms_and_gradients() -> None:
    torch.manual_seed(0)
    model = Yolact(TINY).train()
    priors = make_priors(TINY)
    s = _frames(2)
    x = torch.randn(2, 3, 128, 128)
    targets = [Target(boxes=torch.from_numpy(t.boxes) / 128, labels=torch.from_numpy(t.class_ids),
                      masks=torch.from_numpy(t.masks).float()) for t in s.samples]
    targets[1] = Target(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 128, 128))
    losses = yolact_loss(model(x), targets, priors, LossConfig())
    assert set(losses) == {"box", "conf", "mask", "semantic", "total"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["total"].backward()
    assert model.proto_net[0].weight.grad.abs().sum() > 0  # the mask loss reaches the protonet
    assert model.semantic_seg_conv.weight.grad.abs().sum() > 0


# -- augmentations ------------------------------------------------------------------------------
def _one_sample() -> Sample:
    scene = SyntheticScene(5, width=160, height=120, num_frames=60, max_objects=5)
    return max((scene.sample(i) for i in range(0, 60, 5)), key=len)


def test_geometric_steps_keep_boxes_and_masks_consistent() -> None:
    s = _one_sample()
    assert len(s) >= 2
    for seed in range(12):
        rng = np.random.default_rng(seed)
        e = aug.expand(s, rng, 3.0)
        np.testing.assert_array_equal(masks_to_boxes(e.masks), e.boxes)  # exact: a translation
        assert e.masks.sum() == s.masks.sum()
        m = aug.mirror(e, rng)
        np.testing.assert_array_equal(masks_to_boxes(m.masks), m.boxes)
        c = aug.random_crop(m, rng)
        assert len(c) >= 1 and c.masks.shape == (len(c), *c.image_size)
        tight = masks_to_boxes(c.masks)
        nonempty = c.masks.any(axis=(1, 2))
        # a cut mask lies inside its clipped box
        assert np.all(tight[nonempty, :2] >= c.boxes[nonempty, :2]) and np.all(tight[nonempty, 2:] <= c.boxes[nonempty, 2:])
        assert np.all(c.boxes >= 0) and np.all(c.boxes[:, [2, 3]] <= [c.image_size[1], c.image_size[0]])


def test_mirror_twice_is_identity_and_photometric_keeps_geometry() -> None:
    s = _one_sample()
    flipped = aug.mirror(s, np.random.default_rng(1))  # rng draw 0.51 >= 0.5 -> flips
    assert not np.array_equal(flipped.image, s.image)
    back = aug.mirror(flipped, np.random.default_rng(1))
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.masks, s.masks)
    np.testing.assert_allclose(back.boxes, s.boxes)
    img = aug.photometric_distort(s.image, np.random.default_rng(3))
    assert img.shape == s.image.shape and img.dtype == np.uint8


def test_full_augment_output_is_square_and_consistent() -> None:
    s = _one_sample()
    for seed in range(10):
        a = aug.augment(s, size=96, rng=np.random.default_rng(seed))
        assert a.image.shape == (96, 96, 3) and a.masks.shape == (len(a), 96, 96)
        assert len(a) == len(a.class_ids) and set(a.class_ids.tolist()) <= set(s.class_ids.tolist())
        side = aug.MIN_BOX_FRACTION * 96
        assert np.all(a.boxes[:, 2] - a.boxes[:, 0] > side) and np.all(a.boxes[:, 3] - a.boxes[:, 1] > side)
        tight = masks_to_boxes(a.masks)
        nonempty = a.masks.any(axis=(1, 2))
        # within the resize rounding, the masks lie inside their boxes
        assert np.all(tight[nonempty, :2] >= a.boxes[nonempty, :2] - 2) and np.all(tight[nonempty, 2:] <= a.boxes[nonempty, 2:] + 2)


# -- training -----------------------------------------------------------------------------------
def _trainer(data: ListDataset, iters: int, work_dir, *, lr: float = 1e-2, seed: int = 0,
             amp: str = "auto", model: YolactConfig = TINY, **options) -> Trainer:
    torch.manual_seed(seed)
    config = TrainConfig(iters=iters, batch_size=4, lr=lr, warmup_iters=10, warmup_init=1e-3,
                         lr_steps=(int(iters * 0.8),), num_workers=0, log_every=50, ckpt_every=0,
                         augment=NO_AUGMENT, amp=amp, **options)
    return Trainer(model=Yolact(model), train_set=data, val_set=None, config=config, work_dir=work_dir)


@pytest.mark.slow
def test_tiny_run_learns_four_images(tmp_path) -> None:
    """A real (un-mocked) short run on 4 images: the loss falls and the objects are found.

    Budget-bound: 60 steps are enough for boxes and classes (box AP50 1.0 in trials),
    not for sharp masks, which need a few hundred steps; the mask term must still fall.
    """
    data = _frames(4)
    trainer = _trainer(data, 60, tmp_path, lr=3e-3)
    first = trainer.train_step(*_batch(data))
    trainer.fit()
    last = trainer.train_step(*_batch(data))
    assert last["total"] < 0.5 * first["total"], (first, last)
    assert last["mask"] < first["mask"], (first, last)
    metrics = evaluate_engine(trainer.engine, data)
    assert metrics["box_AP50"] > 0.5, metrics


def _batch(data: ListDataset) -> tuple[torch.Tensor, list[Target]]:
    from rtseg.train.trainer import collate

    return collate([data[i] for i in range(len(data))])


def test_bf16_runs_the_network_in_bfloat16_and_learns(tmp_path) -> None:
    """--amp bf16: activations in bfloat16, weights and loss in float32; same loss as float32 within
    bfloat16 rounding, and it falls."""
    data = _frames(4, size=64)
    reference = _trainer(data, 20, tmp_path / "a", amp="off", model=TINY_64).train_step(*_batch(data))
    trainer = _trainer(data, 20, tmp_path / "b", amp="bf16", model=TINY_64)
    dtypes: list[torch.dtype] = []
    trainer.model.proto_net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    first = trainer.train_step(*_batch(data))
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    for k in ("box", "conf", "mask", "semantic"):
        assert first[k] == pytest.approx(reference[k], rel=0.05), (k, first, reference)
    for _ in range(15):
        last = trainer.train_step(*_batch(data))
    assert last["total"] < 0.8 * first["total"], (first, last)
    with pytest.raises(ConfigError, match="amp 'fp8'"):
        _trainer(data, 20, tmp_path / "c", amp="fp8")


def test_a_step_whose_gradient_is_nan_updates_nothing(tmp_path) -> None:
    """A finite loss with a NaN weight gradient (bfloat16 on the CPU gave one now and then in the P7 downsample
    layer of a 64-px model, whose every weight was NaN one step later): the step is skipped, the weights stay
    finite and the next step trains. A hook on the real backward pass makes that gradient NaN at step 2 (the
    oneDNN fault is not reproducible on demand)."""
    data = _frames(4, size=64)
    trainer = _trainer(data, 3, tmp_path, model=TINY_64, amp="off")
    weight, calls = trainer.model.fpn.downsample_layers[1].weight, [0]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad * math.nan if calls[0] == 2 else grad

    weight.register_hook(poison)
    trainer.train_step(*_batch(data))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}  # (batch norm statistics move on)
    second = trainer.train_step(*_batch(data))
    assert math.isfinite(second["total"]) and trainer.guard.skipped == 1 and trainer.guard.in_a_row == 1
    for k, v in trainer.model.named_parameters():
        torch.testing.assert_close(v.detach(), before[k], rtol=0, atol=0, msg=k)
    third = trainer.train_step(*_batch(data))
    assert math.isfinite(third["total"]) and trainer.guard.in_a_row == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not torch.equal(trainer.model.fpn.downsample_layers[1].weight, before["fpn.downsample_layers.1.weight"])


def test_resume_continues_at_the_same_step(tmp_path) -> None:
    data = _frames(4, size=64)
    whole = _trainer(data, 4, tmp_path / "a", model=TINY_64)
    whole.fit()
    first = _trainer(data, 4, tmp_path / "b", model=TINY_64)
    first.config = TrainConfig(**{**first.config.__dict__, "iters": 2})
    first.fit()
    ckpt = first.save_checkpoint()
    resumed = _trainer(data, 4, tmp_path / "c", seed=1, model=TINY_64)  # other initial weights: the checkpoint must win
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 2 and resumed.scheduler.last_epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(first.optimizer.param_groups[0]["lr"])
    resumed.fit()
    assert resumed.step == 4
    # Equal up to rounding: on the CPU the network trains channels_last (CPU_CHANNELS_LAST), whose oneDNN kernels
    # round differently between two model instances with equal weights (a first resumed loss off by 1e-7
    # relative; 1.5e-5 in the weights after two steps with one thread). A resume that loses the optimizer's
    # momentum is off by 1.6e-2.
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), k


def test_cli_trains_and_writes_loadable_weights(tmp_path, capsys) -> None:
    import rtseg
    from rtseg.train.cli import main

    out = tmp_path / "m.safetensors"
    rc = main(["--data", "synthetic", "--train-images", "8", "--input-size", "64", "--fpn-channels", "16",
               "--num-prototypes", "4", "--iters", "2", "--batch-size", "2", "--workers", "0",
               "--val-images", "2", "--half", "--out", str(out)])
    assert rc == 0
    from safetensors.torch import load_file

    assert load_file(str(out))["fpn.lat_layers.0.weight"].dtype == torch.float16  # --half
    engine = rtseg.load("yolact", weights=str(out))
    assert next(engine.net.parameters()).dtype == torch.float32
    assert engine.cfg.input_size == 64 and list(engine.class_names) == list(SyntheticScene.class_names)
    assert (tmp_path / "m.train" / "checkpoint.pth").is_file()
    assert main(["--data", "nonsense", "--iters", "1", "--out", str(out)]) == 2
    assert "expected synthetic" in capsys.readouterr().err


def test_a_diverging_run_stops_with_a_line_saying_to_lower_the_lr(tmp_path) -> None:
    """Steps with a non-finite loss are skipped; many in a row (weights gone to inf / NaN) end the run with one
    line instead of training on to the end on garbage."""
    trainer = _trainer(_frames(4), 200, tmp_path, lr=1e12, max_nonfinite=3)
    trainer.config = replace(trainer.config, warmup_iters=0)
    with pytest.raises(ConfigError, match=r"training diverged: the loss or its gradients were not finite for 3 steps "
                                          r"in a row .*"
                                          r"lower --lr \(now 1e\+12\)"):
        trainer.fit()
    assert trainer.step < 50 and trainer.guard.skipped >= 3


@pytest.mark.parametrize("limit", [0, -1, 1.5, 2.0, True, float("nan"), "20"])
def test_max_nonfinite_that_is_no_integer_from_1_is_one_line(limit, tmp_path) -> None:
    """Was accepted (a float, True, NaN: a run never stopped however long it diverged) or a bare "max_nonfinite 0"."""
    with pytest.raises(ConfigError, match=rf"^max_nonfinite must be an integer >= 1, got {re.escape(repr(limit))}$"):
        _trainer(_frames(1), 2, tmp_path, max_nonfinite=limit)
    assert _trainer(_frames(1), 2, tmp_path, max_nonfinite=np.int64(2)).guard.limit == 2


def test_unusable_checkpoints_are_one_line_errors(tmp_path, capsys) -> None:
    from rtseg.train.checkpoint import load_checkpoint
    from rtseg.train.cli import main

    model = Yolact(TINY)
    garbage, foreign, empty = tmp_path / "garbage.pth", tmp_path / "foreign.pth", tmp_path / "empty.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    torch.save({"step": 3, "weights": {}}, foreign)
    empty.write_bytes(b"")  # a run killed while writing it, a full disk
    with pytest.raises(WeightsError, match=r"garbage.pth: not a PyTorch checkpoint.*; give a checkpoint.pth an rtseg "):
        load_checkpoint(garbage, parts={"model": model})
    with pytest.raises(WeightsError, match=r"empty.pth: truncated or corrupt checkpoint \(an empty file\); resume from "
                                           r"another checkpoint.pth or train afresh without --resume"):
        load_checkpoint(empty, parts={"model": model})
    with pytest.raises(WeightsError, match="lacks model"):
        load_checkpoint(foreign, parts={"model": model})
    assert main(["--data", "synthetic", "--train-images", "8", "--input-size", "64", "--iters", "2",
                 "--resume", str(tmp_path / "none.pth"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_resuming_a_run_of_other_classes_or_options_names_the_differences(tmp_path) -> None:
    """A checkpoint of a run with other classes / model options: the differences, in the run's own terms,
    instead of the model's mis-shaped tensors; a checkpoint of another trainer names the trainers."""
    from rtseg.train.checkpoint import save_checkpoint

    data = _frames(4)
    path = _trainer(data, 2, tmp_path / "a").save_checkpoint()
    two = ListDataset(data.samples)
    two.class_names = ("cat", "dog")
    other = Trainer(model=Yolact(replace(TINY, num_classes=2, fpn_channels=16)), train_set=two, val_set=None,
                    config=TrainConfig(iters=2, num_workers=0), work_dir=tmp_path / "b")
    with pytest.raises(WeightsError) as info:
        other.load_checkpoint(path)
    message = str(info.value)
    assert "num_classes 6 in the checkpoint, 2 now" in message and "fpn_channels 32 in the checkpoint, 16 now" in message
    assert "class_names" in message and "mis-shaped" not in message
    _trainer(data, 2, tmp_path / "c").load_checkpoint(path)  # the same run's options: resumes
    fcn_like = save_checkpoint(tmp_path / "fcn.pth", step=1, parts={"model": Yolact(TINY)})  # no scaler
    with pytest.raises(WeightsError, match="lacks optimizer, scaler: .* rtseg.train.fcn_trainer"):
        other.load_checkpoint(fcn_like)


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtseg train: error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err, err


def test_cli_broken_imagenet_file_in_the_torch_cache_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """torchvision's ResNet file left half-downloaded in the torch cache: one line naming it (was a traceback)."""
    from rtseg.train.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    args = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--iters", "1", "--workers", "0",
            "--out", str(tmp_path / "m.safetensors")]
    for content, message in ((b"", "truncated or corrupt checkpoint (an empty file)"),
                             (bytes(range(256)) * 4, "not a PyTorch checkpoint")):
        (cache / "resnet18-f37072fd.pth").write_bytes(content)
        assert main(args) == 2
        _one_line_error(capsys, f"resnet18-f37072fd.pth: {message}")


def test_cli_refuses_a_labelme_folder_without_shapes(tmp_path, capsys) -> None:
    """Classes listed in label_names.txt but no shape drawn: was a run that trained on nothing."""
    import cv2

    from rtseg.train.cli import main

    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "label_names.txt").write_text("cat\ndog\n")
    cv2.imwrite(str(folder / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (folder / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "a.png", "imageHeight": 32,
                                               "imageWidth": 32}))
    assert main(["--data", f"labelme:{folder}", "--iters", "2", "--out", str(tmp_path / "m.safetensors")]) == 2
    _one_line_error(capsys, "the 1 labelme files hold no shapes, so there is nothing to learn")


def test_cli_refuses_bad_options_and_output_paths_before_training(tmp_path, capsys) -> None:
    from rtseg.train.cli import main

    common = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--iters", "2", "--workers", "0"]
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (["--lr", "-0.01"], "--lr -0.01: must be a finite number >= 0 (the learning rate, e.g. 1e-3)"),
        (["--lr", "nan"], "--lr nan: must be a finite number >= 0 (the learning rate, e.g. 1e-3)"),
        (["--lr", "inf"], "--lr inf: must be a finite number >= 0 (the learning rate, e.g. 1e-3)"),
        (["--input-size", "0"], "--input-size 0: must be an integer in [32, 2048] pixels"),
        (["--fpn-channels", "0"], "--fpn-channels 0: must be an integer in [1, 1024]"),
        (["--workers", "-1"], "--workers -1: must be an integer in [0, 256]"),
        (["--threads", "-1"], "--threads -1: must be an integer in [1, 1024]"),
        (["--out", str(tmp_path / "folder.safetensors")], "is a folder; give a file path ending in .safetensors"),
        (["--out", str(tmp_path / "file" / "m.safetensors")], "is a file, not a folder"),
        (["--work-dir", str(tmp_path / "file")], "--work-dir"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "m.safetensors")]
        assert main([*common, *args, *out]) == 2, args
        _one_line_error(capsys, message)
    assert not list(tmp_path.rglob("checkpoint.pth"))  # all refused before the first step


@pytest.mark.parametrize("args, message", [
    (["--expand-max", "nan"], "--expand-max nan: must be a number in [1, 8] (1 disables the expand"),
    (["--expand-max", "0.5"], "--expand-max 0.5: must be a number in [1, 8] (1 disables the expand"),
    (["--seed", "-1"], "--seed -1: must be an integer >= 0"),
    (["--time-budget", "nan"], "--time-budget nan: must be a number in [0.01, 525600] minutes"),
    (["--lr-steps", "0.9,0.1"], "--lr-steps '0.9,0.1': fractions must increase, e.g. 0.7,0.9"),
    (["--lr-steps", "0.7,nan"], "--lr-steps nan: must be a number in (0, 1) (fractions of --iters, e.g. 0.7,0.9)"),
    (["--lr-steps", "0.7,1"], "--lr-steps 1: must be a number in (0, 1) (fractions of --iters"),
    (["--val-images", "0"], "--val-images 0: must be an integer >= 1"),
    (["--input-size", "100000"], "--input-size 100000: must be an integer in [32, 2048] pixels"),  # was killed at ~20 GB
    (["--fpn-channels", "100000"], "--fpn-channels 100000: must be an integer in [1, 1024]"),
    (["--iters", str(10**21)], f"--iters {10**21}: must be an integer in [1, 1000000000]"),
    (["--data", "labelme:any"], "--train-images 4: only --data synthetic makes its images"),
    (["--val-data", "foo"], "--val-data 'foo': unknown kind 'foo'; expected synthetic[:SPLIT], coco:ANNOTATIONS.json:"),
    (["--val-data", "labelme:FILE"], "a.json is a file, not a folder; give the folder that holds the labelme .json"),
])
def test_cli_refuses_numbers_out_of_range_and_bad_data_forms_before_training(args, message, tmp_path, capsys) -> None:
    """Each numeric option must be a finite number in its range, and a data form names its own option (was a
    traceback, a silently nonsensical run, an out-of-memory kill, or a line naming --data for --val-data)."""
    from rtseg.train.cli import main

    (tmp_path / "a.json").write_text("{}")
    args = [a.replace("FILE", str(tmp_path / "a.json")) for a in args]
    assert main(["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--iters", "2", "--workers", "0",
                 "--out", str(tmp_path / "m.safetensors"), *args]) == 2
    _one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # refused before anything was written


@pytest.mark.parametrize("command, args, message", [
    ("rtseg.train.cli", ["--time-budget", "0"], "rtseg train: error: --time-budget 0: must be a number in [0.01, "
                                                "525600] minutes"),
    ("rtseg.train.cli", ["--time-budget", "1e-9"], "rtseg train: error: --time-budget 1e-9: must be a number in"),
    ("rtseg.train.cli", ["--lr", "-1"], "rtseg train: error: --lr -1: must be a finite number >= 0"),
    ("rtseg.train.cli", ["--expand-max", " 0"], "rtseg train: error: --expand-max 0: must be a number in [1, 8]"),
    ("rtseg.train.fcn_trainer", ["--width", "2"], "fcn_trainer: error: --width 2: must be a number in [0.01, 1]"),
    ("rtseg.train.fcn_trainer", ["--lr", "-1"], "fcn_trainer: error: --lr -1: must be a finite number >= 0"),
    ("rtseg.train.msrcnn_trainer", ["--lr=-1e-3"], "msrcnn_trainer: error: --lr -1e-3: must be a finite number"),
    ("rtseg.train.cli", ["--lr", "x"], "rtseg train: error: argument --lr: invalid float value: 'x' (see rtseg train "
                                       "--help)")])
def test_range_errors_quote_the_number_as_typed(command, args, message, tmp_path, capsys) -> None:
    """A float option out of range was quoted as Python parsed it: '--time-budget 0.0', '--lr -1.0',
    '--time-budget 1e-09' for what was typed 0, -1, 1e-9."""
    import importlib

    common = (["--data", "synthetic", "--iters", "2"] if command == "rtseg.train.cli" else [])
    assert importlib.import_module(command).main([*common, "--out", str(tmp_path / "m.safetensors"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_float_options_reach_the_run_as_plain_floats() -> None:
    """The checked options are plain floats (a float that says itself as typed would be pickled by class into the
    checkpoint, which is read with weights_only)."""
    from rtseg.train import cli, fcn_trainer, msrcnn_trainer

    args = cli.parse(["--data", "synthetic", "--iters", "2", "--out", "m.safetensors", "--lr", "1e-2",
                      "--time-budget", "3", "--expand-max", "2"])
    assert [(type(v), v) for v in (args.lr, args.time_budget, args.expand_max)] == [(float, 0.01), (float, 3.0),
                                                                                     (float, 2.0)]
    fcn = fcn_trainer.parse(["--out", "f.safetensors", "--lr", "0.5", "--width", "0.25"])
    assert (type(fcn.lr), type(fcn.width), type(fcn.recipe["--width"])) == (float, float, float)
    assert type(msrcnn_trainer.parse(["--out", "m.safetensors", "--lr", "1"]).lr) is float


def test_cli_refuses_val_every_without_a_validation_set(tmp_path, capsys) -> None:
    """--val-every N on COCO / labelme data without --val-data trained on and never validated, without a word."""
    from rtseg.train.cli import main

    assert main(["--data", "labelme:any", "--val-every", "3", "--iters", "6", "--workers", "0",
                 "--out", str(tmp_path / "m.safetensors")]) == 2
    _one_line_error(capsys, "--val-every 3: there is no validation set to check every 3 steps; give one with "
                            "--val-data (only --data synthetic has its own)")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_out_or_work_dir_that_would_overwrite_what_it_reads(tmp_path, capsys) -> None:
    """--out x.safetensors writes x.json (the manifest) and <work-dir>/checkpoint.pth: none may be a file the run reads
    (an annotation file, also through a hard link; --init; --resume unless it is the run's own checkpoint), nor may
    the manifest go into a labelme folder it reads. Each is refused before training, the input left as it was (a COCO
    annotation file x.json was replaced by the manifest of --out x.safetensors)."""
    from rtseg.data.export import export_coco
    from rtseg.train.cli import main

    ann = export_coco(SyntheticScene(5, width=96, height=64, num_frames=2), tmp_path / "coco")
    os.link(ann, tmp_path / "link.json")
    os.link(ann, tmp_path / "n.safetensors.tmp")  # the file the weights of --out n.safetensors are written through
    labelme = tmp_path / "lm"
    labelme.mkdir()
    (labelme / "a.json").write_text("{}")
    init, resume, ckpt = tmp_path / "init.safetensors", tmp_path / "m.json", tmp_path / "w" / "checkpoint.pth"
    ckpt.parent.mkdir()
    for f in (init, resume, ckpt):
        f.write_bytes(b"kept")
    coco = f"coco:{ann}:{ann.parent}"
    common = ["--input-size", "64", "--iters", "1", "--workers", "0"]
    cases = [
        (["--data", coco, "--out", str(ann.with_suffix(".safetensors"))],
         f"the manifest {ann} would overwrite the --data file {ann}; choose another --out"),
        (["--data", coco, "--out", str(tmp_path / "link.safetensors")], "would overwrite the --data file"),
        (["--data", coco, "--out", str(tmp_path / "n.safetensors")],
         f"the weights {tmp_path / 'n.safetensors.tmp'} would overwrite the --data file {ann}; choose another --out"),
        (["--data", "synthetic", "--val-data", coco, "--out", str(ann.with_suffix(".safetensors"))],
         "would overwrite the --val-data file"),
        (["--data", "synthetic", "--init", str(init), "--out", str(init)],
         f"the weights {init} would overwrite the --init file {init}; choose another --out"),
        (["--data", "synthetic", "--resume", str(resume), "--out", str(tmp_path / "m.safetensors")],
         f"the manifest {resume} would overwrite the --resume file {resume}"),
        (["--data", "synthetic", "--init", str(ckpt), "--work-dir", str(ckpt.parent),
          "--out", str(tmp_path / "m.safetensors")],
         f"--work-dir {ckpt.parent}: the checkpoint {ckpt} would overwrite the --init file {ckpt}; choose another"),
        (["--data", f"labelme:{labelme}", "--out", str(labelme / "a.safetensors")],
         f"its manifest a.json would go among the labelme files of --data {labelme}"),
    ]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args, message in cases:
        assert main([*common, *args]) == 2, args
        _one_line_error(capsys, message)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_a_fresh_run_refuses_a_work_folder_that_holds_another_runs_checkpoint(tmp_path, capsys) -> None:
    """Was: a run without --resume and the --out of an earlier run (or its --work-dir, or one resuming another
    checkpoint into it) overwrote that run's weights and its resumable checkpoint without a word, even with other
    data. Now one line before anything is read or written: the checkpoint, its step, and what to do; the earlier
    run's files stay as they were. Weights without a checkpoint (the folder deleted, as the line offers) are
    overwritten as before."""
    import shutil

    from rtseg.train.cli import main

    common = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
              "--num-prototypes", "4", "--iters", "1", "--batch-size", "2", "--workers", "0", "--val-images", "1"]
    out, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    ckpt = tmp_path / "m.train" / "checkpoint.pth"
    assert main([*common, "--out", str(out)]) == 0
    copy = tmp_path / "copy.pth"
    shutil.copyfile(ckpt, copy)
    what = f"holds the checkpoint of an earlier run ({ckpt} at step 1), which this run would overwrite; continue " \
           f"that run with --resume {ckpt}, give another"
    cases = [
        (["--out", str(out)], f"--out {out}: its work folder {ckpt.parent} {what} --out, or delete {ckpt.parent} to "
                              "train afresh"),
        (["--work-dir", str(ckpt.parent), "--out", str(other)], f"--work-dir {ckpt.parent} {what} --work-dir, or"),
        (["--resume", str(copy), "--iters", "2", "--out", str(out)],
         f"--out {out}: its work folder {ckpt.parent} {what}"),
    ]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    for args, message in cases:
        assert main([*common, *args]) == 2, args
        _one_line_error(capsys, message)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    shutil.rmtree(ckpt.parent)
    assert main([*common, "--seed", "1", "--out", str(out)]) == 0
    assert out.read_bytes() != before[out] and ckpt.is_file()


def test_cli_resume_of_weights_says_it_continues_from_the_checkpoint(tmp_path, capsys) -> None:
    """--resume given the run's weights (its --out): was 'would overwrite the --resume file …; choose another --out'.
    Now where a run's checkpoint is, and --init for starting from weights."""
    from rtseg.train.cli import main

    out = tmp_path / "c.safetensors"
    out.write_bytes(b"weights")
    assert main(["--data", "synthetic", "--iters", "2", "--out", str(out), "--resume", str(out)]) == 2
    checkpoint = tmp_path / "c.train" / "checkpoint.pth"
    _one_line_error(capsys, f"--resume {out}: weights, not a checkpoint; --resume continues a run from the checkpoint "
                            f"in its work folder ({checkpoint} for a run with --out {out}, unless it had a "
                            f"--work-dir); --init {out} starts a new run from these weights")


def test_sigterm_saves_a_checkpoint_and_prints_the_command_that_continues(tmp_path) -> None:
    """A real SIGTERM to a real `rtseg train` process (kill, a job scheduler's stop) mid-run: as Ctrl-C, the steps done
    are saved and the command that continues them is printed, without a traceback (was: killed at once, exit -15,
    every step since the last checkpoint lost, nothing said); said as ``terminated`` and exit 143 (was ``interrupted``
    and 130, Ctrl-C's)."""
    import shlex
    import subprocess
    import sys

    out = tmp_path / "m.safetensors"
    args = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
            "--num-prototypes", "4", "--batch-size", "2", "--workers", "0", "--threads", "1", "--iters", "100000",
            "--ckpt-every", "0", "--out", str(out)]  # no checkpoint but the one the signal makes
    proc = subprocess.Popen([sys.executable, "-m", "rtseg", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first progress line: 10 steps done
            if line.startswith("[") and " 10/100000 " in line:
                break
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "rtseg train: terminated", stderr
    ckpt = tmp_path / "m.train" / "checkpoint.pth"
    step, command = re.search(r"terminated at step (\d+): checkpoint .*; continue with (.*)", stdout).groups()
    assert shlex.split(command) == ["rtseg", "train", *args, "--resume", str(ckpt)]
    assert int(step) >= 10 and torch.load(ckpt, weights_only=True)["step"] == int(step)
    assert not out.exists()


def test_cli_data_errors_from_a_loader_worker_and_resume_past_the_end(tmp_path, capsys) -> None:
    """A corrupt image read in a DataLoader worker process is the error's own line (not the worker's
    traceback); a checkpoint past --iters and a text file as --resume are one-line errors."""
    import cv2

    from rtseg.train.cli import main

    folder = tmp_path / "lm"
    folder.mkdir()
    shapes = [{"label": "cat", "points": [[2, 2], [30, 2], [30, 30]], "shape_type": "polygon"}]
    for name in ("a", "b"):
        cv2.imwrite(str(folder / f"{name}.png"), np.full((40, 40, 3), 90, np.uint8))
        (folder / f"{name}.json").write_text(json.dumps({"shapes": shapes, "imagePath": f"{name}.png",
                                                         "imageHeight": 40, "imageWidth": 40}))
    (folder / "b.png").write_bytes(b"garbage")
    small = ["--input-size", "64", "--fpn-channels", "16", "--num-prototypes", "4", "--batch-size", "2",
             "--val-images", "1", "--threads", "1"]
    assert main(["--data", f"labelme:{folder}", *small, "--iters", "2", "--workers", "1",
                 "--out", str(tmp_path / "lm.safetensors")]) == 2
    _one_line_error(capsys, "b.png: not a readable image")
    common = ["--data", "synthetic", "--train-images", "4", *small, "--workers", "0"]
    out = tmp_path / "m.safetensors"
    assert main([*common, "--iters", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "m.train" / "checkpoint.pth"
    assert main([*common, "--iters", "1", "--resume", str(ckpt), "--out", str(out)]) == 2
    _one_line_error(capsys, "is at step 2, past --iters 1; give --iters 2 or more")
    (tmp_path / "text.pth").write_text("hello")
    assert main([*common, "--iters", "2", "--resume", str(tmp_path / "text.pth"),
                 "--out", str(tmp_path / "n.safetensors")]) == 2  # (into m.train it would overwrite m's checkpoint)
    _one_line_error(capsys, "text.pth: not a PyTorch checkpoint")


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, capsys, sigint_at_call) -> None:
    """A real SIGINT in the middle of training (raised while the 4th batch is read, in the main process): the checkpoint
    holds the steps done so far and says how to continue; nothing done is lost."""
    data = _frames(2, size=64)
    trainer = _trainer(data, 10, tmp_path / "run", model=TINY_64)
    sigint_at_call(trainer, "train_step", 4)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 3
    ckpt = tmp_path / "run" / "checkpoint.pth"
    assert f"interrupted at step 3: checkpoint {ckpt}; continue with --resume {ckpt}" in capsys.readouterr().out
    resumed = _trainer(data, 10, tmp_path / "run2", model=TINY_64)
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 3


def test_cli_ctrl_c_prints_the_command_that_continues_the_run(tmp_path, capsys, sigint_at_call) -> None:
    """`rtseg train` interrupted during step 3: exit 130, no traceback, and the printed command (every option of
    the run, --resume added) continues it at step 2."""
    import shlex

    from rtseg.train.cli import main
    from rtseg.train.trainer import Trainer

    args = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
            "--num-prototypes", "4", "--iters", "3", "--batch-size", "2", "--workers", "0", "--val-images", "1",
            "--out", str(tmp_path / "m p.safetensors")]  # a space: the command must be quoted
    sigint_at_call(Trainer, "train_step", 3)
    assert main(args) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "rtseg train: interrupted" in captured.err
    command = captured.out.split("continue with ", 1)[1].strip()
    ckpt = tmp_path / "m p.train" / "checkpoint.pth"
    assert shlex.split(command) == ["rtseg", "train", *args, "--resume", str(ckpt)]
    assert main(shlex.split(command)[2:]) == 0  # (the armed call is behind us: no second SIGINT)
    assert f"resumed from {ckpt} at step 2" in capsys.readouterr().out
    from rtseg.train.cli import resume_command  # an earlier --resume is replaced, in either spelling
    assert resume_command(["--iters", "9", "--resume", "a.pth", "--resume=b.pth"], ckpt) == \
        shlex.join(["rtseg", "train", "--iters", "9", "--resume", str(ckpt)])


@pytest.fixture
def start_method() -> Iterator[Callable[[str], None]]:
    """``use(method)``: make ``method`` multiprocessing's default start method for the test (Python's is put back)."""
    previous = multiprocessing.get_start_method(allow_none=True)
    yield lambda method: multiprocessing.set_start_method(method, force=True)
    multiprocessing.set_start_method(previous, force=True)


def _loader_workers(trainer: Trainer) -> list[tuple[bool, set[int]]]:
    """Start the DataLoader workers of ``trainer`` (``Trainer._batches``) and take one batch; for each child process
    (/proc) this one then has that it had not before, the workers if they were forked from it: whether it runs this
    process's command line (a worker forked from this process, not a server's ``python -c …``) and the stop signals
    its main thread blocks (SigBlk), taken once it has sent a batch, i.e. after its ``worker_init_fn``."""
    before = _children()
    batches = trainer._batches()
    next(batches)
    own = Path("/proc/self/cmdline").read_bytes()
    found = []
    for pid in _children() - before:
        with contextlib.suppress(OSError):  # (ended meanwhile)
            mask = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1), 16)
            found.append((Path(f"/proc/{pid}/cmdline").read_bytes() == own,
                          {sig for sig in (signal.SIGINT, signal.SIGTERM) if mask >> (sig - 1) & 1}))
    del batches  # ends the workers
    return found


def _children() -> set[int]:
    """The processes (/proc) whose parent is this one, zombies left out."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # (ended meanwhile)
            state, parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            if int(parent) == os.getpid() and state != "Z":
                found.add(int(entry))
    return found


def test_loader_workers_are_forked_whatever_the_default_start_method(tmp_path, start_method) -> None:
    """With forkserver the default start method (Python 3.14's on Linux), the DataLoader workers were forked from a
    server process, not from the training process: they did not start with Ctrl-C and SIGTERM blocked (the guard
    against a stop request that reaches a worker before its ``worker_init_fn``, :func:`_workers_started`). Now they
    are forked from the training process (an explicit ``fork`` context), and after their start Ctrl-C is no longer
    blocked while SIGTERM stays blocked for the thread that waits for it."""
    start_method("forkserver")
    trainer = _trainer(_frames(2, size=64), 2, tmp_path, model=TINY_64)
    trainer.config = replace(trainer.config, num_workers=1)
    assert _loader_workers(trainer) == [(True, {signal.SIGTERM})]


@pytest.mark.parametrize("absent", [("sigwaitinfo",), ("sigwaitinfo", "pthread_sigmask")], ids=["macOS", "Windows"])
def test_loader_workers_without_sigwaitinfo_leave_sigterm_to_torch(absent, tmp_path, monkeypatch,
                                                                   start_method) -> None:
    """A platform whose ``signal`` module lacks ``sigwaitinfo`` (macOS) or ``pthread_sigmask`` too (Windows),
    simulated by deleting the attributes from the ``signal`` module here (monkeypatch; a forked worker inherits the
    deletion, hence the ``fork`` start method; the training process's platform checks see it too): without
    ``pthread_sigmask`` starting the workers raised AttributeError in the training process; without ``sigwaitinfo``
    each worker's thread that waits for SIGTERM died of an AttributeError and SIGTERM stayed blocked in the worker for
    good (torch's ``terminate()`` could not end a hung one). Now the batches come and the worker blocks neither
    signal: SIGTERM is left to torch's own handler."""
    for name in absent:
        monkeypatch.delattr(signal, name)
    start_method("fork")
    trainer = _trainer(_frames(2, size=64), 2, tmp_path, model=TINY_64)
    trainer.config = replace(trainer.config, num_workers=1)
    assert _loader_workers(trainer) == [(True, set())]


def test_resume_takes_the_new_learning_rate(tmp_path) -> None:
    """--lr on resume is honoured: the schedule is the new config's at the checkpoint's step."""
    data = _frames(2, size=64)
    first = _trainer(data, 40, tmp_path / "a", lr=1e-2, model=TINY_64)
    first.config = TrainConfig(**{**first.config.__dict__, "iters": 12})
    first.fit()
    ckpt = first.save_checkpoint()
    resumed = _trainer(data, 40, tmp_path / "b", lr=1e-3, model=TINY_64)
    resumed.load_checkpoint(ckpt)
    expected = 1e-3 * resumed.config.lr_factor(12)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    resumed.train_step(*_batch(data))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * resumed.config.lr_factor(13))


def test_resume_with_another_batch_size_expand_seed_or_warmup_says_it_takes_them(tmp_path) -> None:
    """A resumed run takes these from its command line, not from the checkpoint (its batches, augmentation, sample
    order and warm-up from the checkpoint's step on): was silent, as if the run went on as it began. Now one line
    names the checkpoint's values and the new ones; the same options say nothing, nor does a checkpoint of an older
    rtseg (which stored none)."""
    import io

    data = _frames(4, size=64)
    first = _trainer(data, 1, tmp_path / "a", model=TINY_64)
    first.fit()
    path = first.save_checkpoint()

    def resumed(config: TrainConfig, checkpoint: Path = path) -> tuple[Trainer, str]:
        log = io.StringIO()
        trainer = Trainer(model=Yolact(TINY_64), train_set=data, val_set=None, config=config, work_dir=tmp_path / "b",
                          log=log)
        trainer.load_checkpoint(checkpoint)
        return trainer, log.getvalue()

    changed = replace(first.config, iters=4, batch_size=2, seed=3, warmup_iters=5,
                      augment=replace(NO_AUGMENT, expand_max=2.5))
    trainer, said = resumed(changed)
    assert said == (f"checkpoint {path} was written with --batch-size 4, --expand-max 1, --seed 0, --warmup 10; this "
                    "run's --batch-size 2, --expand-max 2.5, --seed 3, --warmup 5 are taken from step 1 on\n")
    assert len(next(iter(trainer._batches()))[0]) == 2  # the new batch size
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(changed.lr * changed.lr_factor(1))  # warm-up 5
    assert resumed(replace(first.config, iters=4, lr=1e-3))[1] == ""  # --iters and --lr: not these options
    older = torch.load(path, weights_only=True)
    del older["options"]
    torch.save(older, tmp_path / "old.pth")
    assert resumed(changed, tmp_path / "old.pth")[1] == ""


@pytest.mark.parametrize("text, bad", [("0.7,nan", "nan"), ("inf", "inf"), ("0,0.5", "0"), ("0.5,1", "1"),
                                       ("-0.2", "-0.2"), ("1e400", "1e400"), ("0.5, 1.50", "1.50")])
def test_lr_steps_that_are_no_fractions_between_0_and_1_are_one_line(text, bad) -> None:
    """Each fraction goes through rtseg.ranges.number_problem (NaN, inf, 0 and 1 refused) and is named alone, as
    typed (was the parsed float: "1.0" for 1, "inf" for 1e400)."""
    from rtseg.train.cli import _lr_steps

    with pytest.raises(ConfigError, match=rf"^--lr-steps {re.escape(bad)}: must be a number in \(0, 1\) "
                                          r"\(fractions of --iters, e.g. 0.7,0.9\)$"):
        _lr_steps(text, 1000)
    with pytest.raises(ConfigError, match=r"^--lr-steps '0.9,0.9': fractions must increase, e.g. 0.7,0.9$"):
        _lr_steps("0.9,0.9", 1000)
    assert _lr_steps(" 0.7, 0.9 ", 1000) == (700, 900) and _lr_steps("0.5", 3) == (1,)


@pytest.mark.parametrize("field, value, expected", [
    ("iters", 0, "an integer in [1, 1000000000]"), ("iters", True, "an integer in [1, 1000000000]"),
    ("iters", 1.5, "an integer in [1, 1000000000]"), ("iters", 10**10, "an integer in [1, 1000000000]"),
    ("batch_size", 0, "an integer in [1, 1024]"), ("batch_size", np.bool_(True), "an integer in [1, 1024]"),
    ("batch_size", "8", "an integer in [1, 1024]"), ("warmup_iters", -1, "an integer >= 0"),
    ("val_every", 2.0, "an integer >= 0"), ("val_images", 0, "an integer >= 1"), ("ckpt_every", -5, "an integer >= 0"),
    ("log_every", 0, "an integer >= 1"), ("num_workers", 300, "an integer in [0, 256]"), ("seed", -1, "an integer >= 0"),
    ("lr", float("nan"), "a finite number >= 0"), ("lr", -1e-3, "a finite number >= 0"),
    ("lr", float("inf"), "a finite number >= 0"), ("momentum", 1.5, "a number in [0, 1]"),
    ("weight_decay", -1.0, "a finite number >= 0"), ("warmup_init", float("nan"), "a finite number >= 0"),
    ("gamma", 10.0, "a number in [0, 1]"), ("gamma", True, "a number in [0, 1]"),
    ("time_budget_s", 0.0, "a finite number > 0"), ("time_budget_s", float("nan"), "a finite number > 0"),
    ("time_budget_s", True, "a finite number > 0"),
])
def test_train_config_numbers_out_of_range_are_one_line(field, value, expected) -> None:
    """Was accepted (True as 1 step, NaN / inf learning rates, negative decays, a budget of NaN seconds), a ZeroDivision
    or TypeError in the middle of a run (log_every 0, val_every 2.0), or a bare "need iters >= 1" line."""
    with pytest.raises(ConfigError, match=rf"^TrainConfig: {field} must be {re.escape(expected)}, "
                                          rf"got {re.escape(repr(value))}$"):
        TrainConfig(**{"iters": 10, field: value})


@pytest.mark.parametrize("config, field, value, expected", [
    ("FcnTrainConfig", "steps", 0, "an integer in [1, 1000000000]"),
    ("FcnTrainConfig", "log_every", 0, "an integer >= 1"), ("FcnTrainConfig", "batch_size", True, "an integer in [1, 1024]"),
    ("FcnTrainConfig", "lr", float("nan"), "a finite number >= 0"),
    ("MsrcnnTrainConfig", "warmup", -1, "an integer >= 0"), ("MsrcnnTrainConfig", "ckpt_every", 2.5, "an integer >= 0"),
    ("MsrcnnTrainConfig", "momentum", 1.5, "a number in [0, 1]"),
    ("MsrcnnTrainConfig", "weight_decay", float("-inf"), "a finite number >= 0"),
])
def test_recipe_train_configs_check_their_numbers_like_train_config(config, field, value, expected) -> None:
    """The FCN / MS R-CNN train configs of the Python API took them all (log_every 0 was a ZeroDivisionError at the
    first logged step, NaN learning rates trained on)."""
    from rtseg.train.fcn import FcnTrainConfig
    from rtseg.train.msrcnn import MsrcnnTrainConfig

    cls = {"FcnTrainConfig": FcnTrainConfig, "MsrcnnTrainConfig": MsrcnnTrainConfig}[config]
    with pytest.raises(ConfigError, match=rf"^{config}: {field} must be {re.escape(expected)}, got {re.escape(repr(value))}$"):
        cls(**{field: value})
    assert cls().steps == 300  # the defaults pass


@pytest.mark.parametrize("steps", [(1.5,), (-1,), (True,), "70", (700, float("nan"))])
def test_train_config_lr_steps_that_are_no_step_numbers_are_one_line(steps) -> None:
    with pytest.raises(ConfigError, match=r"^TrainConfig: lr_steps must be integers >= 0 \(the steps at which the LR "
                                          rf"decays\), got {re.escape(repr(steps))}$"):
        TrainConfig(iters=1000, lr_steps=steps)


def test_train_config_takes_numpy_numbers_and_its_limits_are_the_cli_ones() -> None:
    from rtseg.train.cli import _NUMBER_RANGES
    from rtseg.train.trainer import INT_LIMITS

    c = TrainConfig(iters=np.int64(10), batch_size=np.int32(2), lr=np.float32(0.01), lr_steps=[np.int64(7)],
                    gamma=1, momentum=0, time_budget_s=np.float64(5.0), warmup_iters=0)
    assert c.iters == 10 and c.shortened(5).lr_steps == (3,)
    ranges = {option: (low, high) for option, low, high, _ in _NUMBER_RANGES}
    assert ranges["--iters"] == INT_LIMITS["iters"] == (1, 10**9) and ranges["--batch-size"] == (1, 1024)


def test_shortened_schedule_keeps_the_fractions() -> None:
    c = TrainConfig(iters=1000, lr_steps=(700, 900), warmup_iters=500)
    s = c.shortened(200)
    assert (s.iters, s.lr_steps, s.warmup_iters) == (200, (140, 180), 70)  # the LR reaches --lr before it decays
    assert c.shortened(900).warmup_iters == 315
    assert TrainConfig(iters=1000, lr_steps=(700, 900), warmup_iters=50).shortened(200).warmup_iters == 50
    assert c.shortened(5000).iters == 1000  # never longer than asked


def test_time_budget_shortens_the_run(tmp_path, capsys) -> None:
    """A 1-second budget on a 500-step run: the plan shrinks once the step time is known, and the run ends."""
    data = _frames(2, size=64)
    trainer = _trainer(data, 500, tmp_path, model=TINY_64)
    trainer.config = TrainConfig(**{**trainer.config.__dict__, "time_budget_s": 1.0, "log_every": 5,
                                    "lr_steps": (300,)})
    trainer.fit()
    assert trainer.step == trainer.config.iters < 500
    assert trainer.config.lr_steps[0] == 300 * trainer.config.iters // 500
    assert "time budget 1 s: training planned for" in capsys.readouterr().out


def test_time_budget_plan_grows_back_after_a_slow_spell(tmp_path) -> None:
    """The plan follows the measured step rate both ways, capped at the requested steps.

    The step-rate estimate is replaced by fixed answers (a timing stub: the real timer is
    exercised by the test above); what is tested is the planning.
    """
    data = _frames(2, size=64)
    trainer = _trainer(data, 1000, tmp_path)
    requested = TrainConfig(**{**trainer.config.__dict__, "lr_steps": (700, 900), "time_budget_s": 60.0})
    trainer.config = requested

    class Fits:
        budget = 60.0

        def __init__(self, n: int) -> None:
            self.n = n

        def steps_that_fit(self, step: int) -> int:
            return self.n

    trainer._replan(Fits(400), requested)  # slow spell
    assert (trainer.config.iters, trainer.config.lr_steps) == (400, (280, 360))
    trainer._replan(Fits(405), requested)  # < 2 %: kept
    assert trainer.config.iters == 400
    trainer._replan(Fits(800), requested)  # the machine is free again
    assert (trainer.config.iters, trainer.config.lr_steps) == (800, (560, 720))
    trainer._replan(Fits(5000), requested)  # never beyond what was asked
    assert trainer.config.iters == 1000
    trainer.step = 700  # past the first LR step: the plan is fixed
    trainer._replan(Fits(200), requested)
    assert trainer.config.iters == 1000


def test_cli_init_starts_from_given_weights(tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    from rtseg.train.cli import main

    common = ["--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
              "--num-prototypes", "4", "--batch-size", "2", "--workers", "0", "--val-images", "2"]
    first = tmp_path / "first.safetensors"
    assert main([*common, "--iters", "1", "--out", str(first)]) == 0
    second = tmp_path / "second.safetensors"
    assert main([*common, "--iters", "1", "--lr", "0", "--warmup", "0", "--init", str(first), "--out", str(second)]) == 0
    a, b = load_file(str(first)), load_file(str(second))
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)  # lr 0: unchanged
    assert "initialised from" in capsys.readouterr().out
    assert main([*common, "--iters", "1", "--init", str(first), "--resume", str(first), "--out", str(second)]) == 2
    assert main([*common, "--iters", "1", "--time-budget", "0", "--out", str(second)]) == 2
    capsys.readouterr()
    # Weights of another architecture: the options that would take them (was: 'does not match the expected
    # architecture' with the keys that differ, ~250 of them for an official R-50 file under the default backbone),
    # read from the manifest of rtseg weights or from the tensors of a .pth in the official layout.
    official = tmp_path / "official.pth"
    torch.save(load_file(str(first)), official)
    third = tmp_path / "third.safetensors"
    for init in (first, official):
        other = [*common, "--fpn-channels", "8", "--num-prototypes", "6"]  # the last value wins
        assert main([*other, "--iters", "1", "--init", str(init), "--out", str(third)]) == 2
        _one_line_error(capsys, f"--init {init}: weights of --fpn-channels 16 --num-prototypes 4, this run has "
                                "--fpn-channels 8 --num-prototypes 6; give --fpn-channels 16 --num-prototypes 4 to "
                                "start from them")


def test_cli_init_of_other_classes_fine_tunes_all_but_the_class_layers(tmp_path, capsys) -> None:
    """--init weights of 3 classes for --data of 6 (the standard fine-tuning case): every tensor but the class-sized
    ones (the confidences, the semantic head) loads, and one line names those left at their initialisation (was: a
    refusal blaming --backbone, --fpn-channels or --num-prototypes)."""
    from safetensors.torch import load_file

    from rtseg.train.cli import main
    from rtseg.weights import save_yolact

    init = tmp_path / "three.safetensors"
    save_yolact(init, Yolact(replace(TINY_64, fpn_channels=16, num_prototypes=4, num_classes=3)), ["a", "b", "c"])
    out = tmp_path / "six.safetensors"
    assert main(["--data", "synthetic", "--train-images", "2", "--input-size", "64", "--fpn-channels", "16",
                 "--num-prototypes", "4", "--batch-size", "2", "--workers", "0", "--val-images", "1", "--iters", "1",
                 "--lr", "0", "--warmup", "0", "--init", str(init), "--out", str(out)]) == 0
    fresh = ["prediction_layers.0.conf_layer.weight", "prediction_layers.0.conf_layer.bias", "semantic_seg_conv.weight",
             "semantic_seg_conv.bias"]
    assert f"--init {init}: 3 classes in the weights, 6 in --data: {', '.join(fresh)} start from their " \
           "initialisation (learnt anew)\n" in capsys.readouterr().out
    a, b = load_file(str(init)), load_file(str(out))
    assert sorted(k for k in a if a[k].shape != b[k].shape) == sorted(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a if k not in fresh and "running" not in k and "num_batches" not in k)


# -- batched loss vs the per-image reference ------------------------------------------------------
def _reference() -> tuple[dict, list[Target], dict[str, torch.Tensor]]:
    """Stored outputs, targets and per-image results (``tests/fixtures/make_loss_reference.py``)."""
    ref = np.load(Path(__file__).parent / "data" / "yolact_loss_reference.npz")
    outputs = {k[4:]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("out_")}
    targets = []
    for b in range(len(outputs["loc"])):
        crowd = torch.from_numpy(ref[f"t{b}_crowd"])
        targets.append(Target(boxes=torch.from_numpy(ref[f"t{b}_boxes"]), labels=torch.from_numpy(ref[f"t{b}_labels"]),
                              masks=torch.from_numpy(ref[f"t{b}_masks"]), crowd_boxes=crowd if len(crowd) else None))
    return outputs, targets, {k: torch.from_numpy(ref[k]) for k in ref.files if not k.startswith(("out_", "t"))}


def test_batched_matching_equals_per_image_reference() -> None:
    from rtseg.train.losses import TargetBatch
    from rtseg.train.matching import match_batch

    outputs, targets, ref = _reference()
    priors = make_priors(TINY)
    tb = TargetBatch.stack(targets)
    m = match_batch(tb.boxes, tb.labels, tb.valid, priors, crowd_boxes=tb.crowd_boxes, crowd_valid=tb.crowd_valid)
    assert int((ref["m4_conf_t"] > 0).sum()) > len(targets[4].labels)  # some boxes own several priors
    for b in range(len(targets)):
        conf_t = ref[f"m{b}_conf_t"]
        assert torch.equal(m.conf_t[b], conf_t), b
        pos = conf_t > 0
        assert torch.equal(m.idx_t[b][pos], ref[f"m{b}_idx_t"][pos]), b
        assert torch.allclose(m.loc_t[b][pos], ref[f"m{b}_loc_t"][pos], atol=1e-6), b
        single = match(targets[b].boxes, targets[b].labels, priors, crowd_boxes=targets[b].crowd_boxes)
        assert torch.equal(single.conf_t, conf_t), b


def test_batched_loss_equals_per_image_reference() -> None:
    outputs, targets, ref = _reference()
    losses = yolact_loss(outputs, targets, make_priors(TINY), LossConfig())
    for k, v in losses.items():
        assert float(v) == pytest.approx(float(ref[f"loss_{k}"]), rel=1e-5), k


def test_positive_sampling_caps_each_image_and_rescales() -> None:
    from rtseg.train.losses import sample_positives

    pos = torch.zeros(3, 50, dtype=torch.bool)
    pos[0, :30] = True  # over the cap of 8
    pos[1, [3, 7]] = True  # under it
    idx, slot_valid, scale = sample_positives(pos, 8)
    assert idx.shape == (3, 8) and slot_valid.sum(1).tolist() == [8, 2, 0]
    assert scale.tolist() == pytest.approx([30 / 8, 1.0, 1.0])
    assert len(set(idx[0].tolist())) == 8 and all(pos[0, i] for i in idx[0].tolist())
    assert sorted(idx[1, :2].tolist()) == [3, 7]
    seen = set()
    for _ in range(20):  # uniform draws: over 20 batches far more than 8 of the 30 positives appear
        seen |= set(sample_positives(pos, 8)[0][0].tolist())
    assert len(seen) > 20


@pytest.mark.parametrize("size", [128, 64])
def test_batch_preprocessing_equals_the_engine_preprocess(size: int) -> None:
    from rtseg.engines.yolact import YolactEngine

    engine = YolactEngine(model=Yolact(TINY), class_names=list(SyntheticScene.class_names))
    images = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    assert torch.equal(engine.preprocess_batch(images), engine.preprocess(list(images.numpy())))


def test_loss_of_a_batch_without_objects() -> None:
    outputs, _, _ = _reference()
    empty = Target(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 128, 128))
    losses = yolact_loss(outputs, [empty] * len(outputs["loc"]), make_priors(TINY), LossConfig())
    assert float(losses["mask"]) == 0.0 and float(losses["box"]) == 0.0
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["conf"]) == 0.0  # no positive, no OHEM
    assert float(losses["semantic"]) > 0  # every class map is pushed towards background


@pytest.mark.parametrize("side, cells", [(0.25, 9), (1, 9), (2.5, 25)])
def test_the_mask_loss_normalises_a_box_under_one_prototype_cell_as_a_one_cell_box(side: float, cells: int) -> None:
    """The mask term of a box ``side`` prototype cells a side, at cell (8, 8) of TINY_64's 16 × 16 prototypes, with
    every mask logit 0 and an empty ground-truth mask: ln 2 for each of the ``cells`` its crop keeps (padded by one
    cell: 3 × 3 for a box inside one cell), divided by its area, each side at least one cell (box_area_on_grid).
    From one cell up that is the official normalisation (the 2.5-cell box); a quarter-cell box weighs as a one-cell
    box (was divided by its area of 1/16 cell: 16 times the loss, which diverged training on tiny objects at small
    input sizes)."""
    torch.manual_seed(0)
    outputs = {k: v.detach() for k, v in Yolact(TINY_64).train()(torch.zeros(1, 3, 64, 64)).items()}
    assert outputs["proto"].shape[1:3] == (16, 16)
    outputs["proto"] = torch.zeros_like(outputs["proto"])  # every mask logit 0
    box = torch.tensor([[8, 8, 8 + side, 8 + side]]) / 16
    target = Target(boxes=box, labels=torch.zeros(1, dtype=torch.int64), masks=torch.zeros(1, 64, 64))
    mask = yolact_loss(outputs, [target], make_priors(TINY_64), LossConfig())["mask"]
    area = max(side, 1) ** 2
    assert float(mask) == pytest.approx(LossConfig().mask_weight * cells * math.log(2) / area, rel=1e-5)


def _frames_with_one_pixel_objects(size: int) -> list[Sample]:
    """The 128 px frames of ``_frames(4)``, each with two more objects of one pixel (class 0), resized to ``size`` px
    as the training augmentation ends (aug.resize), whose discard size (4/550 of the side) keeps them all."""
    samples = []
    for s in _frames(4).samples:
        tiny = np.array([[2, 2, 3, 3], [5, 120, 6, 121]], np.float32)
        masks = np.zeros((len(s) + 2, 128, 128), bool)
        masks[:len(s)] = s.masks
        for j, (x, y, _, _) in enumerate(tiny.astype(int)):
            masks[len(s) + j, y, x] = True
        grown = Sample(image=s.image, boxes=np.concatenate([s.boxes, tiny]), masks=masks,
                       class_ids=np.concatenate([s.class_ids, [0, 0]]))
        samples.append(aug.resize(grown, size))
        assert len(samples[-1]) == len(grown)
    return samples


def test_training_on_objects_under_one_prototype_cell_keeps_a_bounded_loss(tmp_path) -> None:
    """Real training steps (the default --lr 1e-3) on frames with one-pixel objects at a 64 px input: boxes of half a
    pixel, an eighth of a prototype cell a side, which the official discard size lets through. Every loss is
    finite and the mask term stays under the 38 of a one-cell box at logit 0 (6.125 × 9 × ln 2). Was: each such mask
    weighed 64 one-cell boxes (divided by its area of 1/64 cell), the mask term 460 at the first step; the same
    normalisation at --input-size 96 diverged the explorer's run (not finite for 20 steps in a row by step 47)."""
    from rtseg.train.trainer import collate

    trainer = _trainer(_frames(4), 8, tmp_path, lr=1e-3, model=TINY_64)
    batch = collate(_frames_with_one_pixel_objects(64))
    steps = [trainer.train_step(*batch) for _ in range(8)]
    assert all(math.isfinite(v) for losses in steps for v in losses.values()), steps
    assert max(losses["mask"] for losses in steps) < 6.125 * 9 * math.log(2), steps
    assert trainer.guard.skipped == 0


@pytest.mark.gpu
def test_batched_loss_on_cuda_equals_per_image_reference() -> None:
    from rtseg.train.losses import TargetBatch

    outputs, targets, ref = _reference()
    batch = TargetBatch.stack(targets).to("cuda")
    losses = yolact_loss({k: v.cuda() for k, v in outputs.items()}, batch, make_priors(TINY, "cuda"), LossConfig())
    for k, v in losses.items():
        assert float(v) == pytest.approx(float(ref[f"loss_{k}"]), rel=1e-4), k


def test_a_model_trained_on_a_coco_file_writes_its_category_ids_in_coco_results(tmp_path, capsys) -> None:
    """Trained on a COCO file whose category ids are 10, 20, … (not 1..N), the weights' manifest keeps them and
    `run.py --json x.json` writes them, so the results can be scored against that file; so does its checkpoint. (The command line runs in
    this process: its exit codes and one-line errors as a process are tests/test_cli.py's and tests/test_entry.py's.)"""
    import rtseg
    from rtseg.cli import main as run_main
    from rtseg.data.export import export_coco
    from rtseg.train.cli import main

    ann = export_coco(SyntheticScene(5, width=96, height=64, num_frames=4), tmp_path / "coco")
    data = json.loads(ann.read_text())
    for c in data["categories"]:
        c["id"] *= 10
    for a in data["annotations"]:
        a["category_id"] *= 10
    ann.write_text(json.dumps(data))
    out = tmp_path / "m.safetensors"
    assert main(["--data", f"coco:{ann}:{ann.parent}", "--input-size", "64", "--fpn-channels", "16",
                 "--num-prototypes", "4", "--iters", "1", "--batch-size", "2", "--workers", "0",
                 "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["category_ids"] == [10, 20, 30, 40, 50, 60]
    # its training checkpoint as weights gives the same ids (was: 1..6, the checkpoint lacked them)
    assert rtseg.load("yolact", weights=str(tmp_path / "m.train" / "checkpoint.pth")).category_ids == \
        (10, 20, 30, 40, 50, 60)
    results = tmp_path / "res.json"
    capsys.readouterr()
    rc = run_main(["--source", str(ann.parent / "frame_000000.png"), "--weights", str(out), "--score-threshold", "0",
                   "--json", str(results)])
    assert rc == 0, capsys.readouterr().err
    entries = json.loads(results.read_text())
    assert entries and {e["category_id"] for e in entries} <= {10, 20, 30, 40, 50, 60}
    names = [c["name"] for c in data["categories"]]
    assert all(e["category_id"] == 10 * (names.index(e["category_name"]) + 1) for e in entries)


@pytest.mark.parametrize("trainer", ["rtseg.train.cli", "rtseg.train.fcn_trainer", "rtseg.train.msrcnn_trainer"])
def test_every_trainer_refuses_a_weights_path_without_safetensors_before_training(trainer, tmp_path, capsys):
    """The FCN / MS R-CNN trainers refused it only after training and validating (and left x.train/ behind)."""
    import importlib

    main = importlib.import_module(trainer).main
    data = ["--data", "synthetic", "--iters", "2"] if trainer.endswith("cli") else []
    assert main([*data, "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trainer", ["fcn_trainer", "msrcnn_trainer"])
@pytest.mark.parametrize("there, said", [(None, "not found"), ("folder", "is a folder")])
def test_recipe_trainers_refuse_resume_without_a_checkpoint_before_importing_torch(trainer, there, said, tmp_path):
    """``--resume`` with no checkpoint file where the run of ``--out`` keeps it: was refused only after torch was
    imported and the data and the model were made (8-12 s); now one line before torch is imported (``-X importtime``
    lists every module imported), exit 2, nothing written."""
    import subprocess
    import sys

    if there == "folder":
        (tmp_path / "m.train" / "checkpoint.pth").mkdir(parents=True)
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", f"rtseg.train.{trainer}", "--out", "m.safetensors",
                          "--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    said_lines = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    assert "torch" not in imported and run.returncode == 2, (run.returncode, said_lines)
    assert said_lines == [f"{trainer}: error: --resume: checkpoint m.train/checkpoint.pth {said}; a run with --out "
                          "m.safetensors keeps its checkpoint there: give the --out of the run to continue, or drop "
                          "--resume to train afresh"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["checkpoint.pth", "m.train"] if there else [])


@pytest.mark.parametrize("option", ["--out", "--work-dir"])
def test_cli_output_path_given_twice_is_refused(option, tmp_path, capsys) -> None:
    """Was: the last one kept, the first silently dropped."""
    from rtseg.train.cli import main

    first, second = tmp_path / "a", tmp_path / "b"
    out = [] if option == "--out" else ["--out", str(tmp_path / "m.safetensors")]
    args = ["--data", "synthetic", "--iters", "1", *out]
    assert main([*args, option, f"{first}.safetensors", option, f"{second}.safetensors"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rtseg train: error: {option} given twice ({first}.safetensors, {second}.safetensors); give it once "
        "(see rtseg train --help)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_more_workers_than_cpus_is_one_warning_line(tmp_path) -> None:
    """--workers over the CPUs the process may use: one rtseg warning line naming both and what to give (torch printed
    its own paragraph twice, with the path of its source file). Run on one CPU (its affinity set in the child)."""
    import subprocess
    import sys

    script = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from rtseg.train.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", script, "--data", "synthetic", "--train-images", "4", "--input-size",
                        "64", "--fpn-channels", "16", "--num-prototypes", "4", "--iters", "1", "--batch-size", "2",
                        "--workers", "2", "--val-images", "2", "--out", str(tmp_path / "m.safetensors")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "rtseg train: warning: --workers 2: more data-loading workers than the 1 CPU this process may use; " \
           "steps may be slower, or stall (give --workers 1 or fewer)\n" in r.stderr, r.stderr
    assert "DataLoader will create" not in r.stderr and "UserWarning" not in r.stderr, r.stderr


def test_a_float_as_typed_survives_copy_and_pickle() -> None:
    """cliargs.TypedFloat (an option value that says itself as typed) copies and pickles as itself (copy.copy,
    deepcopy and pickle raised AttributeError: 'float' object has no attribute 'strip')."""
    import pickle

    from rtseg.cliargs import TypedFloat

    value = TypedFloat(" 1e-9")
    for copied in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert type(copied) is TypedFloat and copied == 1e-9 and str(copied) == "1e-9"
