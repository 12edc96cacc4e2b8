"""Training checkpoints shared by the YOLACT, FCN and MS R-CNN trainers (and the step loop of the latter two).

A checkpoint is one ``torch.save`` dict: ``step``, the ``state_dict()`` of each
stateful part (model, optimizer, scheduler, loss scaler …) under its name, torch's
CPU random state (dropout, samplers: a resumed run draws what the uninterrupted
one would) and plain extra values. It is written to a temporary file and renamed, so a crash
never leaves a half-written checkpoint; it is read with ``weights_only=True``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TextIO, TypeVar

import torch

from rtseg.errors import ConfigError, WeightsError
from rtseg.weights import load_into

T = TypeVar("T")

CHECKPOINT_NAME = "checkpoint.pth"
"""File name of a run's checkpoint inside its work folder (``<out without suffix>.train/``)."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def checkpoint_due(done: int, every: int, total: int) -> bool:
    """Whether a run that has finished ``done`` of ``total`` steps writes a checkpoint now (every
    ``every`` steps, 0 = only at the end, and always after the last step)."""
    return done == total or (every > 0 and done % every == 0)


def weights_out(out: str | Path) -> Path:
    """``out`` as the path a trainer writes its weights to; ConfigError (before any training) unless it ends in
    ``.safetensors`` (the manifest goes beside it)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: must end in .safetensors (the .json manifest is written beside it)")
    return out


def save_checkpoint(path: str | Path, *, step: int, parts: dict[str, Stateful], **extra: Any) -> Path:
    """Write ``step``, every part's state and ``extra`` to ``path`` atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "torch_rng": torch.get_rng_state(),
             **{name: part.state_dict() for name, part in parts.items()}, **extra}
    tmp = p.with_name(p.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(p)
    return p


def save_on_interrupt(path: str | Path, *, step: int, parts: dict[str, Stateful], resume_hint: str,
                      log: TextIO | None = None, **extra: Any) -> Path:
    """After Ctrl-C: write the checkpoint of the ``step`` steps done (:func:`save_checkpoint`) and
    print one line saying where it is and how to continue (``resume_hint``, e.g. ``--resume``) to
    ``log`` (default stderr); returns the path. The caller re-raises the KeyboardInterrupt."""
    path = save_checkpoint(path, step=step, parts=parts, **extra)
    print(f"interrupted at step {step}: checkpoint {path}; continue with {resume_hint}",
          file=log if log is not None else sys.stderr, flush=True)
    return path


def run_steps(step: Callable[[int], T], *, first: int, steps: int, parts: dict[str, Stateful],
              checkpoint: str | Path | None, ckpt_every: int, log_every: int,
              describe: Callable[[list[T]], str] | None) -> list[T]:
    """Run ``step(k)`` for k in [first, steps) and return what each returned (e.g. its losses).

    checkpoint: written every ``ckpt_every`` steps and after the last (:func:`checkpoint_due`); on
    Ctrl-C the steps done so far are saved (:func:`save_on_interrupt`) before the KeyboardInterrupt
    goes on. describe: one progress line's text from the last ``log_every`` results, printed every
    ``log_every`` steps as ``step k/steps <text> (<seconds> s)``; None prints nothing.
    """
    results: list[T] = []
    t0 = time.perf_counter()
    try:
        for k in range(first, steps):
            results.append(step(k))
            if describe is not None and (k + 1) % log_every == 0:
                print(f"step {k + 1}/{steps} {describe(results[-log_every:])} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            if checkpoint and checkpoint_due(k + 1, ckpt_every, steps):
                save_checkpoint(checkpoint, step=k + 1, parts=parts)
    except KeyboardInterrupt:
        if checkpoint:
            save_on_interrupt(checkpoint, step=first + len(results), parts=parts,
                              resume_hint="--resume (and the same --out)")
        raise
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
    if not p.is_file():
        raise WeightsError(f"checkpoint {p} not found; give the checkpoint.pth an earlier run wrote")
    try:
        state = torch.load(str(p), map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises KeyError, ValueError, UnpicklingError … on foreign bytes
        raise WeightsError(f"checkpoint {p} cannot be read ({str(exc).splitlines()[0][:120]}); "
                           "is it a checkpoint.pth of an rtseg training run?") from None
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
                           "(printed when it stopped) or train afresh without --resume")
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
                device: torch.device | str = "cpu") -> int:
    """The step a run starts at: 0, or with ``resume`` the step of ``checkpoint`` after restoring
    ``parts`` from it (:func:`load_checkpoint`). ``resume`` without a checkpoint is a ConfigError."""
    if not resume:
        return 0
    if checkpoint is None:
        raise ConfigError("resume=True needs checkpoint=: the checkpoint.pth of the run to continue")
    return int(load_checkpoint(checkpoint, parts=parts, device=device)["step"])
