"""``rtseg train``: train YOLACT on synthetic, COCO or labelme data.

    rtseg train --data synthetic --backbone resnet18 --input-size 320 --iters 2000 \\
        --batch-size 8 --out engines/my_model.safetensors
    rtseg train --data coco:annotations.json:images/ --out engines/coco.safetensors --device cuda
    rtseg train --data labelme:my_folder/ --out engines/mine.safetensors --resume runs/mine/checkpoint.pth

Checkpoints go to ``--work-dir`` (default: ``<out without suffix>.train/``).
When torchvision ImageNet weights for the backbone are in the torch hub cache
(``torch.hub.get_dir()/checkpoints/resnet18-*.pth``), the backbone starts from
them; otherwise everything starts from scratch (said in the log).

Light (no torch at its top): :func:`main` parses and checks the options first (:func:`parse`: ``--help``, a bad
option and a missing ``--resume`` / ``--init`` file answer at once), then imports the trainer where a Ctrl-C, a
SIGTERM or a SIGHUP during those seconds is one line (:func:`rtseg.entry.run_command`).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rtseg.cliargs import NumberRange, Once, Parser, TypedFloat, check_ranges, plain_floats
from rtseg.data.spec import FORMS, parse_data
from rtseg.entry import run_command
from rtseg.errors import ConfigError, DatasetError, SinkError, WeightsError
from rtseg.manifest import WEIGHTS_ADVICE, manifest_path
from rtseg.outputs import check_not_among_labelme_files, same_file
from rtseg.ranges import number_problem
from rtseg.train.recipe import (AMP_MODES, CHECKPOINT_NAME, INT_LIMITS, LR_RANGE, check_no_earlier_run, check_outputs,
                                continue_command, recipe_checkpoint, weights_out)
from rtseg.userfiles import check_input_file
from rtseg.yolact_spec import BACKBONES, LIMITS

if TYPE_CHECKING:
    from rtseg.data.dataset import InstanceDataset
    from rtseg.models.yolact import Yolact

_NUMBER_RANGES: tuple[NumberRange, ...] = (
    # option, least, most (None: no limit), why the limit (said with it)
    LR_RANGE,
    # the model's own limits (one training image at 2048 px takes gigabytes; 100000 px was killed for its memory)
    ("--input-size", *LIMITS["input_size"], " pixels (YOLACT uses 550 or 700)"),
    ("--fpn-channels", *LIMITS["fpn_channels"], " (the paper uses 256)"),
    ("--num-prototypes", *LIMITS["num_prototypes"], " (the paper uses 32)"),
    # TrainConfig's own limits
    ("--iters", *INT_LIMITS["iters"], ""),
    ("--batch-size", *INT_LIMITS["batch_size"], " (the paper uses 8)"),
    ("--warmup", *INT_LIMITS["warmup_iters"], ""),
    ("--expand-max", 1, 8, " (1 disables the expand; the paper uses 4)"),
    ("--val-every", *INT_LIMITS["val_every"], ""),
    ("--val-images", *INT_LIMITS["val_images"], ""),
    ("--ckpt-every", *INT_LIMITS["ckpt_every"], ""),
    ("--train-images", 1, 10**9, ""),
    ("--workers", *INT_LIMITS["num_workers"], ""),
    ("--threads", 1, 1024, ""),
    ("--seed", *INT_LIMITS["seed"], ""),
    ("--time-budget", 0.01, 525600, " minutes"),
)
"""The range of each numeric option; an option left unset (None) is not checked."""


class _DefaultsShown(argparse.HelpFormatter):
    """Help that ends with ``(default: X)`` unless the text already speaks of its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or any(action.default is d for d in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="rtseg train", description="Train a YOLACT model; writes safetensors + a JSON manifest.",
                formatter_class=_DefaultsShown)
    p.add_argument("--data", required=True, help=FORMS)
    p.add_argument("--val-data", help="validation set, same forms (default: synthetic val split for synthetic, none otherwise)")
    p.add_argument("--out", required=True, action=Once,
                   help="output weights, a .safetensors path (manifest written beside it)")
    p.add_argument("--work-dir", action=Once, help="checkpoints folder (default: <out without suffix>.train)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint.pth written by an earlier run")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights (.safetensors or official .pth) with a fresh schedule: weights "
                        "of this run's --backbone, --fpn-channels and --num-prototypes, of any classes (those of "
                        "other classes load but for the class-sized layers, which are learnt anew)")
    p.add_argument("--time-budget", type=TypedFloat, metavar="MIN",
                   help="train for at most this many minutes: the schedule (warm-up, LR steps) is shortened to the "
                        "steps that fit; the final validation and export come on top")
    p.add_argument("--backbone", default="resnet18", choices=BACKBONES, help="backbone network")
    p.add_argument("--input-size", type=int, default=320,
                   help="square network input side in pixels, %d to %d" % LIMITS["input_size"])
    p.add_argument("--fpn-channels", type=int, default=64, help="FPN / head width (paper 256)")
    p.add_argument("--num-prototypes", type=int, default=16, help="prototype masks k (paper 32)")
    p.add_argument("--iters", type=int, required=True, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--lr", type=TypedFloat, default=1e-3, help="SGD learning rate after warm-up")
    p.add_argument("--warmup", type=int, default=500, metavar="N", help="linear warm-up steps (official 500)")
    p.add_argument("--lr-steps", default="0.7,0.9", metavar="F,F",
                   help="LR x0.1 at these fractions of --iters")
    p.add_argument("--expand-max", type=TypedFloat, default=4.0, help="random expand up to this ratio (1 disables; official 4)")
    p.add_argument("--val-every", type=int, default=0, metavar="N", help="validate every N steps (0: only at the end)")
    p.add_argument("--val-images", type=int, default=100, help="validation images per validation")
    p.add_argument("--ckpt-every", type=int, default=500, metavar="N",
                   help="write <work-dir>/checkpoint.pth every N steps (and at the end, and on Ctrl-C, SIGTERM, "
                        "SIGHUP or an error of the data such as a corrupt image)")
    p.add_argument("--train-images", type=int, default=None, help="synthetic: number of training images (default 20000)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (mixed precision on CUDA)")
    p.add_argument("--amp", default="auto", choices=AMP_MODES,
                   help="mixed precision: auto = float16 on CUDA, float32 on the CPU; bf16 = bfloat16 on any "
                        "device (CPUs with AVX512-BF16/AMX train ~1.7x faster); off = float32")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and augmentation")
    p.add_argument("--half", action="store_true", help="store the final weights as float16 (half the file size)")
    return p


def open_dataset(spec: str, *, option: str = "--data", split: str = "train", num_images: int | None = None,
                 class_names: Sequence[str] | None = None) -> InstanceDataset:
    """The data set of ``spec`` (:func:`~rtseg.data.spec.parse_data`; a bad form is a ConfigError naming
    ``option``); ``split``: the synthetic split unless the spec names one; ``class_names``: the classes of a
    labelme folder, e.g. the training set's for a validation set."""
    from rtseg.data import CocoDataset, LabelmeDataset, SyntheticDataset

    data = parse_data(spec, option)
    if data.kind == "synthetic":
        return SyntheticDataset.split(data.split or split, num_images)
    if data.kind == "coco":
        return CocoDataset(data.path, data.images)
    return LabelmeDataset(data.path, class_names=class_names)


def imagenet_backbone(model: Yolact) -> Path | None:
    """Load torchvision ImageNet weights of the backbone from the torch hub cache, if there; returns the file."""
    import torch

    from rtseg.weights import load_torch_file

    name = model.cfg.backbone
    if not name.startswith("resnet"):
        return None
    found = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(f"{name}-*.pth"))
    if not found:
        return None
    state = load_torch_file(found[0], advice="a broken download? delete it (training then starts from random backbone "
                            "weights) or replace it with a good copy")
    mapped = {}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        m = re.match(r"layer(\d)\.(.*)", k)
        mapped[f"layers.{int(m.group(1)) - 1}.{m.group(2)}" if m else k] = v
    try:
        model.backbone.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{found[0]}: not torchvision {name} ImageNet weights ({str(e).splitlines()[0]})") from None
    return found[0]


