"""Where a GPU engine call spends its time: per-stage wall times and the busiest ops.

The busy random YOLACT (``benchmarks.common.busy_model``, 100 detections) on a 1080p host frame,
per network backend: wall ms (p50 over ``--iters`` calls, CUDA synchronised after each stage) of
upload + preprocess, ``forward`` (network + detection step on the device; one CUDA graph with the
compile backend), ``postprocess`` (the rows to the host, Detections), device blend + download of
the finished frame, and the whole ``annotate(frame, engine(frame))`` call without intermediate
synchronisation, and frames → detections with one frame in flight (``frame_one_in_flight``: as
:meth:`YolactEngine.stream`, frame i + 1 uploaded and queued before frame i's rows are awaited); then a
torch.profiler table of that whole call (top ops by host time, with device
time) to say whether the host (launches, waits) or the device is the limit. Then the detection step
alone (:meth:`YolactEngine.candidates`: decode, threshold, Fast NMS) eager with the CuPy keep kernel
and with torch's; and model + post-processing at batch 1 from a preprocessed input: the compile
engine's ``forward`` + ``postprocess`` (network and detection step as one CUDA graph: inductor's, and
ours with ``capture=True``; each also with one frame in flight) against the network's graph followed by the
eager detection step (CuPy NMS), with whether they give the same detections. Usage (CUDA required):

    python -m benchmarks.engine_profile --out $OUT/engine_profile.json [--backends eager_fp16_cl compile_fp16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from benchmarks.common import (
    busy_model,
    checked,
    frame_size,
    machine,
    one_in_flight,
    output_file,
    run_checked,
    summary,
    time_it,
    wall_summary,
)
from benchmarks.gpu_fastpath import BACKEND_RUNS, versions
from rtseg.ops.overlay import _annotate_inferred as annotate  # the pipeline's: the frame inferred on, unchanged
from rtseg.yolact_spec import PRESET_NAMES

if TYPE_CHECKING:
    from rtseg.engines.yolact import YolactEngine


def synced_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn's result, wall ms until the device is idle again)."""
    import torch

    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1000.0


def stage_times(engine: YolactEngine, frame: np.ndarray, iters: int) -> dict[str, dict[str, float]]:
    """p50/p95/p99/mean ms per stage (device synchronised after each) and of the unsynchronised whole call."""
    size = frame.shape[:2]
    times: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": [], "blend_download": [],
                                     "whole": []}
    for i in range(iters + 10):
        x, t_pre = synced_ms(lambda: engine.preprocess([frame]))
        cands, t_fwd = synced_ms(lambda: engine.forward(x))
        dets, t_post = synced_ms(lambda: engine.postprocess(cands, [size])[0])
        _, t_blend = synced_ms(lambda: annotate(frame, dets))
        _, t_whole = synced_ms(lambda: annotate(frame, engine(frame)))
        if i >= 10:
            for key, t in zip(times, (t_pre, t_fwd, t_post, t_blend, t_whole)):
                times[key].append(t)
    return {key: summary(v) for key, v in times.items()}


def candidates_times(engine: YolactEngine, frame: np.ndarray, iters: int) -> dict[str, Any]:
    """Wall ms (device synchronised, ``time_it``) of the eager detection step on one frame's network
    outputs, with the engine's Fast NMS keep decision (CuPy kernel when installed) and with torch's."""
    import torch

    from rtseg.ops.nms import fast_nms

    with torch.inference_mode():
        loc, conf, _, _ = engine.network(engine.preprocess([frame]))
    loc, conf = loc[0], conf[0]
    out: dict[str, Any] = {"nms": engine._fast_nms.__module__}
    with torch.inference_mode():
        out["eager_engine_nms"] = summary(time_it(lambda: engine.candidates(loc, conf), iters=iters, warmup=10))
        out["eager_torch_nms"] = summary(time_it(lambda: engine.candidates(loc, conf, nms=fast_nms), iters=iters,
                                                 warmup=10))
    return out


def model_post_times(engine: YolactEngine, frame: np.ndarray, iters: int,
                     frozen: bool = False) -> dict[str, Any]:
    """Model + post-processing at batch 1 from a preprocessed input (wall ms, device synchronised):
    ``forward`` + ``postprocess`` with the network and the detection step as one graph, inductor's CUDA graph
    (compile_fp16) and ours (compile_fp16_captured; with ``frozen`` also compile_fp16_captured_frozen,
    inductor's freezing), each also with one frame in flight (:func:`one_in_flight`:
    frame i + 1's graph queued before frame i's rows are awaited), vs the network's graph followed by the eager
    detection step (CuPy NMS); and how many detections of each one-graph variant match the latter's
    (:func:`matched`)."""
    import torch

    from rtseg.engines.backends import make_backend

    s = engine.cfg.input_size
    x = engine.preprocess([frame])
    out: dict[str, Any] = {"nms_eager": engine._fast_nms.__module__}
    dets: dict[str, Any] = {}
    ref = None
    with torch.inference_mode():
        for run in ("compile_fp16", "compile_fp16_captured", *(["compile_fp16_captured_frozen"] if frozen else [])):
            try:
                engine.backend = make_backend(engine.net, device="cuda", input_size=s, config=engine.cfg,
                                              **BACKEND_RUNS[run])
                fused = f"{run}_forward_plus_postprocess"
                out[fused] = wall_summary(lambda: engine.postprocess(engine.forward(x), [(s, s)])[0], iters=iters,
                                          warmup=10)
                dets[fused] = engine.postprocess(engine.forward(x), [(s, s)])[0]
                out[f"{run}_one_in_flight"] = one_in_flight(
                    engine, lambda: engine.dispatch(engine.forward(x), [(s, s)]), iters)
                if run == "compile_fp16":
                    def eager_head() -> Any:
                        return engine.postprocess(engine.detection_head(engine.network(x)), [(s, s)])[0]
                    out["network_graph_then_eager_detection"] = wall_summary(eager_head, iters=iters, warmup=10)
                    ref = eager_head()
            except Exception as exc:  # noqa: BLE001 - keep the other variant's numbers
                out[run] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    for name, got in dets.items() if ref is not None else ():
        out[f"{name}_detections_vs_eager"] = (len(got), len(ref))
        out[f"{name}_matching_eager"] = matched(got, ref)
    return out


