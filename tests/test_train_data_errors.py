"""An error of the data mid-run (a corrupt image first read at step k) in the YOLACT and MS R-CNN trainers: the k - 1
steps done are saved as on Ctrl-C, and the one error line keeps the cause and adds where they are and the command
that continues them (was: the line alone, every step since the last checkpoint lost). Real trainings on real files,
no mocks: the garbage image is a file of garbage bytes."""
from __future__ import annotations

import math
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.data.coco import CocoDataset
from rtseg.data.export import export_coco
from rtseg.data.synthetic import SyntheticScene
from rtseg.errors import ConfigError, DatasetError
from rtseg.models.yolact import Yolact, YolactConfig
from rtseg.train.augment import AugmentConfig
from rtseg.train.trainer import TrainConfig, Trainer

CFG = YolactConfig(backbone="resnet18", num_classes=6, fpn_channels=16, num_prototypes=4).with_input_size(64)
NO_AUGMENT = AugmentConfig(photometric=False, expand_max=1.0, crop=False, mirror=False)
BATCH = 2
BAD_STEP = 3  # the 1-based step whose batch holds the garbage image: steps 1 and 2 are done before it


def _coco(tmp_path: Path, *, size: tuple[int, int] = (64, 64), n: int = 8) -> Path:
    """A COCO file of ``n`` synthetic frames (each with at least one object) in ``tmp_path / "coco"``."""
    w, h = size
    return export_coco(SyntheticScene(5, width=w, height=h, num_frames=n, max_objects=3, min_area=40),
                       tmp_path / "coco")


def _spoil(path: Path) -> bytes:
    """Make the image file ``path`` garbage; returns its good bytes (to write back: the data fixed)."""
    good = path.read_bytes()
    path.write_bytes(b"garbage, not a PNG")
    return good


def _yolact_bad_image(ann: Path, seed: int = 0) -> Path:
    """The image the YOLACT trainer first reads in step :data:`BAD_STEP` (its samples follow a permutation per
    epoch drawn from ``(seed, epoch)``, :class:`rtseg.train.trainer.AugmentedSamples`)."""
    data = CocoDataset(ann, ann.parent)
    order = np.random.default_rng([seed, 0]).permutation(len(data))
    return _image_file(data, int(order[(BAD_STEP - 1) * BATCH]))


def _image_file(data: CocoDataset, index: int) -> Path:
    """The file of image ``index`` of ``data``."""
    return data._files[data.image_ids[index]]


def _trainer(ann: Path, work_dir: Path, *, iters: int = 5, workers: int = 0) -> Trainer:
    torch.set_num_threads(1)  # (a second thread made these steps 5x slower on a busy 2-core machine)
    torch.manual_seed(0)
    config = TrainConfig(iters=iters, batch_size=BATCH, lr=1e-2, warmup_iters=2, warmup_init=1e-3, lr_steps=(4,),
                         num_workers=workers, log_every=50, ckpt_every=0, augment=NO_AUGMENT, amp="off")
    return Trainer(model=Yolact(CFG), train_set=CocoDataset(ann, ann.parent), val_set=None, config=config,
                   work_dir=work_dir)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_saves_the_steps_done_and_resume_continues(tmp_path, workers: int) -> None:
    """Step 3 reads a garbage image (in the training process, or in a DataLoader worker whose error torch re-raises
    with the worker's traceback): the error is one line naming the file, the checkpoint of step 2 and how to continue.
    Resumed before the image is fixed, the run fails at the same image without writing anything (no step was done);
    fixed, it ends at --iters with the weights of a run that never failed."""
    ann = _coco(tmp_path)
    bad = _yolact_bad_image(ann)
    good = _spoil(bad)
    ckpt = tmp_path / "run" / "checkpoint.pth"
    trainer = _trainer(ann, tmp_path / "run", workers=workers)
    children = set(multiprocessing.active_children())
    with pytest.raises(DatasetError) as info:
        trainer.fit()
    assert set(multiprocessing.active_children()) == children  # the worker ended, though the error (held) saw it
    message = str(info.value)
    assert message == (f"{bad}: not a readable image file; fix or remove the file and its annotations; stopped at "
                       f"step {BAD_STEP - 1}: checkpoint {ckpt}; continue with --resume {ckpt}"), message
    assert trainer.step == BAD_STEP - 1
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == BAD_STEP - 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                                 if v.is_floating_point())
    for k, v in trainer.model.state_dict().items():  # the weights of the steps done, nothing else
        assert torch.equal(state["model"][k], v), k

    written = ckpt.read_bytes()
    again = _trainer(ann, tmp_path / "run")
    again.load_checkpoint(ckpt)
    with pytest.raises(DatasetError) as info:
        again.fit()
    assert str(info.value) == f"{bad}: not a readable image file; fix or remove the file and its annotations"
    assert again.step == BAD_STEP - 1 and ckpt.read_bytes() == written

    bad.write_bytes(good)
    resumed = _trainer(ann, tmp_path / "run")
    resumed.load_checkpoint(ckpt)
    resumed.fit()
    assert resumed.step == 5 and torch.load(ckpt, weights_only=True)["step"] == 5
    whole = _trainer(ann, tmp_path / "whole")
    whole.fit()
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), k  # (rounding: see test_train's resume test)


