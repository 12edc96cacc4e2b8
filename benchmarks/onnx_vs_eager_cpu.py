"""Network-only CPU latency: eager torch vs ONNX Runtime (CPUExecutionProvider), batch 1; and torch.compile with
inductor's freezing (``freeze=True``: batch norms folded, oneDNN weights prepacked), which needs a C++ compiler.

Eager runs the network as a CPU engine holds it (4-D weights channels_last, CPU_CHANNELS_LAST).
The evidence behind ``backend="auto"`` on a CPU (rtseg.engines.backends.CPU_AUTO). Random
weights (latency does not depend on them). Writes benchmarks/results/onnx_vs_eager_cpu.json.

    python -m benchmarks.onnx_vs_eager_cpu [--iters 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from benchmarks.common import THREADS, checked, run_checked, summary, time_it, write_result

if TYPE_CHECKING:
    from rtseg.models.yolact import YolactConfig


def configs() -> dict[str, YolactConfig]:
    """The networks timed, by name."""
    from rtseg.models.yolact import YolactConfig

    return {
        "resnet50_550": YolactConfig(backbone="resnet50"),
        "demo_resnet18_320": YolactConfig(backbone="resnet18", num_classes=6, input_size=320, fpn_channels=64,
                                          num_prototypes=16),
    }


def measure(cfg: YolactConfig, iters: int, cache: Path) -> dict:
    import torch

    from rtseg.engines.backends import make_backend
    from rtseg.engines.options import place_network
    from rtseg.engines.yolact import InferenceNet
    from rtseg.models.yolact import Yolact

    torch.manual_seed(0)
    net = place_network(InferenceNet(Yolact(cfg)), torch.device("cpu"))  # as the engine runs it (channels_last)
    x = torch.randn(1, 3, cfg.input_size, cfg.input_size)
    eager = make_backend(net, name="eager", device="cpu", input_size=cfg.input_size)
    t = time.perf_counter()
    onnx = make_backend(net, name="onnx", device="cpu", input_size=cfg.input_size, config=cfg, cache_dir=cache)
    export_s = time.perf_counter() - t
    frozen = make_backend(net, name="compile", device="cpu", input_size=cfg.input_size, freeze=True)
    with torch.inference_mode():
        t = time.perf_counter()
        frozen(x)  # compiles
        compile_s = time.perf_counter() - t
        e = summary(time_it(lambda: eager(x), iters=iters))
        o = summary(time_it(lambda: onnx(x), iters=iters))
        f = summary(time_it(lambda: frozen(x), iters=iters))
        ref = eager(x)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, onnx(x)))
        diff_frozen = max(float((a - b).abs().max()) for a, b in zip(ref, frozen(x)))
    return {"eager": e, "onnx_runtime": o, "speedup_p50": e["p50_ms"] / o["p50_ms"], "export_s": export_s,
            "max_abs_diff": diff, "compile_frozen": f, "compile_frozen_speedup_p50": e["p50_ms"] / f["p50_ms"],
            "compile_frozen_first_call_s": compile_s, "compile_frozen_max_abs_diff": diff_frozen}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    return checked(ap, ap.parse_args(argv), [("--iters", 1, None, ""), THREADS])


def run(args: argparse.Namespace) -> None:
    import onnxruntime as ort  # a missing package: one line (run_checked)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        results = {name: measure(cfg, args.iters, Path(cache)) for name, cfg in configs().items()}
    for name, r in results.items():
        print(f"{name}: eager p50 {r['eager']['p50_ms']:.1f} ms, ORT p50 {r['onnx_runtime']['p50_ms']:.1f} ms, "
              f"speedup {r['speedup_p50']:.2f}x, max |diff| {r['max_abs_diff']:.1e}; compile frozen p50 "
              f"{r['compile_frozen']['p50_ms']:.1f} ms ({r['compile_frozen_speedup_p50']:.2f}x, first call "
              f"{r['compile_frozen_first_call_s']:.0f} s, max |diff| {r['compile_frozen_max_abs_diff']:.1e})")
    load = os.getloadavg()  # the dev machine is shared: a high load slows eager torch most (OpenMP spinning)
    print(write_result("onnx_vs_eager_cpu", {"batch": 1, "threads": args.threads, "onnxruntime": ort.__version__,
                                             "load_avg_1_5_15": load, "results": results}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