def matched(got: Any, ref: Any, tol_px: float = 1.0) -> int:
    """Detections of ``got`` with a partner in ``ref`` (same class, every box side within ``tol_px``), one to one
    and in any order: random weights give near-equal scores, whose order fp16 rounding reshuffles."""
    free = np.ones(len(ref), bool)
    count = 0
    for cls, box in zip(got.class_ids, got.boxes):
        hit = free & (ref.class_ids == cls) & (np.abs(ref.boxes - box).max(1) <= tol_px)
        if hit.any():
            free[np.argmax(hit)] = False
            count += 1
    return count


#: Host-side CUDA API calls that put work on the device, counted per whole call by :func:`profile_whole_call`.
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                "cudaMemcpyAsync", "cudaMemsetAsync", "cudaStreamSynchronize", "cudaEventSynchronize")


def profile_whole_call(engine: YolactEngine, frame: np.ndarray, iters: int, rows: int) -> tuple[str, dict[str, Any]]:
    """torch.profiler over ``iters`` whole calls: the key-averages table (top ``rows`` by host time)
    and, per call, the launches / copies / waits of :data:`LAUNCH_CALLS` plus host and device ms."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            annotate(frame, engine(frame))
        torch.cuda.synchronize()
    averages = prof.key_averages()
    per_call: dict[str, Any] = {e.key: e.count / iters for e in averages if e.key in LAUNCH_CALLS}
    per_call["self_cpu_ms"] = sum(e.self_cpu_time_total for e in averages) / iters / 1000.0
    per_call["self_device_ms"] = sum(e.self_device_time_total for e in averages) / iters / 1000.0
    table = averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)
    return table, per_call


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="yolact_base", choices=PRESET_NAMES)
    ap.add_argument("--backends", nargs="+", default=["compile_fp16_captured", "compile_fp16", "eager_fp16_cl"],
                    choices=list(BACKEND_RUNS))
    ap.add_argument("--frame", type=frame_size("HxW"), default="1080x1920", help="HxW of the host frame")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--profile-iters", type=int, default=20)
    ap.add_argument("--out", type=output_file, required=True,
                    help="JSON path; the profiler tables go next to it (.txt)")
    return checked(ap, ap.parse_args(argv), [("--iters", 1, None, ""), ("--profile-iters", 1, None, "")])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines.backends import make_backend
    from rtseg.engines.yolact import YolactEngine

    if not torch.cuda.is_available():
        raise SystemExit("engine_profile: CUDA is not available here")
    h, w = args.frame
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    engine = YolactEngine(model=busy_model(args.preset), device="cuda", score_threshold=0.0)
    doc: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions(),
                           "preset": args.preset, "frame": f"{h}x{w}", "iters": args.iters, "results": {}}
    tables = []
    for run in args.backends:
        try:
            engine.backend = make_backend(engine.net, device="cuda", input_size=engine.cfg.input_size,
                                          config=engine.cfg, **BACKEND_RUNS[run])
            r = stage_times(engine, frame, args.iters)
            r["frame_one_in_flight"] = one_in_flight(  # host frame → detections, as YolactEngine.stream runs it
                engine, lambda: engine.dispatch(engine.forward(engine.preprocess([frame])), [frame.shape[:2]]),
                args.iters)
            r["detections"] = len(engine(frame))
            doc["results"][run] = r
            print(run, " ".join(f"{k} {v['p50_ms']:.2f}" for k, v in r.items() if isinstance(v, dict)), "ms p50",
                  flush=True)
            table, r["per_call"] = profile_whole_call(engine, frame, args.profile_iters, 30)
            tables.append(f"== {run}\n{table}")
        except Exception as exc:  # noqa: BLE001 - keep the other backends' numbers
            doc["results"][run] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text("\n".join(tables))
    try:
        doc["candidates"] = candidates_times(engine, frame, args.iters)
    except Exception as exc:  # noqa: BLE001 - the stage numbers above are kept
        doc["candidates"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    try:
        doc["model_post_batch1"] = model_post_times(engine, frame, args.iters,
                                                    frozen="compile_fp16_captured_frozen" in args.backends)
    except Exception as exc:  # noqa: BLE001 - the numbers above are kept
        doc["model_post_batch1"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("candidates:", json.dumps(doc["candidates"])[:600])
    print("model + post, batch 1:", json.dumps(doc["model_post_batch1"])[:600])
    print("\n".join(tables))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
