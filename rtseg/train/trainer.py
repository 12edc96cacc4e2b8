"""YOLACT training loop: SGD, warm-up and step decay, mixed precision, validation, checkpoints.

The trainer owns nothing global: give it a model, data sets and a
:class:`TrainConfig`; it writes ``checkpoint.pth`` (model, optimizer,
scheduler, scaler, step) into its work directory and, at the end, the final
weights as safetensors + manifest via :func:`rtseg.weights.save_yolact`.
Images are normalised by the engine's own preprocessing (:meth:`YolactEngine.preprocess_batch`,
the batched form of what inference uses), so training and deployment cannot drift apart.
"""
from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rtseg.data.dataset import InstanceDataset, Sample
from rtseg.engines.yolact import YolactEngine
from rtseg.errors import STOP_SIGNALS, ConfigError, RtsegError, RtsegWarning, handled
from rtseg.eval.coco import evaluate
from rtseg.models.yolact import Yolact, make_priors
from rtseg.ranges import check_fields, check_number, number_problem
from rtseg.train.augment import AugmentConfig, augment
from rtseg.train.checkpoint import (NonFiniteGuard, check_not_past, gradient_norm, load_checkpoint, save_checkpoint,
                                   save_on_error, save_on_interrupt, take_lr)
from rtseg.train.losses import LossConfig, Target, TargetBatch, yolact_loss
from rtseg.train.recipe import AMP_MODES, CHECKPOINT_NAME, INT_LIMITS
from rtseg.weights import save_yolact

REAL_LIMITS: dict[str, tuple[float, float]] = {
    "lr": (0, math.inf), "momentum": (0, 1), "weight_decay": (0, math.inf), "warmup_init": (0, math.inf),
    "gamma": (0, 1)}
"""Least and most value (inf: no limit) of each real-number field of :class:`TrainConfig`."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (official YOLACT values where they exist).

    iters: total optimizer steps. lr_steps: steps at which the LR is multiplied by ``gamma``.
    warmup_iters / warmup_init: linear warm-up from ``warmup_init`` to ``lr`` (official 500 / 1e-4).
    val_every / ckpt_every: steps between validations / checkpoints (0: only at the end).
    val_images: validation images per validation (at most the validation set).
    num_workers: data-loading processes (0: in the training process).
    time_budget_s: if set, ``iters`` (and ``lr_steps`` with it) shrink so training ends within this
    many seconds of wall time; the plan is re-made from the measured step time until the first LR step.
    amp: "auto" (float16 autocast with loss scaling on CUDA, float32 on the CPU), "bf16" (bfloat16
    autocast on any device, no scaling: fast on CPUs with AVX512-BF16 or AMX) or "off" (float32).
    The network runs under autocast; the loss is always computed in float32.
    max_nonfinite: a step whose loss or a gradient is not finite is skipped (no update; gradients of float16 steps:
    the loss scaler's own skips, not counted); this many in a row stop the run
    as diverged (ConfigError saying to lower the LR).
    """

    iters: int
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 500
    warmup_init: float = 1e-4
    lr_steps: tuple[int, ...] = ()
    gamma: float = 0.1
    val_every: int = 0
    val_images: int = 100
    ckpt_every: int = 500
    log_every: int = 10
    num_workers: int = 1
    seed: int = 0
    amp: str = "auto"
    time_budget_s: float | None = None
    max_nonfinite: int = 20
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        """ConfigError naming the first numeric field out of range (:data:`INT_LIMITS`, :data:`REAL_LIMITS`),
        before any data is read (``max_nonfinite``: :class:`~rtseg.train.checkpoint.NonFiniteGuard`)."""
        check_fields(self, INT_LIMITS, integer=True)
        check_fields(self, REAL_LIMITS, integer=False)
        steps = self.lr_steps
        if not isinstance(steps, (tuple, list)) or any(number_problem(s, 0, integer=True) is not None for s in steps):
            raise ConfigError(f"TrainConfig: lr_steps must be integers >= 0 (the steps at which the LR decays), "
                              f"got {steps!r}")
        if self.time_budget_s is not None:
            check_number("TrainConfig: time_budget_s", self.time_budget_s, 0, integer=False, open_low=True)

    def lr_factor(self, step: int) -> float:
        """LR at ``step`` divided by ``lr``: linear warm-up, then ``gamma`` per passed LR step."""
        if step < self.warmup_iters and self.lr > 0:  # lr 0 (frozen weights) has no warm-up
            return (self.warmup_init + (self.lr - self.warmup_init) * step / self.warmup_iters) / self.lr
        return self.gamma ** sum(step >= s for s in self.lr_steps)

    def shortened(self, iters: int) -> "TrainConfig":
        """The same schedule squeezed into ``iters`` steps: LR steps at the same fractions; the warm-up as
        long as before, but at most half-way to the first LR step (so that the LR reaches ``lr`` before it decays)."""
        iters = max(1, min(iters, self.iters))
        lr_steps = tuple(s * iters // self.iters for s in self.lr_steps)
        return replace(self, iters=iters, lr_steps=lr_steps,
                       warmup_iters=min(self.warmup_iters, min(lr_steps, default=iters) // 2))


class AugmentedSamples(Dataset):
    """Item ``k`` (a global sample counter) is an augmented, resized image of the source set.

    The source index comes from a per-epoch permutation and the augmentation from an rng
    seeded by ``(seed, k)``, so a resumed run sees exactly the samples it would have seen.
    """

    def __init__(self, source: InstanceDataset, *, size: int, config: AugmentConfig, seed: int, start: int, stop: int) -> None:
        if len(source) == 0:
            raise ConfigError("training data set is empty; point --data at a set with annotated images")
        self.source, self.size, self.config, self.seed = source, size, config, seed
        self.start, self.stop = start, stop
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def _source_index(self, k: int) -> int:
        epoch, i = divmod(k, len(self.source))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.source)))
        return int(self._perm[1][i])

    def __getitem__(self, index: int) -> Sample:
        k = self.start + index
        sample = self.source[self._source_index(k)]
        return augment(sample, size=self.size, rng=np.random.default_rng([self.seed, 1, k]), config=self.config)


