"""``python -m rtseg.train.msrcnn_trainer``: train a small Mask Scoring R-CNN on the synthetic benchmark and check
its mask scores (:mod:`rtseg.train.msrcnn`).

``python -m rtseg.train.msrcnn_trainer --out engines/msrcnn_synthetic.safetensors``
trains a ResNet-18-FPN model on tiny synthetic images (CPU, minutes); it writes a
checkpoint every ``ckpt_every`` steps to ``<out without suffix>.train/checkpoint.pth``,
and ``--resume`` continues from there (batches drawn per step from ``(seed, step)``). The checkpoint stores the
run's recipe (--images, --size, --backbone: :func:`rtseg.train.recipe.recipe_of`): a resume with other values is
refused naming them; more --steps, another --lr or --threads are taken.

This module is light (no torch at its top): :func:`main` parses and checks the options first (``--help`` and a bad
option answer at once), then imports the trainer where a Ctrl-C, SIGTERM or SIGHUP during those seconds is one line
(:func:`rtseg.entry.run_command`). :class:`MsrcnnTrainConfig`, :func:`train_msrcnn`,
:func:`to_target` and :func:`mask_quality` are importable from here too (from :mod:`rtseg.train.msrcnn`, loaded
at their first use).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from rtseg.entry import lazy_attributes, run_as_script, run_command
from rtseg.train.recipe import parse_recipe, recipe_parser

__getattr__, __dir__ = lazy_attributes(globals(), dict.fromkeys(
    ("MsrcnnTrainConfig", "train_msrcnn", "to_target", "mask_quality"), "rtseg.train.msrcnn"))
LR = 0.01
"""SGD's learning rate after warm-up unless told (``--lr``, :class:`~rtseg.train.msrcnn.MsrcnnTrainConfig`)."""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of ``argv`` (None: ``sys.argv[1:]``), checked (:func:`rtseg.train.recipe.parse_recipe`)."""
    ap = recipe_parser("python -m rtseg.train.msrcnn_trainer", "Train a small Mask Scoring R-CNN on the synthetic "
                       "benchmark (CPU).", lr=LR, lr_help="SGD learning rate after warm-up", images=200,
                       size=(160, 120))
    ap.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet50"),
                    help="ResNet backbone of the FPN (default: %(default)s)")
    return parse_recipe(ap, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 2 with one error line on a user error, 130 on Ctrl-C, 143 on a SIGTERM and
    129 on a SIGHUP (once training runs the steps done are saved first:
    :func:`rtseg.train.checkpoint.sigterm_as_interrupt`; not while the trainer still imports)."""
    return run_command("msrcnn_trainer", "rtseg.train.msrcnn:run", parse=lambda: parse(argv))


if __name__ == "__main__":
    run_as_script(main)
