"""The command line shared by the trainers: the options and checks of the small synthetic-benchmark trainers
(FCN-8s, Mask Scoring R-CNN; :func:`recipe_parser`, :func:`parse_recipe`) and the recipe a run's checkpoints store
(:func:`recipe_of`, :data:`MAY_CHANGE_ON_RESUME`), ``--lr``'s range and ``--out``'s check
(:data:`LR_RANGE`, :func:`weights_out`), the output folders' checks before training (no earlier run's checkpoint
overwritten by a fresh start) and the command that continues a stopped run (:func:`check_outputs`,
:func:`check_no_earlier_run`, :func:`continue_command`; ``rtseg train`` too), and ``rtseg train``'s training choices
and limits (:data:`AMP_MODES`, :data:`INT_LIMITS`).

Light (no torch at its top): the entry modules parse and check their arguments with it before they import their
trainer, so that ``--help`` and a bad option answer at once (:func:`rtseg.entry.run_command`).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from rtseg.cliargs import NumberRange, Parser, TypedFloat, check_ranges, plain_floats
from rtseg.errors import ConfigError, make_folder
from rtseg.manifest import manifest_path
from rtseg.outputs import check_not_the_demo_model
from rtseg.userfiles import check_input_file

LR_RANGE: NumberRange = ("--lr", 0, None, " (the learning rate, e.g. 1e-3)")
"""The range of ``--lr`` in every trainer's command line (:func:`rtseg.cliargs.check_ranges`)."""
RECIPE_LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 10**9), "batch_size": (1, 1024), "seed": (0, math.inf), "log_every": (1, math.inf),
    "ckpt_every": (0, math.inf)}
"""Least and most value (inf: no limit) of each integer field every recipe's train config has
(:class:`~rtseg.train.fcn.FcnTrainConfig`, :class:`~rtseg.train.msrcnn.MsrcnnTrainConfig`)."""
RECIPE_RANGES: tuple[NumberRange, ...] = (
    LR_RANGE,
    ("--steps", *RECIPE_LIMITS["steps"], ""),
    ("--images", 1, 10**5, " (the training images are held in memory)"),
    ("--size", 32, 2048, " pixels (a synthetic frame is at least 32 px a side)"),
    ("--threads", 1, 1024, ""),
)
"""The range of each numeric option every recipe has."""
AMP_MODES = ("auto", "bf16", "off")
"""The mixed-precision modes of ``rtseg train --amp`` (:class:`~rtseg.train.trainer.TrainConfig`'s ``amp``)."""
INT_LIMITS: dict[str, tuple[int, float]] = {
    "iters": (1, 10**9), "batch_size": (1, 1024), "warmup_iters": (0, math.inf), "val_every": (0, math.inf),
    "val_images": (1, math.inf), "ckpt_every": (0, math.inf), "log_every": (1, math.inf), "num_workers": (0, 256),
    "seed": (0, math.inf)}
"""Least and most value (inf: no limit) of each integer field of :class:`~rtseg.train.trainer.TrainConfig` (the
YOLACT trainer's); ``rtseg train`` checks the options that set them against these too."""
MAY_CHANGE_ON_RESUME = ("--out", "--steps", "--lr", "--threads", "--resume")
"""The options of a recipe's command line a resumed run may give other values of, as ``rtseg train`` may resume
with another --iters, --lr, --workers, --threads or output path: ``--out`` (where the checkpoint is), more ``--steps``
(fewer than the checkpoint's step are refused), ``--lr`` (it takes effect:
:func:`rtseg.train.checkpoint.take_lr`), ``--threads`` (the speed). Every other option fixes the model or its data:
they are the run's recipe (:func:`recipe_of`), stored in its checkpoints, and a resumed run that gives other values
is refused (:func:`rtseg.train.checkpoint.resume_step`)."""


CHECKPOINT_NAME = "checkpoint.pth"
"""File name of a run's checkpoint inside its work folder (``<out without suffix>.train/``), every trainer's
(defined here, without torch, for the checks before torch is imported)."""


def weights_out(out: str | Path) -> Path:
    """``out`` as the path a trainer writes its weights to; ConfigError (before any training) unless it ends in
    ``.safetensors`` (the manifest goes beside it), or where it or its manifest is the shipped demo model's
    (:func:`rtseg.outputs.check_not_the_demo_model`: train into another file, then copy both over it)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: must end in .safetensors (the .json manifest is written beside it)")
    check_not_the_demo_model([("--out", out), (f"--out {out}: its manifest", manifest_path(out))])
    return out


def check_outputs(out: Path, work_dir: Path, work_dir_option: str = "--work-dir") -> None:
    """Create the folders of the weights ``out`` and of the checkpoint (``work_dir``, the option that sets it:
    ``work_dir_option``) now: a ConfigError for a path that could only fail after training (``out`` a folder, a
    folder that cannot be made: :func:`rtseg.errors.make_folder`)."""
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file path ending in .safetensors")
    make_folder("--out", out.parent)
    make_folder(work_dir_option, work_dir)


def check_no_earlier_run(checkpoint: Path, where: str, *, resume: str, other: str) -> None:
    """ConfigError when ``checkpoint``, the file a run starting afresh would write its checkpoints to, is there: the
    resumable state of an earlier run (of the same output, maybe of other data or classes), which the first
    checkpoint of this one would replace. One line: ``where`` (the option and the folder, e.g. ``--out m.safetensors:
    its work folder m.train``), what is there (and its step when it reads), and what to do: ``resume`` (the words that
    continue it, e.g. ``--resume m.train/checkpoint.pth``), ``other`` (e.g. ``--out``) or delete the folder."""
    if not checkpoint.exists():
        return
    step = _checkpoint_step(checkpoint) if checkpoint.is_file() else None
    at = "" if step is None else f" at step {step}"
    raise ConfigError(f"{where} holds the checkpoint of an earlier run ({checkpoint}{at}), which this run would "
                      f"overwrite; continue that run with {resume}, give another {other}, or delete "
                      f"{checkpoint.parent} to train afresh")


def _checkpoint_step(checkpoint: Path) -> int | None:
    """The ``step`` of a training checkpoint, read without loading its tensors (memory-mapped); None when the file
    does not read as one. Imports torch."""
    import torch

    try:
        step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:  # any file that is no checkpoint: it is named without a step
        return None
    return step if isinstance(step, int) else None


def continue_command(prog: str, argv: Sequence[str], resume: Sequence[str]) -> str:
    """The shell-quoted command that continues the run ``prog argv`` (e.g. ``rtseg train`` and its words): ``argv``
    with every ``--resume`` it has (with its value, when ``resume`` has one too; ``--resume=V`` too) left out and
    ``resume`` (``["--resume", PATH]`` or ``["--resume"]``) added."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = len(resume) > 1
            continue
        kept.append(arg)
    return shlex.join([*shlex.split(prog), *kept, *resume])


