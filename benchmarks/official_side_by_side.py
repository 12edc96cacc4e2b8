"""rtseg vs the official dbolya/yolact on the same GPU, weights and frame (issue 5's side by side).

    git clone https://github.com/dbolya/yolact /path/to/yolact      # never committed here
    python -m benchmarks.official_side_by_side --official /path/to/yolact --out $OUT/side_by_side.json

Both sides get the same deterministic random R-101@550 weights (``tests/yolact_random_weights.py``,
saved as an official ``.pth`` and read by each side's own loader; ``--head-gain`` sets how busy the
frame is) and the same synthetic BGR frame (``--frame HxW``, default 1080×1920). Wall clock per
frame, warm-up discarded, the finished annotated frame on the host at the end of each call:

- official: eval.py's image path (``evalimage`` without the file I/O): upload, ``FastBaseTransform``,
  ``net`` (Detect with Fast NMS), ``prep_display`` (postprocess, masks blended on the device, boxes
  and labels with OpenCV). Imported from ``--official`` with the fixture script's patches (plain
  ``nn.Module`` instead of the legacy TorchScript wrapper; same maths).
- rtseg: ``annotate(frame, engine(frame))`` per network backend (compile fp16 with our CUDA graphs,
  eager fp32, eager fp16 channels-last).

And issue 5's "model + post-processing" (``model_post``): from each side's preprocessed input already
on the device to the detections' classes, scores and boxes on the host (official: ``net`` +
``postprocess`` at the input size; rtseg: ``engine.forward`` + ``engine.postprocess``, and on CUDA also with one
frame in flight, as ``YolactEngine.stream`` runs frames: frame i + 1 queued before frame i's rows are awaited).

The detection counts of both sides (fp32, TF32 off) are recorded and must agree. On a CPU
(``--device cpu``) only the official network + postprocess run (its drawing code needs CUDA):
that checks the import, the weights and the counts, not the speed.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from benchmarks.common import (
    checked,
    device_spec,
    frame_size,
    machine,
    one_in_flight,
    output_file,
    run_checked,
    wall_summary,
)
from rtseg.cliargs import TypedFloat
from rtseg.ops.overlay import annotate

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fixtures' modules (they import torch: imported where used)
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

#: rtseg backend runs: name → make_backend keywords (the fast one first: a run cut short still has it).
RTSEG_RUNS: dict[str, dict[str, Any]] = {
    "compile_fp16": {"name": "compile"},
    "compile_fp16_frozen": {"name": "compile", "freeze": True},  # inductor's freezing: BN folded into the convs
    "eager_fp32": {"name": "eager"},
    "eager_fp16_cl": {"name": "eager", "half": True, "channels_last": True},
}


def make_transform(off: dict[str, Any], device: torch.device) -> Any:
    """The official FastBaseTransform (its constructor calls ``.cuda()``: a no-op on a CPU run)."""
    import torch
    from make_yolact_reference import patched

    if device.type == "cuda":
        return off["FastBaseTransform"]()
    with patched(torch.Tensor, "cuda", lambda self, *a, **k: self):
        return off["FastBaseTransform"]()


def official_side(off: dict[str, Any], weights: Path, device: torch.device) -> tuple[Any, Callable[[np.ndarray], Any]]:
    """The official net on ``device`` and its per-frame call (annotated numpy image; CPU: postprocess only)."""
    import torch

    off["set_cfg"]("yolact_base_config")
    off["cfg"].mask_proto_debug = False  # set by eval.py's main, read by postprocess
    if device.type == "cuda":
        torch.set_default_tensor_type("torch.cuda.FloatTensor")  # as eval.py's main does
    net = off["Yolact"]()
    net.load_weights(str(weights))
    net.eval()
    net.to(device)
    net.detect.use_fast_nms, net.detect.use_cross_class_nms = True, False
    transform = make_transform(off, device)

    def call(img: np.ndarray) -> Any:
        with torch.no_grad():
            frame = torch.from_numpy(img).to(device).float()
            preds = net(transform(frame.unsqueeze(0)))
            if device.type == "cuda":
                return off["eval"].prep_display(preds, frame, None, None, undo_transform=False)
            h, w = img.shape[:2]
            return off["postprocess"](preds, w, h, crop_masks=True, score_threshold=0.0)

    return net, call


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is imported or run (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of github.com/dbolya/yolact")
    ap.add_argument("--device", type=device_spec, default="cuda")
    ap.add_argument("--frame", type=frame_size("HxW"), default="1080x1920", help="HxW")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--head-gain", type=TypedFloat, default=1.0, help="random heads' gain (more = more detections)")
    ap.add_argument("--out", type=output_file, default=None, help="JSON results (default: print only)")
    args = checked(ap, ap.parse_args(argv), [("--iters", 1, None, ""), ("--head-gain", 0, None, "")])
    if not (args.official / "yolact.py").is_file():
        ap.error(f"--official {args.official}: no yolact.py there; give a checkout of github.com/dbolya/yolact")
    return args


def run(args: argparse.Namespace) -> None:
    import torch
    from make_yolact_reference import import_official, synthetic_frame
    from yolact_random_weights import random_yolact_state, template_of

    from rtseg.engines.backends import make_backend

    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = device.type == "cuda"  # for both sides: the official eval.py and rtseg set it
    h, w = args.frame
    img = synthetic_frame(h, w, 3)
    off = import_official(args.official.resolve())
    if device.type == "cuda":
        import eval as official_eval  # type: ignore[import-not-found]  # the official eval.py

        official_eval.parse_args(["--top_k", "100", "--score_threshold", "0.15"])
        off["eval"] = official_eval
    doc: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "frame": f"{h}x{w}",
                           "iters": args.iters, "head_gain": args.head_gain, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "yolact_base_random.pth"
        off["set_cfg"]("yolact_base_config")
        torch.save(random_yolact_state(template_of(off["Yolact"]().state_dict()), 1, head_gain=args.head_gain), weights)
        net, official_call = official_side(off, weights, device)
        counts = {"official": int(official_counts(off, net, img, device))}
        doc["results"]["official"] = wall_summary(lambda: official_call(img), iters=args.iters, warmup=10)
        print("official", json.dumps(doc["results"]["official"]), flush=True)
        x_off = make_transform(off, device)(torch.from_numpy(img).to(device).float().unsqueeze(0))
        size = x_off.shape[-1]
        doc["model_post"] = {"official": wall_summary(functools.partial(official_model_post, off, net, x_off, size),
                                                      iters=args.iters, warmup=10)}
        print("official model+post", json.dumps(doc["model_post"]["official"]), flush=True)
        del net, x_off
        torch.set_default_tensor_type("torch.FloatTensor")
        import rtseg

        engine = rtseg.load("yolact", weights=str(weights), device=args.device, score_threshold=0.0, top_k=100)
        counts["rtseg"] = len(engine(img))
        engine.score_threshold = 0.15
        for run, kw in RTSEG_RUNS.items():
            if device.type != "cuda" and run != "eager_fp32":
                continue
            engine.backend = make_backend(engine.net, device=args.device, input_size=engine.cfg.input_size,
                                          config=engine.cfg, **kw)
            doc["results"][f"rtseg_{run}"] = wall_summary(lambda: annotate(img, engine(img)), iters=args.iters,
                                                          warmup=10)
            print(run, json.dumps(doc["results"][f"rtseg_{run}"]), flush=True)
            x = engine.preprocess([img])
            doc["model_post"][f"rtseg_{run}"] = wall_summary(
                lambda: engine.postprocess(engine.forward(x), [(size, size)])[0], iters=args.iters, warmup=10)
            print(run, "model+post", json.dumps(doc["model_post"][f"rtseg_{run}"]), flush=True)
            if device.type == "cuda":  # the same with one frame in flight (YolactEngine.stream's order)
                doc["model_post"][f"rtseg_{run}_one_in_flight"] = one_in_flight(
                    engine, lambda: engine.dispatch(engine.forward(x), [(size, size)]), args.iters)
                print(run, "model+post, one in flight", json.dumps(doc["model_post"][f"rtseg_{run}_one_in_flight"]),
                      flush=True)
    doc["detections_score_0"] = counts
    for part, key in (("results", "speedup_vs_official"), ("model_post", "model_post_speedup_vs_official")):
        base = doc[part]["official"]["mean_ms"]
        doc[key] = {k: base / v["mean_ms"] for k, v in doc[part].items() if k != "official"}
    print(json.dumps({"counts": counts, "speedup": doc["speedup_vs_official"],
                      "model_post_speedup": doc["model_post_speedup_vs_official"]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if counts["official"] != counts["rtseg"]:
        raise SystemExit(f"detection counts differ: {counts}")


def official_model_post(off: dict[str, Any], net: Any, x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The official model + post-processing from its preprocessed input ``x`` (1, 3, S, S): ``net`` (Detect with
    Fast NMS), then ``postprocess`` at the input size; classes, scores and boxes on the host (its masks stay
    on the device, as rtseg's do until asked for)."""
    import torch

    with torch.no_grad():
        out = off["postprocess"](net(x), size, size, crop_masks=True, score_threshold=0.15)
        return [t.cpu() for t in out[:3]]


def official_counts(off: dict[str, Any], net: Any, img: np.ndarray, device: torch.device) -> int:
    """Detections the official pipeline keeps at score threshold 0 (Fast NMS output, top 100)."""
    import torch

    transform = make_transform(off, device)
    with torch.no_grad():
        frame = torch.from_numpy(img).to(device).float()
        preds = net(transform(frame.unsqueeze(0)))
        h, w = img.shape[:2]
        t = off["postprocess"](preds, w, h, crop_masks=True, score_threshold=0.0)
    return min(100, int(t[1].shape[0]))


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
