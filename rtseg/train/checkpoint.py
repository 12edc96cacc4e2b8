"""Training checkpoints shared by the YOLACT, FCN and MS R-CNN trainers (and the step loop of the latter two).

A checkpoint is one ``torch.save`` dict: ``step``, the ``state_dict()`` of each
stateful part (model, optimizer, scheduler, loss scaler …) under its name, torch's
CPU random state (dropout, samplers: a resumed run draws what the uninterrupted
one would) and plain extra values. It is written to a temporary file and renamed, so a crash
never leaves a half-written checkpoint; it is read with ``weights_only=True``.
A trainer stopped by Ctrl-C, SIGTERM or SIGHUP (:func:`sigterm_as_interrupt`) saves the steps done and says how to
continue (then ends with 130, 143 or 129, :func:`rtseg.errors.exit_status`); so does one stopped by an
:class:`~rtseg.errors.RtsegError` of its data (e.g. a corrupt image first read at step N, :func:`save_on_error`), unless
the run diverged (:class:`DivergedError`).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, TextIO, TypeVar

import torch

from rtseg.errors import (STOP_WORDS, ConfigError, RtsegError, SinkError, Terminated, WeightsError, sigterm_raises,
                          stop_signals_ignored)
from rtseg.ranges import check_number
from rtseg.video.outfiles import CheckedFile
from rtseg.weights import load_into, load_torch_file

T = TypeVar("T")


class DivergedError(ConfigError):
    """Training diverged (:class:`NonFiniteGuard`'s limit of non-finite losses, or non-finite weights refused by
    :func:`save_checkpoint`): the run ends with this line and nothing more is saved (:func:`save_on_error`)."""


class CheckpointNotWritten(SinkError):
    """A checkpoint could not be written (a full disk, a file size limit): the run ends with this line (where the
    checkpoint before it is, if any) and tries to write nothing more (:func:`save_on_error`)."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def checkpoint_due(done: int, every: int, total: int) -> bool:
    """Whether a run that has finished ``done`` of ``total`` steps writes a checkpoint now (every
    ``every`` steps, 0 = only at the end, and always after the last step)."""
    return done == total or (every > 0 and done % every == 0)


class NonFiniteGuard:
    """Decides per step whether it may update the weights, and stops a run that diverged.

    A step is skipped (no optimizer step) and counted when its loss is not finite (NaN, ±inf: :meth:`admit`, before
    the backward pass) or, with a finite loss, one of its gradients is not (:meth:`admit_gradients`, after it: e.g.
    oneDNN's bfloat16 convolution backward on the CPU gives NaN weight gradients at 1×1 feature maps now and then,
    which poisoned every weight of a 64-px model); ``limit`` such steps in a row are a :class:`DivergedError` (a
    ConfigError) saying to lower the LR (``lr`` is named in it).
    Shared by the YOLACT trainer and :func:`run_steps` (FCN, MS R-CNN).
    """

    def __init__(self, *, lr: float, limit: int = 20) -> None:
        check_number("max_nonfinite", limit, 1, integer=True)
        self.lr, self.limit = lr, limit
        self.in_a_row = 0  # consecutive skipped steps up to the last one that updated the weights
        self.skipped = 0  # skipped steps in all

    def admit(self, loss: float, *, step: int) -> bool:
        """Whether the step that ends at step count ``step`` (1-based) may go on to its backward pass with ``loss``:
        True when it is finite (then :meth:`admit_gradients` decides); else the step is skipped (:meth:`_skip`)."""
        if math.isfinite(loss):
            return True
        self._skip(step)
        return False

    def admit_gradients(self, norm: torch.Tensor | float | None, *, step: int) -> bool:
        """After the backward pass of step ``step``: whether the optimizer may step, i.e. the gradients' total
        ``norm`` (:func:`gradient_norm`, or what ``clip_grad_norm_`` returned; one host synchronisation) is finite
        (None: a gradient scaler checks them itself). True ends the row of skipped steps; else the step is skipped
        (:meth:`_skip`)."""
        if norm is not None and not math.isfinite(norm):
            self._skip(step)
            return False
        self.in_a_row = 0
        return True

    def _skip(self, step: int) -> None:
        """Count step ``step`` as skipped; the ``limit``-th in a row raises :class:`DivergedError`."""
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            good = step - self.in_a_row  # the last step that updated the weights (its update may be what diverged)
            resume = f" (or --resume a checkpoint from before step {good})" if good > 1 else ""
            raise DivergedError(
                f"training diverged: the loss or its gradients were not finite for {self.in_a_row} steps in a row (to "
                f"step {step}); lower --lr (now {self.lr:g}) or check the data, then train again{resume}")

    def note(self) -> str:
        """Text a progress line ends with: `` (N steps skipped: not finite)``, or "" while none was."""
        n = self.skipped
        return f" ({n} step{'s' if n > 1 else ''} skipped: not finite)" if n else ""


