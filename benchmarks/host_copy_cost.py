"""CPU time of copying one 1080p frame the way the engine stages it for upload, beside a paced pipeline.

``YolactEngine`` copies each host frame into page-locked memory before the non-blocking upload. With torch's
copy (``tensor.pin_memory()`` / ``copy_``) the 6-MB copy is split over torch's OpenMP pool, and the pool's
workers then spin-wait (libgomp's default) for a while before they sleep: process CPU time far above the copy's
own cost, on cores the decoder and encoder threads of the pipeline want. ``np.copyto`` copies on the calling
thread and wakes nobody.

Per way: ``iters`` copies of a (1080, 1920, 3) uint8 frame, each followed by a ``gap-ms`` sleep (a pipeline
paced at ~100 FPS by its slowest stage); wall ms of the copy itself (p50) and process CPU ms per copy (user +
system over the whole loop, less the same loop's CPU with no copy). On CUDA the destination is page-locked, as
in the engine; elsewhere ordinary memory (the thread pool behaves the same). Usage:

    python -m benchmarks.host_copy_cost [--iters 200] [--gap-ms 10]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.common import checked, run_checked, summary, write_result
from rtseg.cliargs import TypedFloat


def process_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def paced(copy: Callable[[], None], iters: int, gap_s: float) -> tuple[list[float], float]:
    """(wall ms of each ``copy()``, process CPU s of the whole loop) over ``iters`` copies, each then ``gap_s``
    asleep; the first 10 copies are a warm-up."""
    for _ in range(10):
        copy()
        time.sleep(gap_s)
    walls = []
    cpu0 = process_cpu_s()
    for _ in range(iters):
        t = time.perf_counter()
        copy()
        walls.append((time.perf_counter() - t) * 1e3)
        time.sleep(gap_s)
    return walls, process_cpu_s() - cpu0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--gap-ms", type=TypedFloat, default=10.0)
    return checked(ap, ap.parse_args(argv), [("--iters", 1, None, ""), ("--gap-ms", 0, None, "")])


def run(args: argparse.Namespace) -> None:
    import torch

    gap = args.gap_ms / 1e3
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    src = torch.from_numpy(frame)
    dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=torch.cuda.is_available())
    dst_np = dst.numpy()
    ways: dict[str, Callable[[], None]] = {
        "none": lambda: None,
        "torch_copy": lambda: dst.copy_(src),
        "numpy_copyto": lambda: np.copyto(dst_np, frame),
    }
    _, idle_cpu = paced(ways["none"], args.iters, gap)
    results = {}
    for name in ("torch_copy", "numpy_copyto"):
        walls, cpu = paced(ways[name], args.iters, gap)
        results[name] = {"copy_wall": summary(walls),
                         "cpu_ms_per_copy": round((cpu - idle_cpu) / args.iters * 1e3, 3)}
        print(f"{name:13s} copy p50 {results[name]['copy_wall']['p50_ms']:.3f} ms   "
              f"CPU {results[name]['cpu_ms_per_copy']:.3f} ms per copy")
    ratio = results["torch_copy"]["cpu_ms_per_copy"] / max(results["numpy_copyto"]["cpu_ms_per_copy"], 1e-3)
    print(f"torch's copy takes {ratio:.1f}x the CPU time of numpy's ({torch.get_num_threads()} torch threads)")
    path = write_result("host_copy_cost" + ("_gpu" if torch.cuda.is_available() else "_cpu"), {
        "frame": [1080, 1920, 3], "iters": args.iters, "gap_ms": args.gap_ms, "pinned": torch.cuda.is_available(),
        "idle_loop_cpu_ms_per_iter": round(idle_cpu / args.iters * 1e3, 3), "ways": results,
        "torch_over_numpy_cpu": round(ratio, 2), "load_average_1min": os.getloadavg()[0]})
    print(f"-> {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
