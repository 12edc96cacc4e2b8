"""``--resume`` of the recipe trainers (``python -m rtseg.train.fcn_trainer`` / ``msrcnn_trainer``): the options
that fix a run's model and data (its recipe) are stored in its checkpoints, and a resume that changes one is refused
with one line naming each, as ``rtseg train`` refuses a checkpoint of other classes or model options; more --steps,
another --lr (which takes effect) or --threads go on. The FCN trainer runs here through its ``main`` (a tiny model,
2-3 steps); MS R-CNN's full command validates for minutes, so its resume is tested through its training function
(tests/test_msrcnn.py)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from rtseg.train.fcn_trainer import main
from rtseg.train.recipe import recipe_checkpoint

#: The first run's options (argparse keeps the last of an option given twice: a test's changes follow these).
FCN_RUN = ["--steps", "2", "--images", "2", "--size", "32", "32", "--width", "0.01"]
#: Its recipe, as its checkpoints store it.
FCN_RECIPE = {"--images": 2, "--size": [32, 32], "--arch": "fcn8s", "--width": 0.01}
REFUSED = ("fcn_trainer: error: checkpoint {} was written by a run with other data or options ({}); resume with that "
           "run's data and options (the checkpoint's values) or train afresh without --resume")


@pytest.fixture(scope="module")
def fcn_checkpoint(tmp_path_factory) -> bytes:
    """The checkpoint of a 2-step ``fcn_trainer`` run of :data:`FCN_RUN`, run once for the module; each test puts a
    copy where its own ``--out`` keeps it (:func:`_placed`)."""
    out = tmp_path_factory.mktemp("fcn") / "m.safetensors"
    assert main(["--out", str(out), *FCN_RUN]) == 0
    return recipe_checkpoint(out).read_bytes()


def _placed(tmp_path: Path, checkpoint: bytes) -> tuple[Path, Path]:
    """(--out, its checkpoint) of a run in ``tmp_path`` whose checkpoint holds ``checkpoint``."""
    out = tmp_path / "m.safetensors"
    ckpt = recipe_checkpoint(out)
    ckpt.parent.mkdir()
    ckpt.write_bytes(checkpoint)
    return out, ckpt


@pytest.mark.parametrize("change, said", [
    (["--size", "48", "32"], "--size [32, 32] in the checkpoint, [48, 32] now"),
    (["--arch", "fcn16s", "--width", "0.02"],
     "--arch 'fcn8s' in the checkpoint, 'fcn16s' now; --width 0.01 in the checkpoint, 0.02 now"),
    (["--images", "3"], "--images 2 in the checkpoint, 3 now"),
])
def test_resume_with_other_recipe_options_is_refused_naming_each(tmp_path, capsys, fcn_checkpoint, change, said):
    """Was: another --size or --images trained on silently (at the new size, on other images), another --width or
    --arch was a generic 'mis-shaped' line. Now one line with each option's two values and what to do, exit 2,
    nothing written."""
    out, ckpt = _placed(tmp_path, fcn_checkpoint)
    capsys.readouterr()
    assert main(["--out", str(out), *FCN_RUN, *change, "--resume"]) == 2
    assert capsys.readouterr().err.splitlines() == [REFUSED.format(ckpt, said)]
    assert ckpt.read_bytes() == fcn_checkpoint and sorted(tmp_path.rglob("*")) == [ckpt.parent, ckpt]


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path, capsys, fcn_checkpoint):
    """Was: --steps 1 on a checkpoint at step 2 trained nothing and wrote the 2-step model with meta steps 1. Now
    refused as ``rtseg train`` refuses --iters below its checkpoint's step."""
    out, ckpt = _placed(tmp_path, fcn_checkpoint)
    capsys.readouterr()
    assert main(["--out", str(out), *FCN_RUN, "--steps", "1", "--resume"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fcn_trainer: error: checkpoint {ckpt} is at step 2, past --steps 1; give --steps 2 or more to continue it"]
    assert ckpt.read_bytes() == fcn_checkpoint and sorted(tmp_path.rglob("*")) == [ckpt.parent, ckpt]


def test_resume_with_more_steps_and_another_lr_continues_and_keeps_the_recipe(tmp_path, fcn_checkpoint):
    """More --steps continue the run and another --lr takes effect (was: silently ignored, the optimizer's state in
    the checkpoint holding the old rate), as ``rtseg train`` takes more --iters and a new --lr (other --threads are no
    recipe option either: the last test); the checkpoints written go on holding the run's recipe, and the weights
    say their steps."""
    out, ckpt = _placed(tmp_path, fcn_checkpoint)
    assert torch.load(ckpt, weights_only=True)["recipe"] == FCN_RECIPE
    assert main(["--out", str(out), *FCN_RUN, "--steps", "3", "--lr", "0.01", "--resume"]) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and state["recipe"] == FCN_RECIPE
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [0.01]
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["steps"] == 3


def test_a_checkpoint_without_a_recipe_resumes_and_then_holds_one(tmp_path, capsys, fcn_checkpoint):
    """A checkpoint of an older rtseg (no recipe stored) resumes unchecked, as ``rtseg train`` resumes one without its
    model config (another --width or --arch is still caught by the weights' shapes); the checkpoint the resumed run
    writes holds the recipe, so that a later resume with other options is refused."""
    out, ckpt = _placed(tmp_path, fcn_checkpoint)
    state = torch.load(ckpt, weights_only=True)
    del state["recipe"]
    torch.save(state, ckpt)
    assert main(["--out", str(out), *FCN_RUN, "--steps", "3", "--resume"]) == 0
    assert torch.load(ckpt, weights_only=True)["recipe"] == FCN_RECIPE
    capsys.readouterr()
    assert main(["--out", str(out), *FCN_RUN, "--size", "48", "32", "--steps", "4", "--resume"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        REFUSED.format(ckpt, "--size [32, 32] in the checkpoint, [48, 32] now")]


@pytest.mark.parametrize("trainer, recipe", [
    ("fcn_trainer", {"--images": 160, "--size": [128, 96], "--arch": "fcn8s", "--width": 0.125}),
    ("msrcnn_trainer", {"--images": 200, "--size": [160, 120], "--backbone": "resnet18"}),
])
def test_the_recipe_is_every_option_but_out_steps_lr_and_threads(tmp_path, trainer, recipe):
    """The options a resumed run must repeat: all but --out, --steps, --lr, --threads (and --resume), given or not."""
    parse = importlib.import_module(f"rtseg.train.{trainer}").parse
    assert parse(["--out", str(tmp_path / "a.safetensors")]).recipe == recipe
    assert parse(["--out", str(tmp_path / "b.safetensors"), "--steps", "9", "--threads", "3", "--size", "128", "96",
                  "--lr", "0.5"]).recipe == {**recipe, "--size": [128, 96]}


@pytest.mark.parametrize("trainer", ["fcn_trainer", "msrcnn_trainer"])
def test_a_fresh_run_refuses_an_out_whose_folder_holds_a_checkpoint(tmp_path, capsys, fcn_checkpoint, trainer):
    """Was: a run without --resume and the --out of an earlier (stopped) run trained afresh and its first checkpoint
    overwrote that run's, the only way to continue it, without a word. Now one line before anything is built or
    written, naming the checkpoint and its step and what to do; the earlier run's files stay as they were. (The
    check comes before either trainer's model: the FCN checkpoint stands for both.)"""
    out, ckpt = _placed(tmp_path, fcn_checkpoint)
    capsys.readouterr()
    assert importlib.import_module(f"rtseg.train.{trainer}").main(["--out", str(out), "--steps", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{trainer}: error: --out {out}: its checkpoint folder {ckpt.parent} holds the checkpoint of an earlier run "
        f"({ckpt} at step 2), which this run would overwrite; continue that run with --resume, give another --out, "
        f"or delete {ckpt.parent} to train afresh"]
    assert ckpt.read_bytes() == fcn_checkpoint and sorted(tmp_path.rglob("*")) == [ckpt.parent, ckpt]
