"""GPU fast path: model-only latency per backend and batch, and post-processing per stage.

Model: each backend of rtseg.engines.backends at batch 1/4/16, warm-up discarded, >= 200 timed
iterations with CUDA events → p50/p95/p99 ms per batch and images/s. Post-processing on a busy
random network (spread class bias, tens of detections): NMS (torch Fast NMS vs CuPy kernel vs
torchvision batched_nms), mask assembly (torch vs CuPy kernel, full resolution), overlay
(CPU annotate path vs the CuPy overlay kernel on a device frame), COCO RLE of 20 masks (encoded on
the device vs downloaded and encoded by pycocotools). Every configuration is
skipped, and recorded as such, once the time budget is spent. Usage (CUDA required):

    python -m benchmarks.gpu_fastpath --out $OUT/gpu_fastpath.json [--budget-s 300]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from benchmarks.common import (
    RESULTS,
    busy_model,
    checked,
    frame_size,
    machine,
    output_file,
    run_checked,
    summary,
    wall_summary,
)
from rtseg.cliargs import TypedFloat
from rtseg.yolact_spec import PRESET_NAMES

if TYPE_CHECKING:
    from rtseg.engines.yolact import YolactEngine

#: name → make_backend keywords
BACKEND_RUNS: dict[str, dict[str, Any]] = {
    "eager_fp32": {"name": "eager"},
    "eager_fp16_cl": {"name": "eager", "half": True, "channels_last": True},
    "tensorrt_fp16": {"name": "tensorrt"},
    "onnx_cuda_ep": {"name": "onnx"},
    # last: compiled once per batch size (minutes); inductor's CUDA graphs, then ours (compile's CUDA default)
    "compile_fp16": {"name": "compile", "capture": False},
    "compile_fp16_captured": {"name": "compile", "capture": True},
    # opt-in (--runs): inductor's freezing (batch norms folded into the convolutions), and max-autotune, which
    # takes minutes per input shape
    "compile_fp16_captured_frozen": {"name": "compile", "capture": True, "freeze": True},
    "compile_fp16_captured_autotune": {"name": "compile", "capture": True, "autotune": True},
}
#: The runs measured when --runs is not given.
DEFAULT_RUNS = [run for run in BACKEND_RUNS if run not in ("compile_fp16_captured_frozen",
                                                           "compile_fp16_captured_autotune")]


def skip_reason(name: str) -> str | None:
    """Why a backend is not measured here (None: measure it)."""
    import torch

    from rtseg.engines.backends import available

    reason = available(name, torch.device("cuda"))
    if reason is None and name == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = "onnxruntime has no CUDAExecutionProvider here (CPU ORT is not a GPU backend)"
    return reason


def cuda_times(fn: Callable[[], Any], *, iters: int, warmup: int) -> list[float]:
    """Per-call milliseconds by CUDA events, after ``warmup`` discarded calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def versions() -> dict[str, str]:
    import torch

    out = {}
    for dist in ("torch", "torchvision", "cupy-cuda12x", "cupy-cuda13x", "cupy", "onnxruntime", "onnxruntime-gpu",
                 "torch-tensorrt", "tensorrt", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["driver"] = "unknown"
    out["cuda_runtime"] = str(torch.version.cuda)
    return out


def bench_model(engine: YolactEngine, runs: list[str], batches: list[int], iters: int, deadline: float, cache: Path,
                out: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill ``out[run]`` per backend run, calling ``save()`` after each measurement."""
    import torch

    from rtseg.engines.backends import make_backend

    s = engine.cfg.input_size
    for run in runs:
        kw = BACKEND_RUNS[run]
        reason = skip_reason(kw["name"])
        if reason is not None:
            out[run] = {"skipped": reason}
            continue
        if time.monotonic() > deadline:
            out[run] = {"skipped": "time budget spent"}
            continue
        try:
            t = time.perf_counter()
            backend = make_backend(engine.net, device="cuda", input_size=s, config=engine.cfg, cache_dir=cache, **kw)
            res: dict[str, Any] = {"build_s": time.perf_counter() - t}
            for b in batches:
                if time.monotonic() > deadline:
                    res[f"batch{b}"] = {"skipped": "time budget spent"}
                    continue
                x = torch.randn(b, 3, s, s, device="cuda")
                with torch.inference_mode():
                    ms = cuda_times(lambda: backend(x), iters=iters, warmup=10)
                r = summary(ms)
                r["images_per_s"] = b * 1000.0 * len(ms) / sum(ms)
                res[f"batch{b}"] = r
                out[run] = res
                save()
                print(f"{run} batch {b}: p50 {r['p50_ms']:.2f} ms, {r['images_per_s']:.0f} img/s", flush=True)
            out[run] = res
        except Exception as exc:  # noqa: BLE001 - one backend failing must not lose the others' numbers
            out[run] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(run, "failed:", out[run]["error"], flush=True)
        save()


def bench_post(engine: YolactEngine, iters: int, frame_size: tuple[int, int]) -> dict:
    """NMS, mask assembly and overlay on one busy frame (batch 1)."""
    import torch
    import torchvision

    from rtseg.ops import cupy_ops
    from rtseg.ops.boxes import decode
    from rtseg.ops.masks import assemble_masks
    from rtseg.ops.nms import fast_nms
    from rtseg.ops.rle import encode_rle, encode_rle_device

    s = engine.cfg.input_size
    x = torch.randn(1, 3, s, s, device="cuda")
    with torch.inference_mode():
        loc, conf, coef, proto = engine.network(x)
        boxes = decode(loc[0], engine.priors)
        scores = conf[0, :, 1:].t()
        keep = scores.max(0).values > engine.conf_threshold
        scores, boxes, coef0 = scores[:, keep].contiguous(), boxes[keep].contiguous(), coef[0][keep]
        c, n = scores.shape
        flat_boxes = boxes[None].expand(c, n, 4).reshape(-1, 4)
        flat_idx = torch.arange(c, device="cuda")[:, None].expand(c, n).reshape(-1)

        def tv_nms() -> Any:
            sc = scores.reshape(-1)
            ok = sc > engine.conf_threshold
            return torchvision.ops.batched_nms(flat_boxes[ok], sc[ok], flat_idx[ok], 0.5)[:100]

        res: dict[str, Any] = {"candidates": n, "classes": c}
        res["nms_torch_fast"] = summary(cuda_times(lambda: fast_nms(boxes, scores), iters=iters, warmup=10))
        res["nms_cupy_fast"] = summary(cuda_times(lambda: cupy_ops.fast_nms(boxes, scores), iters=iters, warmup=10))
        res["nms_torchvision_batched"] = summary(cuda_times(tv_nms, iters=iters, warmup=10))
        idx, _, det_scores = fast_nms(boxes, scores)
        rel, det_coef, p = boxes[idx], coef0[idx], proto[0]
        res["detections"] = int(idx.numel())
        res["assemble_torch"] = summary(cuda_times(lambda: assemble_masks(p, det_coef, rel, frame_size),
                                                   iters=iters, warmup=5))
        res["assemble_cupy"] = summary(cuda_times(lambda: cupy_ops.assemble_masks(p, det_coef, rel, frame_size),
                                                  iters=iters, warmup=5))
        frame = torch.randint(0, 256, (*frame_size, 3), dtype=torch.uint8, device="cuda")
        colors = torch.randint(0, 256, (len(idx), 3), dtype=torch.uint8, device="cuda")
        res["overlay_cupy_device"] = summary(cuda_times(
            lambda: cupy_ops.overlay_masks(frame, p, det_coef, rel, det_scores, colors), iters=iters, warmup=5))
        res["overlay_cupy_device_20"] = summary(cuda_times(
            lambda: cupy_ops.overlay_masks(frame, p, det_coef[:20], rel[:20], det_scores[:20], colors[:20]),
            iters=iters, warmup=5))
        res["rle_20_device"] = wall_summary(  # masks assembled and encoded on the device, run boundaries down
            lambda: encode_rle_device(assemble_masks(p, det_coef[:20], rel[:20], frame_size)), iters=iters, warmup=5)
        res["rle_20_host"] = wall_summary(  # masks assembled on the device, (20, H, W) down, pycocotools
            lambda: encode_rle(assemble_masks(p, det_coef[:20], rel[:20], frame_size).cpu().numpy()),
            iters=min(iters, 50), warmup=3)
    try:
        from rtseg.ops.overlay import annotate

        frame_np = frame.cpu().numpy()
        raw = (loc, conf, coef, proto)

        def reference_path() -> None:  # detection step + postprocess + masks to host + CPU annotate
            annotate(frame_np, engine.postprocess(engine.detection_head(raw), [frame_size])[0])

        res["postprocess_plus_annotate_cpu"] = wall_summary(reference_path, iters=min(iters, 30), warmup=3)
    except ImportError as exc:
        res["postprocess_plus_annotate_cpu"] = {"skipped": str(exc)}
    res["engine_frame_wall"] = engine_frame_times(engine, frame.cpu().numpy(), iters)
    return res


def engine_frame_times(engine: YolactEngine, frame: Any, iters: int) -> dict[str, Any]:
    """Wall ms per host frame, per network backend: ``engine(frame)`` (upload, preprocess, network,
    NMS, boxes/scores to the host; masks lazy) and ``annotate(frame, engine(frame))`` (the finished
    frame on the host; masks blended on the device when the engine keeps the frame there)."""
    from rtseg.engines.backends import make_backend
    from rtseg.ops.overlay import _annotate_inferred as annotate  # the pipeline's: the frame inferred on, unchanged

    out: dict[str, Any] = {"device_overlay": engine.device_overlay, "nms": engine._fast_nms.__module__}
    original = engine.backend
    for run in ("eager_fp32", "eager_fp16_cl", "compile_fp16"):
        try:
            engine.backend = make_backend(engine.net, device="cuda", input_size=engine.cfg.input_size,
                                          config=engine.cfg, **BACKEND_RUNS[run])
            for what, call in (("detect", lambda: engine([frame])),
                               ("detect_and_annotate", lambda: annotate(frame, engine(frame)))):
                r = wall_summary(call, iters=iters, warmup=10)
                out[f"{run}/{what}"] = r
                print(f"engine {run} {what}: p50 {r['p50_ms']:.2f} ms, {r['fps']:.0f} FPS", flush=True)
        except Exception as exc:  # noqa: BLE001 - keep the other backends' numbers
            out[run] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    engine.backend = original
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__)
    ap.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=["yolact_resnet50", "yolact_base"])
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(BACKEND_RUNS), help="backend runs")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--budget-s", type=TypedFloat, default=300.0, help="stop starting new configurations after this")
    ap.add_argument("--frame", type=frame_size("HxW"), default="1080x1920",
                    help="HxW of the frame for masks / overlay")
    ap.add_argument("--out", type=output_file, default=RESULTS / "gpu_fastpath.json",
                    help="JSON path (default benchmarks/results/gpu_fastpath.json)")
    return checked(ap, ap.parse_args(argv), [("--batches", 1, 1024, ""), ("--iters", 200, None, " (for a p99)"),
                                             ("--budget-s", 1, None, "")])


def run(args: argparse.Namespace) -> None:
    import torch

    from rtseg.engines.yolact import YolactEngine

    if not torch.cuda.is_available():
        raise SystemExit("gpu_fastpath: CUDA is not available here")
    deadline = time.monotonic() + args.budget_s
    doc: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions(),
                           "iters": args.iters, "frame": "x".join(map(str, args.frame)), "results": {}}
    out_path = args.out

    def save() -> None:  # after every measurement, so a killed run keeps what it measured
        out_path.write_text(json.dumps(doc, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as cache:
        for preset in args.presets:
            if time.monotonic() > deadline:
                doc["results"][preset] = {"skipped": "time budget spent"}
                continue
            engine = YolactEngine(model=busy_model(preset), device="cuda", score_threshold=0.0)
            entry: dict[str, Any] = {"model": {}}
            doc["results"][preset] = entry
            try:
                entry["post"] = bench_post(engine, args.iters, args.frame)
            except Exception as exc:  # noqa: BLE001 - keep the model numbers even if CuPy is broken
                entry["post"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            save()
            print(preset, "post:", json.dumps(entry["post"])[:800], flush=True)
            bench_model(engine, args.runs, args.batches, args.iters, deadline, Path(cache), entry["model"], save)
            del engine
            torch.cuda.empty_cache()
    save()
    print(out_path)


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