def _lr_steps(text: str, iters: int) -> tuple[int, ...]:
    """The steps of ``--lr-steps`` (increasing fractions of ``iters``, each strictly between 0 and 1)."""
    typed = [f.strip() for f in text.split(",") if f.strip()]
    try:
        fractions = [float(f) for f in typed]
    except ValueError:
        raise ConfigError(f"--lr-steps {text!r}: expected comma-separated fractions such as 0.7,0.9") from None
    # number_problem has no open upper bound: 1 (a decay after the last step) is refused here
    for said, f in zip(typed, fractions):
        if number_problem(f, 0, 1, integer=False, open_low=True) is not None or f == 1:
            raise ConfigError(f"--lr-steps {said}: must be a number in (0, 1) (fractions of --iters, e.g. 0.7,0.9)")
    if any(a >= b for a, b in zip(fractions, fractions[1:])):
        raise ConfigError(f"--lr-steps {text!r}: fractions must increase, e.g. 0.7,0.9")
    return tuple(int(f * iters) for f in fractions)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The options of ``argv``, checked before torch is imported and anything is read or written: numbers and forms
    (:func:`_check_options`; ``--out`` a .safetensors path, --resume / --init files that can be read), outputs
    that would overwrite inputs (:func:`_check_not_inputs`) or the checkpoint of another run
    (:func:`_check_own_work_dir`)."""
    args = build_parser().parse_args(argv)
    out, work_dir = _paths(args)
    _check_options(args)
    _check_not_inputs(args, out, work_dir)
    _check_own_work_dir(args, out, work_dir)
    return plain_floats(args)


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The weights the run writes (``--out``, a ConfigError unless a .safetensors path other than the shipped demo
    model: :func:`weights_out`) and the folder of its checkpoint (``--work-dir``, default ``<out without
    suffix>.train``)."""
    out = weights_out(args.out)
    return out, Path(args.work_dir) if args.work_dir else out.with_suffix(".train")


