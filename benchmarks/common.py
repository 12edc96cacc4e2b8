"""Shared helpers for benchmark scripts: machine description, percentiles, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from rtseg.models.yolact import Yolact

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU / GPU model, core count and library versions of this machine."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def time_it(fn: Callable[[], Any], *, iters: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of ``iters`` calls after ``warmup`` discarded calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def wall_summary(fn: Callable[[], Any], *, iters: int, warmup: int) -> dict[str, float]:
    """:func:`summary` of :func:`time_it` plus ``fps`` (calls per second from the mean)."""
    r = summary(time_it(fn, iters=iters, warmup=warmup))
    r["fps"] = 1000.0 / r["mean_ms"]
    return r


def one_in_flight(engine: Any, submit: Callable[[], Any], iters: int, rounds: int = 5) -> dict[str, Any]:
    """Throughput with one batch in flight (``YolactEngine.stream``'s order: batch i + 1 submitted before batch
    i is collected): ``submit()`` → an ``YolactEngine.dispatch``-ed batch; per round of ``iters`` batches the
    wall ms per batch (device idle at both ends), summarised over ``rounds`` rounds after one warm-up round, and
    ``fps`` from their mean."""
    def round_ms() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pending = submit()
        for _ in range(iters - 1):
            queued = submit()
            engine.collect(pending)
            pending = queued
        engine.collect(pending)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000.0 / iters

    round_ms()
    r: dict[str, Any] = summary([round_ms() for _ in range(rounds)])
    r["fps"] = 1000.0 / r["mean_ms"]
    return r


def summary(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds."""
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(statistics.fmean(ms)), "n": len(ms)}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine description and a timestamp."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def busy_model(preset: str) -> "Yolact":
    """A random YOLACT whose class scores spread out, so that NMS and mask assembly have real work."""
    from rtseg.models.yolact import PRESETS, Yolact

    torch.manual_seed(0)
    model = Yolact(PRESETS[preset])
    with torch.no_grad():
        model.prediction_layers[0].conf_layer.bias.normal_(0, 3)
    return model


def module_at(rev: str, source: str) -> ModuleType:
    """The repository's file ``source`` (e.g. ``rtseg/data/coco.py``) as it was at git revision ``rev``, imported
    as a module of its own: a baseline to time beside the current code in one process (needs git and the
    repository's history)."""
    text = subprocess.run(["git", "show", f"{rev}:{source}"], cwd=Path(__file__).resolve().parent.parent,
                          check=True, capture_output=True, text=True).stdout
    module = ModuleType(f"{Path(source).stem}_at_{rev}")
    exec(compile(text, f"{rev}:{source}", "exec"), module.__dict__)
    return module