def collate(samples: list[Sample]) -> tuple[torch.Tensor, TargetBatch]:
    """Same-size samples → (B, S, S, 3) uint8 BGR images and their padded :class:`TargetBatch`."""
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    targets = []
    for s in samples:
        h, w = s.image_size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        regular = np.ones(len(s), bool) if s.iscrowd is None else ~s.iscrowd
        targets.append(Target(
            boxes=torch.from_numpy(s.boxes[regular]) / scale,
            labels=torch.from_numpy(s.class_ids[regular]),
            masks=torch.from_numpy(s.masks[regular]),
            crowd_boxes=torch.from_numpy(s.boxes[~regular]) / scale,
        ))
    return images, TargetBatch.stack(targets)


@torch.no_grad()
def evaluate_engine(engine: YolactEngine, dataset: InstanceDataset, *, num_images: int | None = None,
                    batch_size: int = 4) -> dict[str, float]:
    """COCO mask/box AP of ``engine`` on the first ``num_images`` images of ``dataset`` (all by default).

    Puts the engine's network in eval mode (BatchNorm running statistics).
    """
    engine.net.eval()
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    preds, gts = [], []
    for start in range(0, n, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, n))]
        preds.extend(engine([s.image for s in samples]))
        gts.extend(samples)
    return evaluate(preds, gts, list(dataset.class_names))