def _check_options(args: argparse.Namespace) -> None:
    """ConfigError for option values training cannot use, WeightsError for a --resume / --init file that cannot be
    read (:func:`rtseg.userfiles.check_input_file`), before any data is read or memory taken."""
    check_ranges(args, _NUMBER_RANGES)
    if args.train_images is not None and parse_data(args.data).kind != "synthetic":
        raise ConfigError(f"--train-images {args.train_images}: only --data synthetic makes its images; a COCO or "
                          "labelme set trains on all of its images, so leave the option out")
    if args.val_every and args.val_data is None and parse_data(args.data).kind != "synthetic":
        raise ConfigError(f"--val-every {args.val_every}: there is no validation set to check every "
                          f"{args.val_every} steps; give one with --val-data (only --data synthetic has its own)")
    if args.resume and args.init:
        raise ConfigError("--resume and --init exclude each other (resume continues a run; init starts one)")
    _lr_steps(args.lr_steps, args.iters)
    if args.resume and Path(args.resume).suffix == ".safetensors":  # weights (e.g. the --out of the run to continue)
        checkpoint = recipe_checkpoint(args.resume)  # (every trainer's default work folder)
        raise ConfigError(f"--resume {args.resume}: weights, not a checkpoint; --resume continues a run from the "
                          f"checkpoint in its work folder ({checkpoint} for a run with --out {args.resume}, unless "
                          f"it had a --work-dir); --init {args.resume} starts a new run from these weights")
    if args.resume:
        check_input_file(f"--resume {args.resume}", args.resume, "give the checkpoint.pth an earlier run wrote (in "
                         "its --work-dir, default <its --out without suffix>.train)")
    if args.init:
        check_input_file(f"--init {args.init}", args.init, WEIGHTS_ADVICE)


def _check_not_inputs(args: argparse.Namespace, out: Path, work_dir: Path) -> None:
    """ConfigError when a file training writes (the weights, their manifest, the checkpoint, or the ``.tmp`` file of
    one) is a file it reads (the COCO annotations of --data / --val-data, --init, --resume; the checkpoint may be
    the --resume file it continues), or the manifest would go among the .json files of a labelme folder it reads."""
    writes = [(option, what, f) for option, what, path in
              (("--out", "the weights", out), ("--out", "the manifest", manifest_path(out)),
               ("--work-dir", "the checkpoint", work_dir / CHECKPOINT_NAME))
              for f in (path, path.with_name(path.name + ".tmp"))]
    reads = [(option, Path(path)) for option, path in (("--init", args.init), ("--resume", args.resume)) if path]
    data_specs = (("--data", args.data), ("--val-data", args.val_data))
    check_not_among_labelme_files(manifest_path(out), f"--out {out}: its manifest {manifest_path(out).name}",
                                  data_specs, "write the weights to another folder")
    for option, spec in data_specs:
        data = parse_data(spec, option) if spec else None
        if data and data.kind == "coco":
            reads.append((option, data.path))
    for option, path in reads:
        for changed, what, written in writes:
            if same_file(path, written) and not (option == "--resume" and changed == "--work-dir"):
                raise ConfigError(f"{changed} {out if changed == '--out' else work_dir}: {what} {written} would "
                                  f"overwrite the {option} file {path}; choose another {changed}")