def gradient_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The total (2-)norm of the gradients of ``parameters`` (those without one left out; 0 when none has one), as
    ``clip_grad_norm_`` computes it: a 0-d float32 tensor on their device (:meth:`NonFiniteGuard.admit_gradients`)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def _finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite (one host synchronisation)."""
    flags = [torch.isfinite(t).all() for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class TerminatedInterrupt(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``) within :func:`sigterm_as_interrupt`: a KeyboardInterrupt, so that a trainer
    saves its checkpoint on it as on Ctrl-C (its ``except KeyboardInterrupt``), but said as ``terminated`` or
    ``hung up`` (:func:`save_on_interrupt`) and leaving :func:`sigterm_as_interrupt` as
    :class:`rtseg.errors.Terminated` (exit status 143 or 129, not Ctrl-C's 130)."""

    def __init__(self, signum: int) -> None:
        self.signum = signal.Signals(signum)
        super().__init__(self.signum.name)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within it (or the function it decorates), SIGTERM (``kill``, a job scheduler's or ``docker stop``'s stop request)
    and SIGHUP (the terminal closed, an ssh session dropped; not under ``nohup``) raise :class:`TerminatedInterrupt`,
    a KeyboardInterrupt, in the main thread as Ctrl-C raises one, so a trainer saves its checkpoint and prints how to
    continue (:func:`save_on_interrupt`) instead of dying at once with every step since the last checkpoint lost. It
    leaves as :class:`rtseg.errors.Terminated`, which ``exit_status`` ends with ``terminated`` and 143 or ``hung up``
    and 129 (128 + the signal, as the rest of rtseg and a shell report it; Ctrl-C stays ``interrupted`` and 130), no
    traceback. Outside the main thread it changes nothing."""
    try:
        with sigterm_raises(TerminatedInterrupt):
            yield
    except TerminatedInterrupt as exc:
        raise Terminated(exc.signum).with_traceback(exc.__traceback__) from None


def save_checkpoint(path: str | Path, *, step: int, parts: dict[str, Stateful], **extra: Any) -> Path:
    """Write ``step``, every part's state and ``extra`` to ``path`` atomically; returns the path.

    A ``model`` part (an nn.Module) with a non-finite weight is never written: that is a :class:`DivergedError`
    (a ConfigError), and the file already at ``path``, if any, stays as it was.
    """
    p = Path(path)
    model = parts.get("model")
    if isinstance(model, torch.nn.Module) and not _finite(model):
        raise DivergedError(f"training diverged: the weights are not finite at step {step}, so checkpoint {p} was "
                            "not written (one there is from an earlier step); lower --lr or check the data, then train "
                            "again")
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "torch_rng": torch.get_rng_state(),
             **{name: part.state_dict() for name, part in parts.items()}, **extra}
    _write_atomically(state, p)
    return p


def _write_atomically(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``<path>.tmp``, then rename it to ``path``. A failed write (a full disk) removes
    the ``.tmp`` file and is a :class:`CheckpointNotWritten` naming the reason and the checkpoint kept at ``path``
    (or that there is none); torch reports such a write as a RuntimeError without its reason (``unexpected pos``),
    so the file goes through :class:`~rtseg.video.outfiles.CheckedFile`, which keeps the OSError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        file = CheckedFile(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        try:
            torch.save(state, file)
        finally:
            file.close_checked()  # the OSError of a failed write, in place of torch's RuntimeError
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        kept = (f"the last checkpoint written is kept in {path}" if path.is_file() else
                "no earlier checkpoint of this run is kept")
        raise CheckpointNotWritten(f"checkpoint {path}: write failed ({exc.strerror or exc}); free space or write "
                                   f"the checkpoints to another folder; {kept}") from None


def save_on_interrupt(path: str | Path, *, step: int, parts: dict[str, Stateful], resume_hint: str,
                      stop: KeyboardInterrupt, log: TextIO | None = None, **extra: Any) -> Path:
    """After Ctrl-C (or SIGTERM or SIGHUP, :func:`sigterm_as_interrupt`), the KeyboardInterrupt ``stop``: write the
    checkpoint of the ``step`` steps done (:func:`save_checkpoint`) and print one line, ``interrupted at step N: …``
    (``terminated`` or ``hung up`` for the :class:`TerminatedInterrupt` of SIGTERM or SIGHUP), saying where it is and
    how to continue (``resume_hint``, e.g. ``--resume``) to ``log`` (default stderr); returns the path. The caller
    re-raises ``stop``.

    Ctrl-C, SIGTERM and SIGHUP are ignored while the checkpoint is written
    (:func:`rtseg.errors.stop_signals_ignored`): a second one (a double Ctrl-C) cut the save short, so that the
    steps since the last checkpoint were lost and nothing was said. (Not while the line is printed: a log that takes
    nothing, a stalled pipe, must not hold an unstoppable process; after a SIGHUP a log on the terminal that is gone
    takes the line without a word: :func:`rtseg.errors.note_stop_signal`.)"""
    with stop_signals_ignored():
        path = save_checkpoint(path, step=step, parts=parts, **extra)
    said = STOP_WORDS[stop.signum if isinstance(stop, TerminatedInterrupt) else signal.SIGINT]
    print(f"{said} {_saved_at(step, path, resume_hint)}", file=log if log is not None else sys.stderr, flush=True)
    return path


def _saved_at(step: int, path: Path, resume_hint: str) -> str:
    """``at step N: checkpoint PATH; continue with HINT``: where a stopped run's steps are and how to go on."""
    return f"at step {step}: checkpoint {path}; continue with {resume_hint}"


