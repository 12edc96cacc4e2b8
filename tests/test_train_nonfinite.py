"""A non-finite loss in the FCN and MS R-CNN trainers (the shared NonFiniteGuard of rtseg.train.checkpoint, which
``rtseg train`` uses too: see tests/test_train.py): the step updates nothing, progress lines count it, 20 in a row
stop the run with one line, and no checkpoint is written with non-finite weights."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from rtseg.data.synthetic import CLASSES, SyntheticDataset
from rtseg.engines.fcn import FcnEngine
from rtseg.engines.msrcnn import MsrcnnEngine
from rtseg.errors import ConfigError
from rtseg.models.fcn import FcnConfig
from rtseg.models.msrcnn import MsrcnnConfig
from rtseg.train import fcn_trainer, msrcnn_trainer
from rtseg.train.checkpoint import NonFiniteGuard, gradient_norm, save_checkpoint
from rtseg.train.fcn_trainer import FcnTrainConfig, train_fcn
from rtseg.train.msrcnn_trainer import MsrcnnTrainConfig, train_msrcnn

NAMES = ["background", *CLASSES]
DIVERGED = (r"training diverged: the loss or its gradients were not finite for {n} steps in a row "
            r"\(to step {step}\); lower --lr \(now 1e\+30\) or check the data, then train again")


def _fcn() -> FcnEngine:
    torch.manual_seed(0)
    return FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=len(NAMES), width=0.0625), class_names=NAMES)


def _msrcnn() -> MsrcnnEngine:
    torch.manual_seed(0)
    cfg = MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80,
                       anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20, rois_per_image=32,
                       proposals_per_image=100)
    return MsrcnnEngine.from_config(cfg, class_names=list(CLASSES))


def _fcn_data() -> SyntheticDataset:
    return SyntheticDataset.split("train", 4, width=40, height=32, max_objects=3)


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_guard_counts_in_a_row_and_stops_at_the_limit() -> None:
    guard = NonFiniteGuard(lr=0.5, limit=3)
    assert guard.admit(1.0, step=1) and guard.note() == ""
    assert not guard.admit(math.nan, step=2) and not guard.admit(math.inf, step=3)
    assert guard.admit(2.0, step=4) and guard.in_a_row == 2  # a finite loss goes on to its gradients' check
    assert guard.admit_gradients(None, step=4) and guard.in_a_row == 0  # an update breaks the row
    assert not guard.admit(-math.inf, step=5) and not guard.admit(math.nan, step=6)
    assert guard.note() == " (4 steps skipped: not finite)"
    with pytest.raises(ConfigError, match=r"not finite for 3 steps in a row \(to step 7\); lower --lr \(now 0.5\) .*"
                                          r"--resume a checkpoint from before step 4\)$"):
        guard.admit(math.nan, step=7)
    with pytest.raises(ConfigError, match=r"^max_nonfinite must be an integer >= 1, got 0$"):
        NonFiniteGuard(lr=1.0, limit=0)


def test_a_non_finite_gradient_skips_the_step_and_counts_in_the_row() -> None:
    """A finite loss whose gradients are not finite (as oneDNN's bfloat16 convolution backward gave now and then
    at 1×1 feature maps) is a skipped step like a non-finite loss: counted in the same row, same limit."""
    guard = NonFiniteGuard(lr=0.5, limit=3)
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.tensor([1.0, math.nan, 0.0])
    assert guard.admit(1.0, step=1) and not guard.admit_gradients(gradient_norm([w]), step=1)
    assert not guard.admit(math.inf, step=2) and guard.in_a_row == 2
    assert guard.note() == " (2 steps skipped: not finite)"
    w.grad = torch.tensor([1.0, 2.0, 3.0])
    no_grad = torch.nn.Parameter(torch.ones(1))  # left out of the norm
    assert guard.admit_gradients(gradient_norm([w, no_grad]), step=3) and guard.in_a_row == 0
    w.grad = torch.tensor([math.inf, 0.0, 0.0])
    assert not guard.admit_gradients(gradient_norm([w]), step=4) and not guard.admit(math.nan, step=5)
    with pytest.raises(ConfigError, match=r"the loss or its gradients were not finite for 3 steps in a row "
                                          r"\(to step 6\).* before step 3\)$"):
        guard.admit_gradients(gradient_norm([w]), step=6)


def test_an_fcn_step_with_a_nan_gradient_updates_nothing(tmp_path) -> None:
    """Step 2's gradient of one weight is NaN while its loss is finite (a hook on the real backward pass makes it so:
    the oneDNN fault that does this is not reproducible on demand): Adam steps 2 of 3 times and the weights stay
    finite. Before, the NaN reached every weight at step 2's update."""
    data, engine = _fcn_data(), _fcn()
    weight = next(engine.model.parameters())
    calls = [0]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad * math.nan if calls[0] == 2 else grad

    weight.register_hook(poison)
    ckpt = tmp_path / "ckpt.pth"
    losses = train_fcn(engine, data, FcnTrainConfig(steps=3, batch_size=2, lr=3e-3), log=False, checkpoint=ckpt)
    assert calls[0] == 3 and len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert torch.load(ckpt, weights_only=True)["optimizer"]["state"][0]["step"] == 2  # Adam skipped step 2


