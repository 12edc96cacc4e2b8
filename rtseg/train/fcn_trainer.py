"""``python -m rtseg.train.fcn_trainer``: train a small FCN on the synthetic benchmark (:mod:`rtseg.train.fcn`).

``python -m rtseg.train.fcn_trainer --out engines/fcn8s_synthetic.safetensors``
trains on the synthetic benchmark's train split; it writes a checkpoint every
``ckpt_every`` steps to ``<out without suffix>.train/checkpoint.pth``, and
``--resume`` continues from there (batches are drawn per step from ``(seed, step)``,
so a resumed run trains on exactly the batches the uninterrupted one would).

This module is light (no torch at its top): :func:`main` imports the trainer where a Ctrl-C or a SIGTERM during
those seconds is one line (:func:`rtseg.entry.run_command`). :class:`FcnTrainConfig`, :func:`train_fcn` and
:func:`evaluate_fcn` are importable from here too (from :mod:`rtseg.train.fcn`, loaded at their first use).
"""
from __future__ import annotations

from rtseg.entry import lazy_attributes, run_as_script, run_command

__getattr__ = lazy_attributes(__name__, dict.fromkeys(("FcnTrainConfig", "train_fcn", "evaluate_fcn"),
                                                     "rtseg.train.fcn"))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 2 with one error line on a user error, 130 on Ctrl-C or on a SIGTERM
    once training runs (the steps done are saved), 143 on a SIGTERM while the trainer still imports."""
    return run_command("fcn_trainer", "rtseg.train.fcn:run", argv)


if __name__ == "__main__":
    run_as_script(main)
