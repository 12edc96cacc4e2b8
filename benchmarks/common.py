"""Shared helpers for benchmark scripts: their option checks, machine description, percentiles, JSON output.

Light (no torch at its top): a script parses and checks its options with :func:`checked` and the argparse types
here before it imports torch, so that ``--help`` and a bad option answer at once (argparse's usage, then one line
``prog: error: …``, exit 2; nothing measured, no result written); :func:`run_checked` then runs it, a user error
found only on the way (weights that do not load, a missing package) one such line too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from rtseg.cliargs import NumberRange, check_ranges, plain_floats
from rtseg.data.synthetic import LEAST, MOST
from rtseg.errors import ConfigError, RtsegError, SinkError, exit_status
from rtseg.userfiles import check_input_file
from rtseg.video.outfiles import require_writable_folder

if TYPE_CHECKING:
    from rtseg.models.yolact import Yolact

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


THREADS: NumberRange = ("--threads", 1, 1024, "")
"""The range of the CPU benchmarks' ``--threads`` (torch's intra-op threads; as ``rtseg train --threads``)."""


def checked(ap: argparse.ArgumentParser, args: argparse.Namespace,
            ranges: Sequence[NumberRange]) -> argparse.Namespace:
    """``args`` when every option of ``ranges`` (name, least, most or None, why the limit) is within its range
    (:func:`rtseg.cliargs.check_ranges`, every value of a multi-value option); otherwise ``ap.error`` for the first
    one out of it: the usage, then ``prog: error: --frames 0: must be an integer >= 1``, exit 2. Float options of
    type :class:`rtseg.cliargs.TypedFloat` are quoted as typed, then made plain floats."""
    try:
        check_ranges(args, ranges)
    except ConfigError as exc:
        ap.error(str(exc))
    return plain_floats(args)


def frame_size(order: str) -> Callable[[str], tuple[int, int]]:
    """An argparse type: ``"640x480"`` → ``(640, 480)``, the two sides in ``order`` (``"WxH"`` or ``"HxW"``), each
    an integer from 32 to 4096 pixels (a synthetic frame's limits, :data:`rtseg.data.synthetic.LEAST` /
    :data:`~rtseg.data.synthetic.MOST`); anything else is argparse's error line (``argument --size: 'abc': give
    WxH, …``)."""
    low, high = LEAST["width"], MOST["width"]
    example = "640x480" if order == "WxH" else "1080x1920"

    def parse(text: str) -> tuple[int, int]:
        first, sep, second = text.lower().partition("x")
        if sep and all(s.isascii() and s.isdigit() and low <= int(s) <= high for s in (first, second)):
            return int(first), int(second)
        raise argparse.ArgumentTypeError(f"{text!r}: give {order}, each side an integer in [{low}, {high}] pixels "
                                         f"(e.g. {example})")

    return parse


def device_spec(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has that device is said in one line
    where the script makes it)."""
    if re.fullmatch(r"cpu|cuda(:[0-9]+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N")


def input_file(text: str) -> Path:
    """An argparse type: a regular file this process may read (:func:`rtseg.userfiles.check_input_file`: checked
    without reading it), such as a weights file."""
    try:
        check_input_file(text, text, "give an existing file")
    except RtsegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def output_file(text: str) -> Path:
    """An argparse type: where to write a results file: not a folder, in a folder that exists and this process may
    write (:func:`rtseg.video.outfiles.require_writable_folder`; found now, not after the minutes of measuring)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give a file path")
    path = Path(text)
    try:
        require_writable_folder(path, "results file")
    except SinkError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def check_revision(ap: argparse.ArgumentParser, rev: str, source: str) -> None:
    """``ap.error`` (usage and one line, exit 2) unless this repository's git history has the file ``source`` at
    the revision ``rev`` (``--baseline``: what :func:`module_at` reads)."""
    try:
        found = subprocess.run(["git", "cat-file", "-e", f"{rev}:{source}"], cwd=ROOT, capture_output=True).returncode
    except OSError as exc:
        ap.error(f"--baseline {rev}: git does not run here ({exc.strerror}); the baseline is read from this "
                 "repository's history")
    if found != 0:
        ap.error(f"--baseline {rev}: this repository's git history has no {source} at that revision; give a commit "
                 "that has it")


def run_checked(file: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    """The exit status of ``run(args)`` (a script's work, its options checked) under the script's file name
    (:func:`rtseg.errors.exit_status`): its own when it returns an int, else 0; 2 after one line
    ``prog: error: …`` for an rtseg error found on the way (weights that do not load, a CUDA device this machine
    lacks) or a missing package, 130 after ``prog: interrupted`` on Ctrl-C."""
    return exit_status(Path(file).name, lambda: run(args))


def machine() -> dict[str, Any]:
    """CPU / GPU model, core count and library versions of this machine."""
    import torch

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
    import torch

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
    import torch

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
    import torch

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
    text = subprocess.run(["git", "show", f"{rev}:{source}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout
    module = ModuleType(f"{Path(source).stem}_at_{rev}")
    exec(compile(text, f"{rev}:{source}", "exec"), module.__dict__)
    return module