def test_a_skipped_step_leaves_weights_and_optimizer_alone_and_training_goes_on(tmp_path, capsys, monkeypatch):
    """Batches 2 and 3 arrive corrupted (NaN pixels, as a broken decoder would give: uint8 images cannot hold
    NaN, so the engine's real preprocessing is wrapped to poison them): those steps update nothing, the run
    finishes, and its progress lines count the skipped steps."""
    data, engine = _fcn_data(), _fcn()
    preprocess, calls, weights = engine.preprocess, [0], {}

    def poisoned(images):
        calls[0] += 1
        weights[calls[0] - 1] = {k: v.clone() for k, v in engine.model.state_dict().items()}  # after step n - 1
        x = preprocess(images)
        return x * math.nan if calls[0] in (2, 3) else x

    monkeypatch.setattr(engine, "preprocess", poisoned)
    ckpt = tmp_path / "ckpt.pth"
    cfg = FcnTrainConfig(steps=6, batch_size=2, lr=3e-3, log_every=3, ckpt_every=3, max_nonfinite=3)
    losses = train_fcn(engine, data, cfg, checkpoint=ckpt)
    assert [math.isfinite(v) for v in losses] == [True, False, False, True, True, True]
    out = capsys.readouterr().out
    assert "step 3/6 loss " in out and out.count("(2 steps skipped: not finite)") == 2
    assert "nan" not in out  # a line averages the steps that were not skipped
    for k, v in weights[1].items():  # steps 2 and 3 left step 1's weights as they were; step 4 changed them
        torch.testing.assert_close(weights[3][k], v, rtol=0, atol=0, msg=k)
    assert not all(torch.equal(weights[4][k], v) for k, v in weights[1].items())
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6 and state["optimizer"]["state"][0]["step"] == 4  # Adam stepped 4 times of 6


def test_a_diverged_fcn_run_stops_and_its_checkpoints_stay_finite(tmp_path) -> None:
    """lr 1e30: step 1's update throws the weights to ~1e30 (still finite), every later loss overflows. Those
    steps are skipped, so the checkpoints written each step keep step 1's weights and Adam's one step; the
    max_nonfinite-th in a row stops the run with the line to lower the LR."""
    data, ckpt = _fcn_data(), tmp_path / "ckpt.pth"
    one = _fcn()
    train_fcn(one, data, FcnTrainConfig(steps=1, batch_size=2, lr=1e30), log=False)
    engine = _fcn()
    cfg = FcnTrainConfig(steps=50, batch_size=2, lr=1e30, ckpt_every=1, max_nonfinite=4)
    with pytest.raises(ConfigError, match=DIVERGED.format(n=4, step=5) + "$"):
        train_fcn(engine, data, cfg, log=False, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4 and state["optimizer"]["state"][0]["step"] == 1 and _finite(state["model"])
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(engine.model.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_no_checkpoint_is_written_with_non_finite_weights(tmp_path) -> None:
    """A layer whose bias turns NaN once its output is computed (the loss stays finite): the weights are NaN after
    the first step. The checkpoint due after it is refused, and one already there stays as it was."""
    data, ckpt = _fcn_data(), tmp_path / "ckpt.pth"
    train_fcn(_fcn(), data, FcnTrainConfig(steps=1, batch_size=2), log=False, checkpoint=ckpt)
    before = ckpt.read_bytes()
    engine = _fcn()
    layer = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)

    def poison(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        with torch.no_grad():
            module.bias.fill_(math.nan)

    layer.register_forward_hook(poison)
    with pytest.raises(ConfigError, match=rf"training diverged: the weights are not finite at step 1, so checkpoint "
                                          rf"{ckpt} was not written .*lower --lr"):
        train_fcn(engine, data, FcnTrainConfig(steps=3, batch_size=2, ckpt_every=1), log=False, checkpoint=ckpt)
    assert not _finite(engine.model.state_dict()) and ckpt.read_bytes() == before
    with pytest.raises(ConfigError, match="weights are not finite at step 7"):  # the Ctrl-C save goes through it too
        save_checkpoint(ckpt, step=7, parts={"model": engine.model})


def test_a_diverged_msrcnn_run_stops_and_its_checkpoints_stay_finite(tmp_path) -> None:
    data, ckpt = SyntheticDataset.split("train", 2, width=80, height=64, max_objects=3), tmp_path / "ckpt.pth"
    engine = _msrcnn()
    cfg = MsrcnnTrainConfig(steps=50, batch_size=1, lr=1e30, warmup=1, ckpt_every=1, max_nonfinite=2)
    with pytest.raises(ConfigError, match=DIVERGED.format(n=2, step=r"\d+")):
        train_msrcnn(engine, data, cfg, log=False, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert _finite(state["model"]) and _finite(engine.model.state_dict())
    for k, v in engine.model.state_dict().items():  # the skipped steps after the checkpoint changed nothing
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0, msg=k)


def _cli(module: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", f"rtseg.train.{module}", "--out", str(tmp_path / "m.safetensors"),
                           "--images", "8", "--size", "64", "48", "--steps", "60", *args],
                          check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.parametrize("module", ["fcn_trainer", "msrcnn_trainer"])
def test_cli_of_a_diverging_run_is_one_line(module, tmp_path) -> None:
    """The whole command: 20 steps in a row with a non-finite loss → exit 2, one line, no traceback, no weights."""
    run = _cli(module, tmp_path, "--lr", "1e30")
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr
    assert lines[-1].startswith(f"{module}: error: training diverged: the loss or its gradients were not finite for "
                                "20 steps in a row")
    assert "lower --lr (now 1e+30)" in lines[-1]
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("module", [fcn_trainer, msrcnn_trainer])
@pytest.mark.parametrize("lr", ["inf", "nan", "-1"])
def test_cli_refuses_a_learning_rate_that_is_not_a_number_from_0(module, lr, tmp_path, capsys) -> None:
    assert module.main(["--out", str(tmp_path / "m.safetensors"), "--lr", lr]) == 2
    prog = module.__name__.rsplit(".", 1)[1]
    assert capsys.readouterr().err.strip() == (f"{prog}: error: --lr {lr}: must be a finite number >= 0 "  # as typed
                                               "(the learning rate, e.g. 1e-3)")
