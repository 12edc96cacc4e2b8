"""Whole frames on the CPU with the engines' networks in channels_last memory vs the default (NCHW) layout.

The evidence behind :data:`rtseg.engines.options.CPU_CHANNELS_LAST`. For each engine two instances of the same
weights, one as the engine builds it (channels_last on the CPU) and one converted back to NCHW, segment the same
synthetic 640x480 frames in alternation (so machine load hits both alike): ``engine(frame)`` plus the masks /
label map a sink would read, p50 over the frames after warm-up. Also the largest difference of their outputs.

    python -m benchmarks.cpu_channels_last [--frames 12] [--threads 2] [--engines demo yolact_r50 fcn msrcnn]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from benchmarks.common import THREADS, checked, run_checked, summary, write_result
from rtseg.data.synthetic import CLASSES, TEST_SEED, SyntheticScene
from rtseg.engines import load
from rtseg.outputs import DEMO_WEIGHTS
from rtseg.types import SemanticMap

if TYPE_CHECKING:
    import torch

NAMES = ["background", *CLASSES]
ENGINES = ("demo", "yolact_r50", "fcn", "msrcnn")
"""The engines compared (``--engines``)."""


def _build(name: str) -> Any:
    """A fresh engine ``name`` (one of :data:`ENGINES`) on the CPU (random weights seeded alike, except the shipped
    demo model)."""
    import torch

    from rtseg.engines.fcn import FcnEngine
    from rtseg.engines.msrcnn import MsrcnnEngine
    from rtseg.engines.yolact import YolactEngine
    from rtseg.models.fcn import FcnConfig
    from rtseg.models.msrcnn import MsrcnnConfig
    from rtseg.models.yolact import YolactConfig

    torch.manual_seed(0)
    if name == "demo":
        return load("yolact", str(DEMO_WEIGHTS), score_threshold=0.15)
    if name == "yolact_r50":
        return YolactEngine.from_config(YolactConfig(backbone="resnet50", num_classes=len(CLASSES)),
                                        class_names=list(CLASSES), score_threshold=0.05)
    if name == "fcn":
        return FcnEngine.from_config(FcnConfig(num_classes=len(NAMES), width=0.5), class_names=NAMES)
    return MsrcnnEngine.from_config(MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=480,
                                                 max_size=640), class_names=list(CLASSES))


def _network(engine: Any) -> torch.nn.Module:
    from rtseg.engines.yolact import YolactEngine

    return engine.net if isinstance(engine, YolactEngine) else engine.model


def _read(engine: Any, frame: np.ndarray) -> np.ndarray:
    """The frame's result as a sink reads it: stacked masks (instances) or the label map (semantic)."""
    out = engine(frame)
    return out.labels if isinstance(out, SemanticMap) else out.masks


def compare(name: str, frames: list[np.ndarray]) -> dict[str, Any]:
    import torch

    nhwc, nchw = _build(name), _build(name)
    _network(nchw).to(memory_format=torch.contiguous_format)
    assert next(p for p in _network(nhwc).parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {"nchw": lambda f: _read(nchw, f),
                                                           "channels_last": lambda f: _read(nhwc, f)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    differing_pixels = 0
    with torch.inference_mode():
        for run in runs.values():  # warm-up (oneDNN primitive caches)
            run(frames[0])
        for frame in frames:
            outs = {}
            for key, run in runs.items():
                t = time.perf_counter()
                outs[key] = run(frame)
                times[key].append((time.perf_counter() - t) * 1e3)
            a, b = outs["nchw"], outs["channels_last"]
            differing_pixels += int(np.count_nonzero(a != b)) if a.shape == b.shape else int(max(a.size, b.size))
    res = {k: summary(v) for k, v in times.items()}
    res["speedup_p50"] = res["nchw"]["p50_ms"] / res["channels_last"]["p50_ms"]
    res["differing_output_pixels"] = differing_pixels
    return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    return checked(ap, ap.parse_args(argv), [("--frames", 1, None, ""), THREADS])


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    scene = SyntheticScene(TEST_SEED, width=640, height=480, num_frames=args.frames)
    frames = [scene.frame(i)[0] for i in range(args.frames)]
    results = {}
    for name in args.engines:
        results[name] = r = compare(name, frames)
        print(f"{name}: NCHW p50 {r['nchw']['p50_ms']:.1f} ms, channels_last p50 {r['channels_last']['p50_ms']:.1f} ms,"
              f" {r['speedup_p50']:.2f}x; output pixels that differ: {r['differing_output_pixels']}", flush=True)
    print(write_result("cpu_channels_last", {"frames": args.frames, "frame_wh": [640, 480], "threads": args.threads,
                                             "load_avg_1_5_15": os.getloadavg(), "results": results}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