def save_on_error(exc: RtsegError, path: str | Path | None, *, step: int, saved: int, parts: dict[str, Stateful],
                  resume_hint: str, **extra: Any) -> RtsegError:
    """After an RtsegError stopped a run with ``step`` steps done (one of its data, e.g. the DatasetError of a
    corrupt image first read in step ``step + 1``): the error to raise instead, the steps done saved as on Ctrl-C.

    The checkpoint of the ``step`` steps is written to ``path`` (:func:`save_checkpoint`, as :func:`save_on_interrupt`
    writes it) and the returned error, of ``exc``'s type, is ``exc``'s line followed by ``; stopped at step N:
    checkpoint PATH; continue with HINT`` (``resume_hint``). Weights that are not finite are not written: then a
    DivergedError with ``exc``'s line and that one's (a checkpoint the disk cannot hold: a CheckpointNotWritten).

    Nothing is written, and ``exc`` itself is returned, when it is a :class:`DivergedError` (the run diverged) or a
    :class:`CheckpointNotWritten` (the disk is full), ``path`` is None or no step was done since the checkpoint of
    step ``saved`` (the last one written, or the run's start); a DataLoader worker's error is cleaned of the
    worker's traceback first (:func:`_worker_error`: a new error of its type, with its own line)."""
    exc = _worker_error(exc)
    if path is None or isinstance(exc, (DivergedError, CheckpointNotWritten)) or step <= saved:
        return exc
    cause = str(exc).rstrip().rstrip(";.")
    try:
        path = save_checkpoint(path, step=step, parts=parts, **extra)
    except (DivergedError, CheckpointNotWritten) as refused:
        return type(refused)(f"{cause}; {refused}")
    return _same_type(exc, f"{cause}; stopped {_saved_at(step, path, resume_hint)}")


def _same_type(exc: RtsegError, message: str) -> RtsegError:
    """A new error of ``exc``'s type with ``message`` (an RtsegError if that type takes other arguments)."""
    try:
        return type(exc)(message)
    except Exception:
        return RtsegError(message)


def _worker_error(exc: RtsegError) -> RtsegError:
    """``exc`` with its own line when a DataLoader worker wrapped it in the worker's traceback (torch re-raises it in
    the main process as ``Caught X in DataLoader worker process N.`` + the traceback, whose end is ``module.X: <the
    message>``, a message of several lines included)."""
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return exc
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    at = text.rfind(f"\n{name}: ")
    if at >= 0:
        return _same_type(exc, text[at + len(name) + 3:].strip())
    last = text.splitlines()[-1]  # "<type>: <the line>"
    return _same_type(exc, last.split(": ", 1)[1] if ": " in last else last)


