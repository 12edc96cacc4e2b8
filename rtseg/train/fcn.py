"""A small FCN trainer on semantic labels derived from an instance data set.

Targets come from :func:`rtseg.eval.semantic.semantic_target` (0 = background,
class_id + 1 inside each instance mask). Images are normalised by
:meth:`FcnEngine.preprocess`, the same code inference uses. Adam instead of the
paper's SGD (lr 1e-4, momentum 0.99, batch 1) because it converges in the few
hundred CPU steps this trainer is meant for; augmentation is a horizontal flip.

Its command line is :mod:`rtseg.train.fcn_trainer` (``python -m rtseg.train.fcn_trainer``, which offers
:class:`FcnTrainConfig`, :func:`train_fcn` and :func:`evaluate_fcn` too): :func:`run` here is what it runs once
this module (torch) is imported.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtseg.data.dataset import InstanceDataset
from rtseg.engines.fcn import FcnEngine, save_fcn
from rtseg.eval.runners import format_semantic
from rtseg.eval.semantic import SemanticEvaluator, semantic_target
from rtseg.models.fcn import FcnConfig
from rtseg.ranges import check_fields
from rtseg.train.checkpoint import NonFiniteGuard, gradient_norm, resume_step, run_steps, sigterm_as_interrupt
from rtseg.train.fcn_trainer import LR
from rtseg.train.recipe import RECIPE_LIMITS, start_recipe


@dataclass(frozen=True)
class FcnTrainConfig:
    """steps: optimizer steps; batch_size: images per step; lr: Adam learning rate; seed: sampling seed;
    ckpt_every: steps between checkpoints (when a checkpoint path is given); max_nonfinite: a step whose loss
    or a gradient is not finite is skipped (no update), this many in a row stop the run as diverged (ConfigError)."""

    steps: int = 300
    batch_size: int = 4
    lr: float = LR
    weight_decay: float = 5e-4
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 100
    max_nonfinite: int = 20

    def __post_init__(self) -> None:
        """ConfigError naming the first numeric field out of range, before anything trains (``max_nonfinite``:
        :class:`~rtseg.train.checkpoint.NonFiniteGuard`)."""
        check_fields(self, RECIPE_LIMITS, integer=True)
        check_fields(self, {"lr": (0, math.inf), "weight_decay": (0, math.inf)}, integer=False)


def train_fcn(engine: FcnEngine, data: InstanceDataset, cfg: FcnTrainConfig = FcnTrainConfig(),
              *, log: bool = True, checkpoint: str | Path | None = None, resume: bool = False,
              recipe: dict[str, Any] | None = None, resume_hint: str | None = None) -> list[float]:
    """Train ``engine.model`` in place on ``data`` (images of one size); returns the loss of each step run
    (NaN / inf where it was not finite; ``cfg.max_nonfinite`` skipped steps in a row are a ConfigError).

    checkpoint: file written every ``cfg.ckpt_every`` steps and at the end; with ``resume`` the run
    continues from it (its step, weights and optimizer state, at the rate ``cfg.lr``). recipe: the command's options
    that fix the model and its data, stored in each checkpoint; a resumed one that stored others, or one past
    ``cfg.steps``, is refused (:func:`~rtseg.train.checkpoint.resume_step`). resume_hint: how to continue, said when
    the steps are saved on Ctrl-C or an error (:func:`~rtseg.train.checkpoint.run_steps`).
    """
    images = np.stack([data[i].image for i in range(len(data))])
    targets = torch.from_numpy(np.stack([semantic_target(data[i]) for i in range(len(data))]))
    model = engine.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    parts = {"model": model, "optimizer": opt}
    first = resume_step(checkpoint, resume, parts=parts, device=engine.device, steps=cfg.steps, lr=cfg.lr,
                        recipe=recipe)
    guard = NonFiniteGuard(lr=cfg.lr, limit=cfg.max_nonfinite)

    def one_step(step: int) -> float:
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(images), cfg.batch_size, replace=len(images) < cfg.batch_size)
        flip = rng.random() < 0.5
        imgs = images[idx][:, :, ::-1] if flip else images[idx]
        x = engine.preprocess(list(imgs))
        y = (targets[idx].flip(-1) if flip else targets[idx]).to(x.device)
        loss = F.cross_entropy(model(x), y)
        value = float(loss.detach())
        if guard.admit(value, step=step + 1):  # a non-finite loss or gradient updates nothing
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if guard.admit_gradients(gradient_norm(model.parameters()), step=step + 1):
                opt.step()
        return value

    losses = run_steps(one_step, first=first, steps=cfg.steps, parts=parts, checkpoint=checkpoint,
                       ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                       describe=(lambda recent: f"loss {np.mean(recent):.4f}") if log else None, guard=guard,
                       recipe=recipe, resume_hint=resume_hint)
    model.eval()
    return losses


def evaluate_fcn(engine: FcnEngine, data: InstanceDataset) -> dict[str, float]:
    """mIoU / pixel accuracy of ``engine`` on ``data``."""
    ev = SemanticEvaluator(len(engine.class_names))
    for i in range(len(data)):
        s = data[i]
        ev.add(engine(s.image).labels, semantic_target(s))
    return ev.summarize(engine.class_names)


@sigterm_as_interrupt()
def run(args: argparse.Namespace) -> None:
    """``python -m rtseg.train.fcn_trainer`` with its options, parsed and checked
    (:func:`rtseg.train.fcn_trainer.parse`): train, validate, write the weights; a SIGTERM stops it as Ctrl-C does
    (the steps done are saved, see :func:`train_fcn`; then ``terminated`` and 143, not 130). Run it through :func:`rtseg.train.fcn_trainer.main`, which reports
    errors and interruptions."""
    from rtseg.data.synthetic import CLASSES, SyntheticDataset

    checkpoint = start_recipe(args)
    w, h = args.size
    names = ["background", *CLASSES]
    engine = FcnEngine.from_config(FcnConfig(arch=args.arch, num_classes=len(names), width=args.width),
                                   class_names=names)
    train = SyntheticDataset.split("train", args.images, width=w, height=h)
    val = SyntheticDataset.split("val", 24, width=w, height=h)
    train_fcn(engine, train, FcnTrainConfig(steps=args.steps, lr=args.lr), checkpoint=checkpoint, resume=args.resume,
              recipe=args.recipe, resume_hint=args.resume_hint)
    print("validation (synthetic:val, 24 images, %):", flush=True)  # (said before the seconds it takes)
    metrics = evaluate_fcn(engine, val)
    print(format_semantic(metrics))
    save_fcn(args.out, engine.model, names, meta={"steps": args.steps, "train_images": args.images,
                                                  "size_wh": [w, h], "val": metrics})
    print(f"wrote {args.out}")
