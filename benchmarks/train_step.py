"""Time of one YOLACT training step without data loading, split into its parts.

The demo model's architecture (from ``engines/yolact_demo.json``: ResNet-18, FPN 64,
32 prototypes, its input size) trains on one fixed, already collated batch of augmented
synthetic samples, so the numbers are the device's share of a step; comparing them with
the s/it that ``rtseg train`` prints tells whether the data loader is the limit.
Parts (wall ms, CUDA synchronised, p50): the network's forward + backward on a constant
loss, the loss alone (matching, OHEM, mask and semantic terms) and a whole
``Trainer.train_step`` (AMP on CUDA). Usage::

    python -m benchmarks.train_step [--device cuda] [--batch-size 16] [--iters 30]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from benchmarks.common import checked, device_spec, run_checked, wall_summary, write_result
from rtseg.data.synthetic import SyntheticDataset
from rtseg.train.recipe import INT_LIMITS

MANIFEST = Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0])
    ap.add_argument("--device", type=device_spec, default=None,
                    help="cpu, cuda or cuda:N (default: cuda when there is one)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--result", default="train_step", help="name of the JSON under benchmarks/results/")
    return checked(ap, ap.parse_args(argv), [("--batch-size", *INT_LIMITS["batch_size"], ""),
                                             ("--iters", *INT_LIMITS["iters"], "")])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.models.yolact import Yolact, YolactConfig
    from rtseg.train.augment import AugmentConfig
    from rtseg.train.losses import yolact_loss
    from rtseg.train.trainer import AugmentedSamples, TrainConfig, Trainer, collate

    cfg = YolactConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in json.loads(MANIFEST.read_text())["config"].items()})
    train = SyntheticDataset.split("train", 64)
    samples = AugmentedSamples(train, size=cfg.input_size, config=AugmentConfig(expand_max=1.5), seed=0,
                               start=0, stop=args.batch_size)
    images, targets = collate([samples[i] for i in range(args.batch_size)])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(model=Yolact(cfg), train_set=train, val_set=None, work_dir=work,
                          device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                          config=TrainConfig(iters=10 ** 6, batch_size=args.batch_size, lr=1e-3, warmup_iters=1))
        dev = trainer.device
        x, t = trainer.engine.preprocess_batch(images), targets.to(dev)
        amp = dict(device_type=dev.type, dtype=torch.float16, enabled=trainer.use_amp)

        def network() -> None:
            with torch.autocast(**amp):
                out = trainer.model(x)
                total = sum(v.float().sum() for v in out.values())
            total.backward()

        def loss() -> None:
            with torch.no_grad(), torch.autocast(**amp):
                out = trainer.model(x)
            out = {k: v.detach().requires_grad_() for k, v in out.items()}
            yolact_loss(out, t, trainer.priors, trainer.config.loss)["total"].backward()

        parts = {
            "network_fwd_bwd": wall_summary(network, iters=args.iters, warmup=3),
            "loss_fwd_bwd_plus_network_fwd": wall_summary(loss, iters=args.iters, warmup=3),
            "train_step": wall_summary(lambda: trainer.train_step(images, targets), iters=args.iters, warmup=3),
        }
    for name, r in parts.items():
        print(f"{name}: p50 {r['p50_ms']:.1f} ms")
    path = write_result(args.result, {
        "device": str(dev), "batch_size": args.batch_size, "input_size": cfg.input_size,
        "amp": trainer.use_amp, "objects_in_batch": int(targets.valid.sum()), "parts_ms": parts})
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