class Trainer:
    """Trains a :class:`Yolact` on an instance data set.

    model: the network (its ``cfg`` fixes input size and classes).
    train_set / val_set: data sets of :class:`Sample`; ``val_set`` may be None (no validation).
    work_dir: where ``checkpoint.pth`` goes. log: where progress lines go (stdout by default).
    resume_hint: how to continue after Ctrl-C or an error of the data, said with the checkpoint's path (default
    ``--resume PATH``; the command line passes the whole command).
    """

    def __init__(self, *, model: Yolact, train_set: InstanceDataset, val_set: InstanceDataset | None,
                 config: TrainConfig, work_dir: str | Path, device: str = "cpu", log: TextIO | None = None,
                 resume_hint: str | None = None) -> None:
        if len(train_set.class_names) != model.cfg.num_classes:
            raise ConfigError(f"data set has {len(train_set.class_names)} classes, model {model.cfg.num_classes}")
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.class_names = list(train_set.class_names)
        self.work_dir = Path(work_dir)
        self.log = log or sys.stdout
        self.resume_hint = resume_hint
        # The engine wraps the very same module: its preprocessing normalises training batches too.
        self.engine = YolactEngine(model=model, class_names=self.class_names, device=device,
                                   score_threshold=0.0, top_k=100)
        self.model = model.train()
        self.device = torch.device(self.engine.device)
        self.priors = make_priors(model.cfg, self.device)
        if config.amp not in AMP_MODES:
            raise ConfigError(f"amp {config.amp!r}: choose one of {', '.join(AMP_MODES)}")
        self.autocast_dtype = (torch.bfloat16 if config.amp == "bf16" else
                               torch.float16 if config.amp == "auto" and self.device.type == "cuda" else None)
        self.use_amp = self.autocast_dtype == torch.float16  # loss scaling: float16 only
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        # Through self.config, so a re-planned (time-budgeted) schedule takes effect at once.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.config.lr_factor(step))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.guard = NonFiniteGuard(lr=config.lr, limit=config.max_nonfinite)  # skips / stops on a non-finite loss
        self.history: list[dict[str, float]] = []
        # the options a resumed run may change (and takes), recorded in its checkpoints: load_checkpoint says a change
        self._options: dict[str, int | float] = {
            "--batch-size": int(config.batch_size), "--expand-max": float(config.augment.expand_max),
            "--seed": int(config.seed), "--warmup": int(config.warmup_iters)}

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Model, optimizer, scheduler, scaler and step → ``path`` (default ``work_dir/checkpoint.pth``)."""
        return save_checkpoint(path if path is not None else self.work_dir / CHECKPOINT_NAME, step=self.step,
                               parts=self._parts(), **self._checkpoint_extras())

    def _checkpoint_extras(self) -> dict[str, Any]:
        """What a checkpoint carries besides the parts: the model's config and class names, trained on a COCO
        file its ``category_ids`` (under ``meta``, as in a manifest: the checkpoint is usable as weights), and the
        ``options`` of the run that a resume may change (``{"--batch-size": 8, …}``: :meth:`load_checkpoint`)."""
        ids = self._category_ids()
        return {"config": asdict(self.model.cfg), "class_names": self.class_names,
                **({"meta": {"category_ids": ids}} if ids is not None else {}), "options": dict(self._options)}

    def _category_ids(self) -> list[int] | None:
        """The COCO category id of each class when the training set is a COCO file (its ``category_ids``), else
        None."""
        ids = getattr(self.train_set, "category_ids", None)
        return None if ids is None else [int(c) for c in ids]

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a :meth:`save_checkpoint` file; training continues at its step.

        The LR schedule is this trainer's config (``lr``, warm-up, steps) at the checkpoint's step,
        not the one the checkpoint was written with: resuming with another ``--lr`` takes effect. So do another
        batch size, expand ratio, seed and warm-up (the samples from the checkpoint's step on are drawn as a run with
        them draws its samples from there): one line to :attr:`log` names those that differ from the checkpoint's.
        Other model options or classes are a WeightsError (:func:`~rtseg.train.checkpoint.load_checkpoint`).
        """
        parts = self._parts()
        del parts["scheduler"]  # rebuilt from this trainer's config below
        expect = self._checkpoint_extras()
        options = expect.pop("options")  # said, not refused
        state = load_checkpoint(path, parts=parts, device=self.device, expect=expect)
        self.step = int(state["step"])
        check_not_past(path, self.step, self.config.iters, "--iters")
        self.scheduler.last_epoch = self.step
        take_lr(self.optimizer, self.scheduler, self.config.lr)
        saved = state.get("options")  # (absent in checkpoints of older rtseg versions)
        changed = [k for k, v in options.items() if isinstance(saved, dict) and k in saved and saved[k] != v]
        if changed:
            said = functools.partial(_options_said, keys=changed)
            print(f"checkpoint {path} was written with {said(saved)}; this run's {said(options)} "
                  f"{'are' if len(changed) > 1 else 'is'} taken from step {self.step} on", file=self.log, flush=True)

    def _parts(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    # -- training -----------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, TargetBatch]]:
        """The collated batches (:func:`collate`) from the current step to ``iters``, read by ``num_workers``
        DataLoader workers, which start now (by :func:`_worker_start_method`) and leave stop requests to the training
        process (:func:`_workers_started`)."""
        c = self.config
        data = AugmentedSamples(self.train_set, size=self.model.cfg.input_size, config=c.augment, seed=c.seed,
                                start=self.step * c.batch_size, stop=c.iters * c.batch_size)
        cpus = usable_cpus()
        if c.num_workers > cpus:
            warnings.warn(f"--workers {c.num_workers}: more data-loading workers than the {cpus} "
                          f"CPU{'s' * (cpus != 1)} this process may use; steps may be slower, or stall (give "
                          f"--workers {cpus} or fewer)", RtsegWarning, stacklevel=2)
        with warnings.catch_warnings():  # torch's own (twice, a paragraph each): said above in one line
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            loader = DataLoader(data, batch_size=c.batch_size, shuffle=False, num_workers=c.num_workers,
                                collate_fn=collate, drop_last=True, persistent_workers=False,
                                pin_memory=self.device.type == "cuda",
                                multiprocessing_context=_worker_start_method() if c.num_workers else None,
                                worker_init_fn=functools.partial(_leave_stop_requests_to, os.getpid()))
            return _workers_started(loader)

    def train_step(self, images: torch.Tensor, targets: TargetBatch) -> dict[str, float]:
        """One optimizer step on a collated batch; returns the loss terms as floats.

        A non-finite total loss updates nothing (no backward, no scaler step; the LR schedule moves on), nor does a
        non-finite gradient (no optimizer step); either counts towards :attr:`guard`'s divergence limit (ConfigError
        when reached). With the float16 scaler, gradients are the scaler's to check: it skips such steps (and lowers
        its scale) without their counting.

        The batch goes to the device in one copy per tensor, and the loss values come back in
        one transfer: the only host synchronisations of a step (besides the loss's one and, without the
        scaler, the gradients' check).
        """
        x = self.engine.preprocess_batch(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            out = self.model(x)
        out = {k: v.float() for k, v in out.items()}
        losses = yolact_loss(out, targets.to(self.device), self.priors, self.config.loss)
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard.admit(values["total"], step=self.step + 1):  # raises after max_nonfinite skips in a row
            self.scaler.scale(losses["total"]).backward()
            # the float16 scaler skips steps with inf / NaN gradients itself (and lowers its scale)
            norm = None if self.scaler.is_enabled() else gradient_norm(self.model.parameters())
            if self.guard.admit_gradients(norm, step=self.step + 1):
                self.scaler.step(self.optimizer)
                self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return values

    def validate(self) -> dict[str, float]:
        """Mask/box AP on ``val_images`` of the validation set (model back in train mode after)."""
        if self.val_set is None:
            return {}
        try:
            return evaluate_engine(self.engine, self.val_set, num_images=self.config.val_images)
        finally:
            self.model.train()

    def fit(self) -> dict[str, float]:
        """Train from the current step to ``iters``; returns the final validation metrics (or {}).

        Ctrl-C (or SIGTERM or SIGHUP, within :func:`~rtseg.train.checkpoint.sigterm_as_interrupt`), to this process or
        to its whole process group with the DataLoader workers, saves the checkpoint of the steps done, prints where it
        is and how to continue (:attr:`resume_hint`; ``interrupted …``, ``terminated …`` or ``hung up …``), and the
        KeyboardInterrupt goes on (the workers leave it to this process: :func:`_workers_started`). An RtsegError that
        stops the run (e.g. a DatasetError of an image first read now, in this process or a DataLoader worker) saves
        them as well when any were done since the last checkpoint, and is raised as one line that adds where they are
        and how to continue (:func:`~rtseg.train.checkpoint.save_on_error`); a divergence (ConfigError to lower the LR)
        saves nothing.
        """
        c = self.config
        start, t0 = self.step, time.perf_counter()
        saved = start  # the step of the last checkpoint written (or the run's start)
        running: dict[str, float] = {}
        timer = _BudgetTimer(c.time_budget_s, start)
        requested = c
        batches = None
        try:
            batches = self._batches()  # (a stop request while the workers start is raised here)
            for images, targets in batches:
                if self.step >= self.config.iters:
                    break
                losses = self.train_step(images, targets)
                for k, v in losses.items():
                    running[k] = 0.9 * running.get(k, v) + 0.1 * v if math.isfinite(v) else running.get(k, v)
                if self.step % c.log_every == 0 or self.step == self.config.iters:
                    self._replan(timer, requested)
                    self._progress(running, start, t0)
                if c.ckpt_every and self.step % c.ckpt_every == 0 and self.step < self.config.iters:
                    self.save_checkpoint()
                    saved = self.step
                if c.val_every and self.step % c.val_every == 0 and self.step < self.config.iters:
                    self._report_validation()
        except KeyboardInterrupt as stop:
            path = self.work_dir / CHECKPOINT_NAME
            save_on_interrupt(path, step=self.step, parts=self._parts(), resume_hint=self.resume_hint or f"--resume {path}",
                              stop=stop, log=self.log, **self._checkpoint_extras())
            raise
        except RtsegError as exc:  # from a DataLoader worker the message carries the worker's traceback (cleaned)
            path = self.work_dir / CHECKPOINT_NAME
            error = save_on_error(exc, path, step=self.step, saved=saved, parts=self._parts(),
                                  resume_hint=self.resume_hint or f"--resume {path}", **self._checkpoint_extras())
            if error is exc:
                raise
            raise error from exc
        finally:
            _end_workers(batches)
        self.save_checkpoint()
        return self._report_validation()

    def _replan(self, timer: "_BudgetTimer", requested: TrainConfig) -> None:
        """Fit the ``requested`` schedule to the time budget, from the step rate measured so far.

        Re-planned until the first LR step is behind us, in both directions (a slow spell while the
        machine was shared does not shorten the run for good), never beyond ``requested.iters``;
        changes under 2 % are ignored.
        """
        first_decay = min(self.config.lr_steps, default=self.config.iters)
        if timer.budget is None or self.step >= first_decay:
            return
        fits = timer.steps_that_fit(self.step)
        if fits is None:
            return
        plan = requested.shortened(max(fits, self.step + 1))
        if abs(plan.iters - self.config.iters) >= max(1, 0.02 * self.config.iters):
            self.config = plan
            print(f"time budget {timer.budget:.0f} s: training planned for {plan.iters} of {requested.iters} "
                  f"steps, warm-up {plan.warmup_iters}, LR steps at {list(plan.lr_steps)}", file=self.log, flush=True)

    def _report_validation(self) -> dict[str, float]:
        t = time.perf_counter()
        metrics = self.validate()
        if metrics:
            self.history.append({"step": self.step, **metrics})
            print(f"[val] step {self.step}: mask AP {metrics['mask_AP']:.3f}  AP50 {metrics['mask_AP50']:.3f}  "
                  f"box AP {metrics['box_AP']:.3f}  ({time.perf_counter() - t:.0f} s)", file=self.log, flush=True)
        return metrics

    def _progress(self, losses: dict[str, float], start: int, t0: float) -> None:
        c = self.config
        done = self.step - start
        per_it = (time.perf_counter() - t0) / max(done, 1)
        eta = per_it * (c.iters - self.step)
        bar = "#" * int(20 * self.step / c.iters)
        terms = " ".join(f"{k[0].upper()} {losses[k]:.3f}" for k in ("box", "conf", "mask", "semantic"))
        print(f"[{bar:<20}] {self.step}/{c.iters} loss {losses['total']:.3f} ({terms}) "
              f"lr {self.optimizer.param_groups[0]['lr']:.2e} {per_it:.2f} s/it ETA {_hms(eta)}{self.guard.note()}",
              file=self.log, flush=True)

    def export(self, path: str | Path, meta: dict[str, Any] | None = None, *, half: bool = False) -> Path:
        """Write the model as safetensors + manifest (``meta`` adds training facts; trained on a COCO file, also
        its ``category_ids``, which the model's COCO results files then use).

        half: store float tensors as float16 (half the file; loading casts them back to float32).
        """
        info = {"iters": self.step, "batch_size": self.config.batch_size, "dtype": "float16" if half else "float32",
                **(meta or {})}
        category_ids = self._category_ids()
        if category_ids is not None:
            info["category_ids"] = category_ids
        if self.history:
            info["validation"] = self.history[-1]
        return save_yolact(path, self.model, self.class_names, meta=info, half=half)


def _options_said(options: dict[str, Any], keys: list[str]) -> str:
    """``--batch-size 8, --expand-max 2.5``: the ``keys`` of ``options`` with their values (floats as ``%g``)."""
    return ", ".join(f"{k} {options[k]:g}" if isinstance(options[k], float) else f"{k} {options[k]}" for k in keys)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform tells it, else the machine's), as torch's
    DataLoader counts them for its worker-count warning."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _workers_started(loader: DataLoader) -> Iterator[tuple[torch.Tensor, TargetBatch]]:
    """``iter(loader)``, which starts its worker processes, with Ctrl-C, SIGTERM and SIGHUP held off meanwhile
    (:func:`_stop_signals_held`; one arriving then is acted on once the iterator is whole).

    A stop request sent to the process group (``timeout``, ``kill -- -PGID``, systemd, a terminal's Ctrl-C or its
    hang-up) reaches the workers too: torch's handler ended a worker by the SIGTERM (the default action by the SIGHUP),
    so that the training process, saving the steps done, raised ``DataLoader worker … is killed by signal`` (a
    traceback, exit 1, no checkpoint). So the workers leave stop requests to the training process
    (:func:`_leave_stop_requests_to`), which ends them when it deletes the iterator; they start with the signals
    blocked, so that none reaches a worker before its ``worker_init_fn`` (forked workers: :func:`_worker_start_method`).
    And a KeyboardInterrupt inside ``iter`` left a half-made iterator that could not end its workers (``Exception
    ignored in … __del__``, a worker left behind).

    Where ``signal`` lacks ``sigwaitinfo`` (macOS) or ``pthread_sigmask`` too (Windows) this degrades to what torch
    does itself: see :func:`_stop_signals_held` and :func:`_leave_stop_requests_to`."""
    with _stop_signals_held():
        return iter(loader)


def _end_workers(batches: Iterator[Any] | None) -> None:
    """End the DataLoader workers of ``batches`` (an iterator of :meth:`Trainer._batches`; None: not made) now, as
    deleting it would.
    An error raised from inside the iterator (a worker's error, re-raised by torch) holds it in its traceback: its
    workers would live on for as long as the caller keeps the error (an interactive session keeps the last one)."""
    end = getattr(batches, "_shutdown_workers", None)  # torch's iterator with workers ends them by this in __del__
    if end is not None:
        end()


def _worker_start_method() -> multiprocessing.context.BaseContext | None:
    """The start method of the DataLoader workers: ``fork``, so that they start with the signal mask of the thread
    that starts them (:func:`_workers_started`) whatever the default method (Python 3.14 makes it ``forkserver`` on
    Linux: workers forked from a server process started earlier, with its own mask). None (torch's default, the
    platform's) where the platform has no ``fork`` (Windows) or ``signal`` no ``sigwaitinfo`` (macOS, where Python
    lists ``fork`` but starts by ``spawn``, forking being unsafe with its system libraries): there a worker cannot
    wait for SIGTERM and unblocks it at its start (:func:`_leave_stop_requests_to`), so the mask it starts with
    matters only until then, and ``spawn`` (fork and exec) keeps it anyway."""
    if hasattr(signal, "sigwaitinfo") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Within it, Ctrl-C, SIGTERM and SIGHUP wait: blocked in this thread (and so in the processes it starts) and,
    in the main thread, noted by a handler that does nothing else (Python runs its handlers in the main thread
    whichever thread took the signal: torch has native threads that do not block it; a SIGHUP ignored, under
    ``nohup``, stays ignored: :func:`rtseg.errors.handled`). Afterwards the mask and the handlers are back, and the
    first signal noted is raised again. Where ``signal`` has no ``pthread_sigmask`` (Windows) only
    the handlers do this (nothing is blocked; a worker started there has its own signal state anyway)."""
    noted: list[int] = []
    handlers: dict[int, Any] = {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if hasattr(signal, "pthread_sigmask") else None
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in handled(STOP_SIGNALS):  # (signal.signal runs a pending handler first, which may raise)
                handlers[sig] = signal.signal(sig, lambda signum, _frame: noted.append(signum))
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with contextlib.ExitStack() as stack:  # every handler back, even if a pending one raises meanwhile
            for sig, handler in handlers.items():
                stack.callback(signal.signal, sig, handler)
        if noted:
            signal.raise_signal(noted[0])


def _leave_stop_requests_to(trainer: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (with the training process's id ``trainer`` bound), in a worker started with
    Ctrl-C, SIGTERM and SIGHUP blocked (:func:`_workers_started`; torch installed its own SIGTERM handler before):
    ignore Ctrl-C and SIGHUP from now on (one sent since the start is discarded; a hang-up reaches the terminal's
    whole foreground process group), leave SIGTERM blocked for a thread that waits for it
    (:func:`_end_at_sigterm_from`), and report no error of the training process's going away mid-batch
    (:func:`_unless_the_trainer_went_away`). ``worker_id`` is unused.

    Where ``signal`` has no ``sigwaitinfo`` (macOS), which alone tells who sent a SIGTERM, SIGTERM is unblocked
    instead and left to torch's handler: a SIGTERM to the process group then ends the worker as torch ends it (the
    training process may report that end rather than save its checkpoint). Without ``pthread_sigmask`` (Windows)
    nothing was blocked and nothing is unblocked."""
    ignored = set(STOP_SIGNALS) - {signal.SIGTERM}
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    waits = hasattr(signal, "sigwaitinfo")
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ignored if waits else set(STOP_SIGNALS))
    if waits:
        threading.Thread(target=_end_at_sigterm_from, args=(trainer,), daemon=True).start()
    sys.excepthook = functools.partial(_unless_the_trainer_went_away, sys.excepthook)


def _end_at_sigterm_from(trainer: int) -> None:
    """Take this worker's SIGTERMs (blocked in all its threads) and end it, as torch's handler would, at the first
    one the process ``trainer`` sent: torch's ``terminate()`` of a worker that did not end when asked (one busy on
    an item for seconds, or hung). Anyone else's, sent to the whole process group, is dropped."""
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
        pass
    os._exit(0)


def _unless_the_trainer_went_away(report: Callable[..., None], kind: type[BaseException], error: BaseException,
                                  trace: TracebackType | None) -> None:
    """A worker's ``sys.excepthook``: ``report`` (the hook before) the error, unless the training process went away
    (EOFError, ConnectionError) while the thread that hands it a batch's shared memory served it (its file
    descriptors, over a socket: :mod:`multiprocessing.resource_sharer`, which reports by this hook). Stopped mid-batch
    by Ctrl-C or SIGTERM, the training process says so itself; the thread printed a ConnectionResetError traceback."""
    if not issubclass(kind, (EOFError, ConnectionError)):
        report(kind, error, trace)


class _BudgetTimer:
    """Wall-clock budget of a run; estimates the steps that fit from the time per step so far.

    The first ``skip`` steps (CUDA/cuDNN warm-up, data-loader start) are left out of the rate.
    """

    def __init__(self, budget_s: float | None, start_step: int, skip: int = 10) -> None:
        self.budget, self.start_step, self.skip = budget_s, start_step, skip
        self.t0 = time.perf_counter()
        self.mark: tuple[int, float] | None = None

    def steps_that_fit(self, step: int) -> int | None:
        """Total step count that ends within the budget, or None while still warming up."""
        now = time.perf_counter()
        if self.budget is None or step - self.start_step < self.skip:
            return None
        if self.mark is None:
            self.mark = (step, now)
            return None
        per_step = (now - self.mark[1]) / max(step - self.mark[0], 1)
        left = self.budget - (now - self.t0)
        return step + int(left / per_step) if per_step > 0 else None


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