def recipe_checkpoint(out: str | Path) -> Path:
    """Where a recipe's run writing the weights ``out`` keeps its checkpoint (``--resume`` continues from it):
    ``<out without .safetensors>.train/checkpoint.pth``."""
    return Path(out).with_suffix(".train") / CHECKPOINT_NAME


def recipe_parser(prog: str, description: str, *, lr: float, lr_help: str, images: int,
                  size: tuple[int, int]) -> Parser:
    """A parser with the options every recipe has: --out, --steps, --lr (default ``lr``), --images (training
    images, default ``images``), --size W H (default ``size``), --threads, --resume; add the model's own. ``prog``
    is the command as a shell runs it (``python -m rtseg.train.fcn_trainer``: the continue-with line prints it)."""
    ap = Parser(prog=prog, description=description)
    ap.add_argument("--out", required=True, help="output .safetensors (a .json manifest is written beside it)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    ap.add_argument("--lr", type=TypedFloat, default=lr, help=f"{lr_help} (default: %(default)g)")
    ap.add_argument("--images", type=int, default=images, help="synthetic training images (default: %(default)s)")
    ap.add_argument("--size", type=int, nargs=2, default=size, metavar=("W", "H"),
                    help=f"training frame width and height in pixels (default: {size[0]} {size[1]})")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from <out without suffix>.train/checkpoint.pth of an interrupted run, with its "
                         "options (more --steps, another --lr or --threads may be given)")
    return ap


def parse_recipe(ap: Parser, argv: Sequence[str] | None, ranges: Sequence[NumberRange] = ()) -> argparse.Namespace:
    """The options of ``argv`` (None: ``sys.argv[1:]``), checked before anything trains: ``--out`` a .safetensors
    path other than the shipped demo model (:func:`weights_out`), :data:`RECIPE_RANGES` and the model's own
    ``ranges``, and with ``--resume`` the checkpoint it continues from a file that can be read
    (:func:`check_input_file`). Besides the options, the namespace holds ``recipe``: :func:`recipe_of` them, and
    ``resume_hint``: the command that continues the run (:func:`continue_command`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(words)
    weights_out(args.out)
    check_ranges(args, (*RECIPE_RANGES, *ranges))
    plain_floats(args)
    if args.resume:
        check_input_file(f"--resume: checkpoint {recipe_checkpoint(args.out)}", recipe_checkpoint(args.out),
                         f"a run with --out {args.out} keeps its checkpoint there: give the --out of the run to "
                         "continue, or drop --resume to train afresh")
    args.recipe = recipe_of(ap, args)
    args.resume_hint = continue_command(ap.prog, words, ["--resume"])
    return args


def recipe_of(ap: Parser, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe of the run ``args`` (parsed by ``ap``) asks for: ``{option: value}`` of every option but
    :data:`MAY_CHANGE_ON_RESUME` (and ``--help``), e.g. ``{"--images": 160, "--size": [128, 96], "--arch": "fcn8s",
    "--width": 0.125}``; plain values (lists for ``--size W H``, given or its default), which a
    checkpoint stores and compares (:func:`rtseg.train.checkpoint.resume_step`)."""
    recipe: dict[str, Any] = {}
    for action in ap._actions:
        value = getattr(args, action.dest, argparse.SUPPRESS)  # --help: not in the namespace
        if value is not argparse.SUPPRESS and not set(action.option_strings) & set(MAY_CHANGE_ON_RESUME):
            recipe[max(action.option_strings, key=len)] = list(value) if isinstance(value, tuple) else value
    return recipe


def start_recipe(args: argparse.Namespace) -> Path:
    """Set the torch threads (``--threads``) and seed of a recipe's run and make its output folders (a ConfigError
    for a path that could only fail after training: :func:`check_outputs`; without ``--resume``, for a checkpoint of
    an earlier run there, which this run would overwrite: :func:`check_no_earlier_run`); returns its checkpoint path
    (:func:`recipe_checkpoint`). Imports torch."""
    import torch

    checkpoint = recipe_checkpoint(args.out)
    if not args.resume:
        check_no_earlier_run(checkpoint, f"--out {args.out}: its checkpoint folder {checkpoint.parent}",
                             resume="--resume", other="--out")
    check_outputs(Path(args.out), checkpoint.parent, f"--out {args.out}: its checkpoint folder")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return checkpoint