def _check_own_work_dir(args: argparse.Namespace, out: Path, work_dir: Path) -> None:
    """ConfigError when the work folder holds the checkpoint of a run this one does not continue (it starts afresh,
    or --resume gives another checkpoint): its first checkpoint would overwrite that one
    (:func:`~rtseg.train.recipe.check_no_earlier_run`; imports torch then, to read the step)."""
    checkpoint = work_dir / CHECKPOINT_NAME
    if args.resume and same_file(args.resume, checkpoint):
        return
    where = (f"--work-dir {work_dir}" if args.work_dir else f"--out {out}: its work folder {work_dir}")
    check_no_earlier_run(checkpoint, where, resume=f"--resume {checkpoint}",
                         other="--work-dir" if args.work_dir else "--out")


CLASS_SIZED = ("conf_layer", "semantic_seg_conv")
"""The layers of a YOLACT whose shape is its number of classes (each prediction head's confidences, the semantic
segmentation head): weights of other classes than a run's leave them at their initialisation (:func:`init_weights`)."""


def init_weights(model: Yolact, path: str) -> str | None:
    """Load the ``--init`` weights ``path`` into ``model`` (at its input size). Weights of other classes than the
    model's (fine-tuning to other classes) load but for the tensors of the :data:`CLASS_SIZED` layers, which stay at
    their initialisation: returns the line that says so (else None). WeightsError when any other tensor does not fit
    (another --backbone, --fpn-channels or --num-prototypes: named with the values of the weights' own config, read
    from their manifest or, in an official .pth, from their tensors, before their network is built)."""
    from rtseg.weights import build_yolact, load_into, read_yolact

    weights = read_yolact(path, input_size=model.cfg.input_size)
    differ = [(option, getattr(weights.config, field), getattr(model.cfg, field))
              for option, field in (("--backbone", "backbone"), ("--fpn-channels", "fpn_channels"),
                                    ("--num-prototypes", "num_prototypes"))
              if getattr(weights.config, field) != getattr(model.cfg, field)]
    if differ:
        given = " ".join(f"{option} {value}" for option, value, _ in differ)
        raise WeightsError(f"--init {path}: weights of {given}, this run has "
                           f"{' '.join(f'{option} {value}' for option, _, value in differ)}; give {given} to start "
                           "from them")
    read = build_yolact(weights)
    own = model.state_dict()
    theirs, ours = read.config.num_classes, model.cfg.num_classes
    fresh = [] if theirs == ours else [k for k in own if k.rsplit(".", 2)[-2] in CLASS_SIZED]
    load_into(model, {**read.model.state_dict(), **{k: own[k] for k in fresh}}, path,
              advice="give --init weights of the same --backbone, --fpn-channels and --num-prototypes as this run")
    return (f"--init {path}: {theirs} classes in the weights, {ours} in --data: {', '.join(fresh)} start from their "
            "initialisation (learnt anew)") if fresh else None


def resume_command(argv: Sequence[str], checkpoint: Path) -> str:
    """The ``rtseg train`` command that continues the run of ``argv`` from ``checkpoint`` (shell-quoted)."""
    return continue_command("rtseg train", argv, ["--resume", str(checkpoint)])