def run_steps(step: Callable[[int], T], *, first: int, steps: int, parts: dict[str, Stateful],
              checkpoint: str | Path | None, ckpt_every: int, log_every: int,
              describe: Callable[[list[T]], str] | None, guard: NonFiniteGuard,
              recipe: dict[str, Any] | None = None, resume_hint: str | None = None) -> list[T]:
    """Run ``step(k)`` for k in [first, steps) and return what each returned (e.g. its losses).

    guard: the :class:`NonFiniteGuard` that ``step`` asks (``guard.admit(loss, step=k + 1)`` before its backward
    pass, ``guard.admit_gradients(norm, step=k + 1)`` after it) before it updates the weights; its divergence
    error ends the run. checkpoint: written every ``ckpt_every``
    steps and after the last (:func:`checkpoint_due`; never with non-finite weights); on Ctrl-C (or SIGTERM, SIGHUP:
    :func:`sigterm_as_interrupt`) the steps done so far are saved (:func:`save_on_interrupt`) before the
    KeyboardInterrupt goes on, and so they are
    when a step raises an RtsegError other than a divergence, e.g. a DatasetError of its data
    (:func:`save_on_error`: the error raised then says where they are and how to continue).
    describe: one progress line's text from the results of the last ``log_every`` steps that were not
    skipped, printed every ``log_every`` steps as ``step k/steps <text> (<seconds> s)`` plus the
    guard's count of skipped steps; None prints nothing.
    recipe: the options that fix the run (``{"--size": [W, H], …}``, :func:`rtseg.train.recipe.parse_recipe`),
    stored in every checkpoint written, for :func:`resume_step` to check a resumed run against.
    resume_hint: how to continue, said when the steps are saved on Ctrl-C or an error (a command line's: the
    whole command, :func:`rtseg.train.recipe.continue_command`); None: ``--resume (and the same --out)``.
    """
    extra = _recipe_extra(recipe)
    results: list[T] = []
    recent: list[T] = []  # results of the steps since the last progress line that updated the weights
    t0 = time.perf_counter()
    saved = first  # the step of the last checkpoint (or the run's start)
    hint = resume_hint or "--resume (and the same --out)"
    try:
        for k in range(first, steps):
            results.append(step(k))
            if not guard.in_a_row:
                recent.append(results[-1])
            if (k + 1) % log_every == 0:
                if describe is not None:
                    text = describe(recent) if recent else "no finite loss"
                    print(f"step {k + 1}/{steps} {text}{guard.note()} ({time.perf_counter() - t0:.0f} s)", flush=True)
                recent = []
            if checkpoint and checkpoint_due(k + 1, ckpt_every, steps):
                save_checkpoint(checkpoint, step=k + 1, parts=parts, **extra)
                saved = k + 1
    except KeyboardInterrupt as stop:
        if checkpoint:
            save_on_interrupt(checkpoint, step=first + len(results), parts=parts, resume_hint=hint, stop=stop, **extra)
        raise
    except RtsegError as exc:
        error = save_on_error(exc, checkpoint, step=first + len(results), saved=saved, parts=parts, resume_hint=hint,
                              **extra)
        if error is exc:
            raise
        raise error from exc
    return results


