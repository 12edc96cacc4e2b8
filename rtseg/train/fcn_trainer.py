"""``python -m rtseg.train.fcn_trainer``: train a small FCN on the synthetic benchmark (:mod:`rtseg.train.fcn`).

``python -m rtseg.train.fcn_trainer --out engines/fcn8s_synthetic.safetensors``
trains on the synthetic benchmark's train split; it writes a checkpoint every
``ckpt_every`` steps to ``<out without suffix>.train/checkpoint.pth``, and
``--resume`` continues from there (batches are drawn per step from ``(seed, step)``,
so a resumed run trains on exactly the batches the uninterrupted one would). The checkpoint stores the run's
recipe (--images, --size, --arch, --width: :func:`rtseg.train.recipe.recipe_of`): a resume with other values is
refused naming them; more --steps, another --lr or --threads are taken.

This module is light (no torch at its top): :func:`main` parses and checks the options first (``--help`` and a bad
option answer at once), then imports the trainer where a Ctrl-C, SIGTERM or SIGHUP during those seconds is one line
(:func:`rtseg.entry.run_command`). :class:`FcnTrainConfig`, :func:`train_fcn` and
:func:`evaluate_fcn` are importable from here too (from :mod:`rtseg.train.fcn`, loaded at their first use).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from rtseg.entry import lazy_attributes, run_as_script, run_command
from rtseg.cliargs import TypedFloat
from rtseg.train.recipe import parse_recipe, recipe_parser

__getattr__, __dir__ = lazy_attributes(globals(), dict.fromkeys(
    ("FcnTrainConfig", "train_fcn", "evaluate_fcn"), "rtseg.train.fcn"))
LR = 1e-3
"""Adam's learning rate unless told (``--lr``, :class:`~rtseg.train.fcn.FcnTrainConfig`)."""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of ``argv`` (None: ``sys.argv[1:]``), checked (:func:`rtseg.train.recipe.parse_recipe`)."""
    ap = recipe_parser("python -m rtseg.train.fcn_trainer", "Train a small FCN on the synthetic benchmark "
                       "(CPU-friendly).", lr=LR, lr_help="Adam learning rate", images=160, size=(128, 96))
    ap.add_argument("--arch", default="fcn8s", choices=("fcn8s", "fcn16s", "fcn32s"),
                    help="FCN variant: output stride 8, 16 or 32 (default: %(default)s)")
    ap.add_argument("--width", type=TypedFloat, default=0.125,
                    help="channel multiplier of VGG16 (1.0 = paper; default: %(default)s)")
    return parse_recipe(ap, argv, [("--width", 0.01, 1.0, " (1.0 is the paper's VGG16)")])


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 2 with one error line on a user error, 130 on Ctrl-C, 143 on a SIGTERM and
    129 on a SIGHUP (once training runs the steps done are saved first:
    :func:`rtseg.train.checkpoint.sigterm_as_interrupt`; not while the trainer still imports)."""
    return run_command("fcn_trainer", "rtseg.train.fcn:run", parse=lambda: parse(argv))


if __name__ == "__main__":
    run_as_script(main)