def train(command: tuple[argparse.Namespace, Sequence[str]]) -> dict[str, float]:
    """:func:`run` of ``(args, argv)``: the options :func:`parse` checked and the words they came from (the one
    argument :func:`rtseg.entry.run_command` passes from :func:`main`)."""
    return run(*command)


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, float]:
    """Train as the options :func:`parse` checked (from ``argv``) say; returns the final validation metrics. Ctrl-C,
    SIGTERM or SIGHUP writes the checkpoint of the steps done and prints the command that continues the run, then
    goes on as a KeyboardInterrupt or :class:`rtseg.errors.Terminated` (130, 143 or 129 from :func:`main`:
    :func:`rtseg.train.checkpoint.sigterm_as_interrupt`); an error of the data mid-run (e.g. a corrupt image) writes
    it too, and its one line adds where it is and that command. The output folders are made once the data, --init
    and --resume are read: a start refused for one of them leaves nothing behind."""
    from rtseg.train.checkpoint import sigterm_as_interrupt  # (torch: loaded by then through main's preload)

    with sigterm_as_interrupt():
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, float]:
    """:func:`run` within its handling of SIGTERM and SIGHUP."""
    import torch

    from rtseg.models.yolact import Yolact, YolactConfig
    from rtseg.train.augment import AugmentConfig
    from rtseg.train.trainer import TrainConfig, Trainer

    out, work_dir = _paths(args)
    lr_steps = _lr_steps(args.lr_steps, args.iters)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = open_dataset(args.data, num_images=args.train_images)
    if getattr(train_set, "num_shapes", None) == 0:
        raise DatasetError(f"--data {args.data}: the {len(train_set)} labelme files hold no shapes, so there is "
                           "nothing to learn; annotate the objects (polygons, rectangles, circles or masks)")
    if not train_set.class_names:
        raise DatasetError(f"--data {args.data}: no classes (no labelled shapes or categories); "
                           "annotate the images or give a data set with categories")
    val_spec = args.val_data or ("synthetic" if parse_data(args.data).kind == "synthetic" else None)
    val_set = (open_dataset(val_spec, option="--val-data", split="val", class_names=train_set.class_names)
               if val_spec else None)
    if val_set is not None and tuple(val_set.class_names) != tuple(train_set.class_names):
        raise ConfigError(f"--val-data {val_spec}: classes {', '.join(val_set.class_names)} differ from the "
                          f"training classes {', '.join(train_set.class_names)}; give a validation set of the same classes")
    if val_set is not None:  # read the validation images now, not after hours of training
        for i in range(min(len(val_set), args.val_images)):
            val_set[i]
    cfg = YolactConfig(backbone=args.backbone, num_classes=len(train_set.class_names),
                       fpn_channels=args.fpn_channels, num_prototypes=args.num_prototypes).with_input_size(args.input_size)
    model = Yolact(cfg)
    fresh: str | None = None  # what --init left at its initialisation
    if args.init:
        fresh = init_weights(model, args.init)
        init: Path | None = Path(args.init)
    else:
        init = imagenet_backbone(model) if not args.resume else None
    config = TrainConfig(iters=args.iters, batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup,
                         lr_steps=lr_steps, val_every=args.val_every,
                         val_images=args.val_images, ckpt_every=args.ckpt_every, num_workers=args.workers,
                         seed=args.seed, amp=args.amp, time_budget_s=args.time_budget * 60 if args.time_budget else None,
                         augment=replace(AugmentConfig(), expand_max=args.expand_max))
    trainer = Trainer(model=model, train_set=train_set, val_set=val_set, config=config, work_dir=work_dir,
                      device=args.device, resume_hint=resume_command(argv, work_dir / CHECKPOINT_NAME) if argv else None)
    if args.resume:
        trainer.load_checkpoint(args.resume)
    check_outputs(out, work_dir)  # once every input is read: a start refused for one of them writes nothing
    if args.amp == "bf16" and trainer.device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("this CPU has no native bfloat16 (AVX512-BF16 / AMX): --amp bf16 will be slower than off",
              flush=True)
    if args.resume:
        print(f"resumed from {args.resume} at step {trainer.step}", flush=True)
    else:
        print(f"initialised from {init}" if init else
              "no ImageNet weights in the torch hub cache: training from scratch", flush=True)
        if fresh:
            print(fresh, flush=True)
    print(f"training {cfg} on {len(train_set)} images for {config.iters} steps of {config.batch_size}", flush=True)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    minutes = (time.perf_counter() - t0) / 60
    meta = {"data": args.data, "train_minutes": round(minutes, 1), "device": args.device,
            "initialised_from": str(init.name) if init else None}
    try:
        trainer.export(out, meta=meta, half=args.half)
    except SinkError as exc:  # a full disk: the trained model is in the checkpoint just written
        checkpoint = work_dir / CHECKPOINT_NAME
        raise SinkError(f"--out {exc}; the model trained to step {trainer.step} is in {checkpoint} (usable as "
                        f"--weights); export it with {trainer.resume_hint or f'--resume {checkpoint}'} once there is "
                        "room") from None
    print(f"wrote {out} ({minutes:.1f} min of training)", flush=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtseg train``; returns the exit status: 2 with one error line on a user error, 130 on Ctrl-C,
    143 on a SIGTERM and 129 on a SIGHUP (``rtseg train: interrupted`` / ``terminated`` / ``hung up``): once training
    runs the steps done are saved first (:func:`run`), before that (while the options are checked or the trainer
    imports) and after it nothing is (:func:`rtseg.entry.run_command`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command("rtseg train", "rtseg.train.cli:train", parse=lambda: (parse(args), args),
                       preload=("rtseg.train.trainer",))