def load_checkpoint(path: str | Path, *, parts: dict[str, Stateful], device: torch.device | str = "cpu",
                    expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore every part and torch's CPU random state from a :func:`save_checkpoint` file; returns
    the whole dict (``step``, extras).

    expect: extras this run must share with the checkpoint's (e.g. ``config``, ``class_names``); one that
    differs is a WeightsError naming the differences, before anything loads.
    The part named ``model`` is loaded strictly (WeightsError naming missing / mis-shaped keys).
    A missing, unreadable or foreign file is a WeightsError.
    """
    p = Path(path)
    state = load_torch_file(p, map_location=device, advice="give a checkpoint.pth an rtseg training run wrote",
                            corrupt_advice="resume from another checkpoint.pth or train afresh without --resume",
                            missing=f"checkpoint {p} not found; give the checkpoint.pth an earlier run wrote")
    missing = [name for name in ("step", *parts) if not isinstance(state, dict) or name not in state]
    if missing:
        raise WeightsError(f"checkpoint {p} lacks {', '.join(missing)}: not a checkpoint of this trainer (YOLACT runs "
                           "continue with rtseg train --resume, FCN / MS R-CNN runs with python -m "
                           "rtseg.train.fcn_trainer / msrcnn_trainer --resume)")
    differences = [d for key, want in (expect or {}).items() if key in state
                   for d in _differences(key, state[key], want)]
    if differences:
        raise WeightsError(f"checkpoint {p} was written by a run with other data or options ({'; '.join(differences[:4])}"
                           f"{'; …' if len(differences) > 4 else ''}); resume with that run's data and options "
                           "(the checkpoint's values) or train afresh without --resume")
    for name, part in parts.items():
        if name == "model" and isinstance(part, torch.nn.Module):
            load_into(part, state[name], str(p))
        else:
            part.load_state_dict(state[name])
    if "torch_rng" in state:  # absent in checkpoints of older rtseg versions
        torch.set_rng_state(state["torch_rng"].cpu())
    return state


def _differences(key: str, saved: Any, wanted: Any) -> list[str]:
    """``"<field> <saved> in the checkpoint, <wanted> now"`` for each field of a dict (one line for other values)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return [f"{k} {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} now" for k in sorted(set(saved) | set(wanted))
                if _plain(saved.get(k)) != _plain(wanted.get(k))]
    return [] if _plain(saved) == _plain(wanted) else [f"{key} {saved!r} in the checkpoint, {wanted!r} now"]


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists (a config saved and loaded again compares equal to itself)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resume_step(checkpoint: str | Path | None, resume: bool, *, parts: dict[str, Stateful],
                device: torch.device | str = "cpu", steps: int | None = None, lr: float | None = None,
                recipe: dict[str, Any] | None = None) -> int:
    """The step a run starts at: 0, or with ``resume`` the step of ``checkpoint`` after restoring
    ``parts`` from it (:func:`load_checkpoint`). ``resume`` without a checkpoint is a ConfigError.

    recipe: the run's options that fix the model and its data (as :func:`run_steps` stores them): a checkpoint that
    stored other values is a WeightsError naming each option with both values, before anything loads (one of an
    older rtseg, which stored none, resumes unchecked, as ``rtseg train`` resumes one without its config).
    steps: the run's total steps (``--steps``): a checkpoint past it is a ConfigError (:func:`check_not_past`).
    lr: the run's learning rate, which replaces the checkpoint's (:func:`take_lr`; the ``optimizer`` part's state
    holds the rate it was written with).
    """
    if not resume:
        return 0
    if checkpoint is None:
        raise ConfigError("resume=True needs checkpoint=: the checkpoint.pth of the run to continue")
    step = int(load_checkpoint(checkpoint, parts=parts, device=device, expect=_recipe_extra(recipe))["step"])
    if steps is not None:
        check_not_past(checkpoint, step, steps, "--steps")
    if lr is not None:
        take_lr(parts["optimizer"], parts.get("scheduler"), lr)
    return step


def take_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR | None, lr: float) -> None:
    """Make ``lr`` the learning rate of a restored ``optimizer`` in place of the checkpoint's, as ``rtseg train``
    takes a new ``--lr`` on resume: each group's rate is ``lr``, or with a ``scheduler`` (e.g. a warm-up) ``lr``
    times its factor at its step, and ``lr`` its base rate from then on."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr if scheduler is None else lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
        if scheduler is not None:
            group["initial_lr"] = scheduler.base_lrs[i] = lr


def check_not_past(checkpoint: str | Path, step: int, total: int, option: str) -> None:
    """ConfigError when ``checkpoint``, at ``step``, is past the ``total`` steps a run resuming it is given (by
    ``option``, e.g. ``--steps``): it would train nothing and write the weights of ``step`` steps as those of
    ``total``."""
    if step > total:
        raise ConfigError(f"checkpoint {checkpoint} is at step {step}, past {option} {total}; give {option} {step} or "
                          "more to continue it")


def _recipe_extra(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint extra that holds a run's ``recipe`` (:func:`run_steps`, :func:`resume_step`): none for None."""
    return {} if recipe is None else {"recipe": recipe}