def test_a_corrupt_image_after_the_weights_went_non_finite_saves_nothing(tmp_path) -> None:
    """The weights are NaN after step 1 (a layer's bias poisoned once its output is computed; the losses after it are
    skipped as not finite): the data error at step 3 writes no checkpoint (never one with non-finite weights), and
    its one line keeps the cause and says the run diverged."""
    ann = _coco(tmp_path)
    bad = _yolact_bad_image(ann)
    _spoil(bad)
    trainer = _trainer(ann, tmp_path / "run")
    layer = trainer.model.semantic_seg_conv

    def poison(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        with torch.no_grad():
            module.bias.fill_(math.nan)

    layer.register_forward_hook(poison)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: not a readable image file; fix or remove the "
                                          rf"file and its annotations; training diverged: the weights are not finite "
                                          rf"at step {BAD_STEP - 1}, so checkpoint .* was not written .*lower --lr"):
        trainer.fit()
    assert trainer.guard.skipped == BAD_STEP - 2 and not (tmp_path / "run" / "checkpoint.pth").exists()


def test_cli_a_corrupt_image_read_in_a_worker_is_one_line_with_the_command_that_continues(tmp_path) -> None:
    """`python -m rtseg train --workers 1` on a COCO set with a garbage image read at step 3: exit 2, one stderr
    line (no traceback) naming the file, the checkpoint of step 2 and the whole command with --resume; that command,
    run once the image is fixed, ends the run at --iters."""
    from rtseg.train.cli import main

    ann = _coco(tmp_path)
    bad = _yolact_bad_image(ann)
    good = _spoil(bad)
    out = tmp_path / "m.safetensors"
    args = ["--data", f"coco:{ann}:{ann.parent}", "--input-size", "64", "--fpn-channels", "16", "--num-prototypes",
            "4", "--batch-size", str(BATCH), "--iters", "4", "--warmup", "2", "--workers", "1", "--threads", "1",
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "rtseg", "train", *args], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    ckpt = tmp_path / "m.train" / "checkpoint.pth"
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    prefix = (f"rtseg train: error: {bad}: not a readable image file; fix or remove the file and its annotations; "
              f"stopped at step {BAD_STEP - 1}: checkpoint {ckpt}; continue with ")
    assert lines[0].startswith(prefix), lines[0]
    command = shlex.split(lines[0][len(prefix):])
    assert command == ["rtseg", "train", *args, "--resume", str(ckpt)]
    assert torch.load(ckpt, weights_only=True)["step"] == BAD_STEP - 1 and not out.exists()

    bad.write_bytes(good)
    assert main(command[2:]) == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 4 and out.is_file()


