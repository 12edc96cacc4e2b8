"""A small Mask Scoring R-CNN trainer and the paper's two checks.

* :func:`train_msrcnn`: SGD with momentum and linear warm-up on an instance
  data set; the MaskIoU loss (L2, weight 1) is trained end to end with
  torchvision's Mask R-CNN losses.
* :func:`mask_quality`: for every detection, the true IoU of its mask with the
  best ground truth of its class against the predicted MaskIoU (Pearson
  correlation; the paper reports 0.74 on COCO), and mask AP ranked by
  classification score versus by mask score (:mod:`rtseg.eval.mask_scoring`,
  shared with ``rtseg eval --engine msrcnn``).

Its command line is :mod:`rtseg.train.msrcnn_trainer` (``python -m rtseg.train.msrcnn_trainer``, which offers
:class:`MsrcnnTrainConfig`, :func:`train_msrcnn`, :func:`to_target` and :func:`mask_quality` too): :func:`run`
here is what it runs once this module (torch) is imported.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg.data.dataset import InstanceDataset, Sample
from rtseg.engines.msrcnn import MsrcnnEngine, save_msrcnn
from rtseg.eval.mask_scoring import MaskScoringEvaluator, format_scoring_table
from rtseg.models.msrcnn import MsrcnnConfig
from rtseg.ranges import check_fields
from rtseg.train.checkpoint import NonFiniteGuard, resume_step, run_steps, sigterm_as_interrupt
from rtseg.train.msrcnn_trainer import LR
from rtseg.train.recipe import RECIPE_LIMITS, start_recipe


@dataclass(frozen=True)
class MsrcnnTrainConfig:
    """steps: optimizer steps; batch_size: images per step; lr: SGD lr after ``warmup`` linear steps;
    ckpt_every: steps between checkpoints (when a checkpoint path is given); max_nonfinite: a step whose loss
    or a gradient is not finite is skipped (no update), this many in a row stop the run as diverged (ConfigError)."""

    steps: int = 300
    batch_size: int = 2
    lr: float = LR
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 100
    max_nonfinite: int = 20

    def __post_init__(self) -> None:
        """ConfigError naming the first numeric field out of range, before anything trains (``max_nonfinite``:
        :class:`~rtseg.train.checkpoint.NonFiniteGuard`)."""
        check_fields(self, {**RECIPE_LIMITS, "warmup": (0, math.inf)}, integer=True)
        check_fields(self, {"lr": (0, math.inf), "momentum": (0, 1), "weight_decay": (0, math.inf)}, integer=False)


def to_target(sample: Sample, device: torch.device) -> dict[str, torch.Tensor]:
    """torchvision target of a sample: boxes xyxy, labels 1..C, masks (G, H, W) uint8 (empty masks dropped)."""
    keep = sample.masks.reshape(len(sample), -1).any(1) & (sample.boxes[:, 2] > sample.boxes[:, 0] + 1) & \
        (sample.boxes[:, 3] > sample.boxes[:, 1] + 1)
    return {"boxes": torch.from_numpy(sample.boxes[keep]).to(device),
            "labels": torch.from_numpy(sample.class_ids[keep] + 1).to(device),
            "masks": torch.from_numpy(sample.masks[keep].astype(np.uint8)).to(device)}


def train_msrcnn(engine: MsrcnnEngine, data: InstanceDataset, cfg: MsrcnnTrainConfig = MsrcnnTrainConfig(),
                 *, log: bool = True, checkpoint: str | Path | None = None,
                 resume: bool = False, recipe: dict[str, Any] | None = None,
                 resume_hint: str | None = None) -> list[dict[str, float]]:
    """Train ``engine.model`` in place; returns the loss terms of every step run (a step whose total loss or a gradient
    is not finite is skipped; ``cfg.max_nonfinite`` of them in a row are a ConfigError).

    checkpoint: file written every ``cfg.ckpt_every`` steps and at the end, and with the steps done when a step's
    images cannot be read (the DatasetError then says where it is and how to continue, see
    :func:`~rtseg.train.checkpoint.run_steps`); with ``resume`` the run continues from it (its step, weights,
    optimizer and warm-up state, at the rate ``cfg.lr``). recipe: the command's options that fix the model and its
    data, stored in each checkpoint; a resumed one that stored others, or one past ``cfg.steps``, is refused
    (:func:`~rtseg.train.checkpoint.resume_step`). resume_hint: how to continue, said when the steps are saved on
    Ctrl-C or an error (:func:`~rtseg.train.checkpoint.run_steps`).
    """
    model = engine.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    first = resume_step(checkpoint, resume, parts=parts, device=engine.device, steps=cfg.steps, lr=cfg.lr,
                        recipe=recipe)
    guard = NonFiniteGuard(lr=cfg.lr, limit=cfg.max_nonfinite)

    def one_step(step: int) -> dict[str, float]:
        rng = np.random.default_rng([cfg.seed, step])
        samples = [data[int(i)] for i in rng.choice(len(data), cfg.batch_size, replace=len(data) < cfg.batch_size)]
        samples = [s for s in samples if len(s)] or samples[:1]
        images = engine.preprocess([s.image for s in samples])
        losses = model(images, [to_target(s, images[0].device) for s in samples])
        total = sum(losses.values())
        if guard.admit(float(total.detach()), step=step + 1):  # a non-finite loss or gradient updates nothing
            opt.zero_grad(set_to_none=True)
            total.backward()
            if guard.admit_gradients(torch.nn.utils.clip_grad_norm_(params, 10.0), step=step + 1):
                opt.step()  # (clipped by a non-finite norm the gradients are NaN: the step is skipped then)
        sched.step()  # the warm-up counts steps, skipped ones too (as the YOLACT trainer's schedule does)
        return {k: float(v.detach()) for k, v in losses.items()}

    def describe(recent: list[dict[str, float]]) -> str:
        return " ".join(f"{k[5:]} {np.mean([h[k] for h in recent]):.3f}" for k in recent[0])

    history = run_steps(one_step, first=first, steps=cfg.steps, parts=parts, checkpoint=checkpoint,
                        ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, describe=describe if log else None,
                        guard=guard, recipe=recipe, resume_hint=resume_hint)
    model.eval()
    return history


def mask_quality(engine: MsrcnnEngine, data: InstanceDataset) -> dict[str, float]:
    """Correlation of predicted vs true MaskIoU, and mask AP by class score vs by mask score (see
    :class:`rtseg.eval.mask_scoring.MaskScoringEvaluator` for the keys)."""
    ev = MaskScoringEvaluator(engine.class_names)
    for i in range(len(data)):
        s = data[i]
        ev.add(engine(s.image), s)
    return ev.summarize()


@sigterm_as_interrupt()
def run(args: argparse.Namespace) -> None:
    """``python -m rtseg.train.msrcnn_trainer`` with its options, parsed and checked
    (:func:`rtseg.train.msrcnn_trainer.parse`): train, check the mask scores, write the weights; a SIGTERM stops it
    as Ctrl-C does (the steps done are saved, see :func:`train_msrcnn`; then ``terminated`` and 143, not 130). Run it through
    :func:`rtseg.train.msrcnn_trainer.main`, which reports errors and interruptions."""
    from rtseg.data.synthetic import CLASSES, SyntheticDataset

    checkpoint = start_recipe(args)
    w, h = args.size
    cfg = MsrcnnConfig(num_classes=len(CLASSES), backbone=args.backbone, min_size=min(w, h), max_size=max(w, h),
                       anchor_sizes=(8, 16, 32, 64, 128), rois_per_image=64, proposals_per_image=200)
    engine = MsrcnnEngine.from_config(cfg, class_names=list(CLASSES))
    train = SyntheticDataset.split("train", args.images, width=w, height=h)
    train_msrcnn(engine, train, MsrcnnTrainConfig(steps=args.steps, lr=args.lr), checkpoint=checkpoint,
                 resume=args.resume, recipe=args.recipe, resume_hint=args.resume_hint)
    print("validation (synthetic:val, 40 images):", flush=True)  # (said before the minutes it may take)
    quality = mask_quality(engine, SyntheticDataset.split("val", 40, width=w, height=h))
    print(format_scoring_table(quality))
    save_msrcnn(args.out, engine.model, list(CLASSES), meta={"steps": args.steps, "train_images": args.images,
                                                             "size_wh": [w, h], "val": quality})
    print(f"wrote {args.out}")