def test_msrcnn_a_corrupt_image_saves_the_steps_done_and_resume_continues(tmp_path) -> None:
    """The recipes' shared step loop (run_steps; the MS R-CNN trainer reads its images step by step): a garbage image
    first read at step k saves the k - 1 steps done, with the line that continues them; fixed, --resume ends the run."""
    from rtseg.engines.msrcnn import MsrcnnEngine
    from rtseg.models.msrcnn import MsrcnnConfig
    from rtseg.train.msrcnn_trainer import MsrcnnTrainConfig, train_msrcnn

    ann = _coco(tmp_path, size=(80, 64), n=4)
    data = CocoDataset(ann, ann.parent)
    cfg = MsrcnnTrainConfig(steps=5, batch_size=1, lr=0.01, warmup=2, ckpt_every=0)
    first_read: dict[int, int] = {}  # image index -> the 0-based step that first reads it (batches of (seed, step))
    for step in range(cfg.steps):
        for i in np.random.default_rng([cfg.seed, step]).choice(len(data), cfg.batch_size, replace=False):
            first_read.setdefault(int(i), step)
    index, done = max(((i, s) for i, s in first_read.items() if s < cfg.steps - 1), key=lambda item: item[1])
    assert done >= 1, first_read  # (seed 0: image 1 first read at step 3)
    bad = _image_file(data, index)
    good = _spoil(bad)

    def engine() -> MsrcnnEngine:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = MsrcnnConfig(num_classes=6, backbone="resnet18", min_size=64, max_size=80,
                             anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20, rois_per_image=32,
                             proposals_per_image=100)
        return MsrcnnEngine.from_config(model, class_names=list(SyntheticScene.class_names))

    ckpt = tmp_path / "run.train" / "checkpoint.pth"
    with pytest.raises(DatasetError) as info:
        train_msrcnn(engine(), CocoDataset(ann, ann.parent), cfg, log=False, checkpoint=ckpt)
    assert str(info.value) == (f"{bad}: not a readable image file; fix or remove the file and its annotations; "
                               f"stopped at step {done}: checkpoint {ckpt}; continue with --resume (and the same --out)")
    assert torch.load(ckpt, weights_only=True)["step"] == done
    bad.write_bytes(good)
    history = train_msrcnn(engine(), CocoDataset(ann, ann.parent), cfg, log=False, checkpoint=ckpt, resume=True)
    assert len(history) == cfg.steps - done and torch.load(ckpt, weights_only=True)["step"] == cfg.steps


def test_a_diverged_recipe_run_saves_no_checkpoint_of_its_steps(tmp_path) -> None:
    """A divergence (the guard's limit of non-finite losses) is a ConfigError too, but it is no error of the data:
    the steps done before it are not saved (with ckpt_every 0 there is no checkpoint at all), the line is as before."""
    from rtseg.data.synthetic import CLASSES, SyntheticDataset
    from rtseg.engines.fcn import FcnEngine
    from rtseg.models.fcn import FcnConfig
    from rtseg.train.checkpoint import DivergedError
    from rtseg.train.fcn_trainer import FcnTrainConfig, train_fcn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = ["background", *CLASSES]
    engine = FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=len(names), width=0.0625), class_names=names)
    data = SyntheticDataset.split("train", 4, width=40, height=32, max_objects=3)
    ckpt = tmp_path / "ckpt.pth"
    cfg = FcnTrainConfig(steps=50, batch_size=2, lr=1e30, ckpt_every=0, max_nonfinite=4)
    with pytest.raises(DivergedError, match=r"^training diverged: the loss or its gradients were not finite for 4 steps "
                                            r"in a row \(to step 5\); lower --lr \(now 1e\+30\) or check the data, then train "
                                            r"again$"):
        train_fcn(engine, data, cfg, log=False, checkpoint=ckpt)
    assert not ckpt.exists()


def test_an_error_re_raised_from_a_loader_worker_keeps_its_whole_message() -> None:
    """torch re-raises a worker's error as ``Caught X in DataLoader worker process N.`` + the worker's traceback; the
    error that ends the run is the original message, one of several lines too (was: only its last line)."""
    from torch._utils import ExceptionWrapper

    from rtseg.train.checkpoint import save_on_error

    try:
        try:
            raise DatasetError("a.png: not a readable image file:\nsecond line")
        except DatasetError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    except DatasetError as exc:
        wrapped = exc
    assert "Original Traceback" in str(wrapped)
    cleaned = save_on_error(wrapped, None, step=3, saved=0, parts={}, resume_hint="--resume")
    assert type(cleaned) is DatasetError and str(cleaned) == "a.png: not a readable image file:\nsecond line"
