"""CuPy twins of the YOLACT post-processing ops (CUDA tensors in, CUDA tensors out).

- :func:`fast_nms`: same signature and keep set as :func:`rtseg.ops.nms.fast_nms`; the
  per-class IoU upper triangle and its column maximum run in one kernel
  (``cuda/fast_nms.cu``) without materialising the (C, K, K) IoU tensor.
- :func:`assemble_masks`: same signature as :func:`rtseg.ops.masks.assemble_masks`.
- :func:`overlay_masks`: the masks of :func:`rtseg.ops.overlay.annotate` blended straight
  into a device frame; full-resolution masks are never materialised.

Prototypes × coefficients is a cuBLAS GEMM (torch); sigmoid and crop on the prototype grid are one
kernel, and bilinear upsampling to the frame, threshold, the painter's order and blending are one more
(``cuda/mask_overlay.cu``), which never materialises full-resolution masks: a frame's overlay is the GEMM
and two kernels (plus the small copies that put boxes, scores and colours on the device as contiguous
arrays), whatever the number of instances. Kernels run on torch's current stream, with the tensors
passed as device pointers. This module imports without CuPy; calling an op without it
raises :class:`rtseg.errors.ConfigError`.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtseg.errors import ConfigError
from rtseg.ops import nms

KERNELS = Path(__file__).resolve().parent / "cuda"
#: Compile options: no fused multiply-add, so IoU and sampling positions round like torch's.
NVRTC_OPTIONS = ("--fmad=false",)
THREADS = 256
HAVE_CUPY = importlib.util.find_spec("cupy") is not None


@functools.lru_cache(maxsize=None)
def _kernel(source: str, name: str) -> Any:
    if not HAVE_CUPY:
        raise ConfigError("the CUDA fast path needs CuPy: pip install cupy-cuda12x (or use the torch ops)")
    import cupy

    module = cupy.RawModule(code=(KERNELS / source).read_text(encoding="utf-8"), options=NVRTC_OPTIONS)
    return module.get_function(name)


class _StreamRef:
    """What CuPy's kernel call reads of a stream (its ``ptr``): here torch's current stream, without a CuPy
    stream object (``cupy.cuda.ExternalStream``, deprecated in CuPy 14, also switched CuPy's current stream)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


def _launch(kernel: Any, grid: tuple[int, ...], args: tuple[Any, ...]) -> None:
    """Run ``kernel`` on torch's current CUDA stream of the tensors' device.

    Tensor arguments are passed as their device pointers (64-bit values; they must be contiguous); no DLPack
    hand-over, so no stream synchronisation either: the kernel runs after the work queued before it on the same
    stream (inputs made on another stream must be complete: the engine's post-processing waits for them), and
    the caching allocator reuses a freed input allocated on this stream only for work queued later on it.
    """
    dev = next(a.device for a in args if isinstance(a, torch.Tensor))
    with torch.cuda.device(dev):
        kernel(grid, (THREADS,), _pointer_args(args), stream=_StreamRef(torch.cuda.current_stream(dev).cuda_stream))


def _pointer_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Kernel arguments with every tensor replaced by its data pointer as ``numpy.uint64`` (a pointer
    parameter's 8 bytes); other arguments (numpy scalars of the parameters' types) unchanged."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if not a.is_contiguous():
                raise ValueError(f"cupy_ops: kernel arguments must be contiguous, got strides {a.stride()}")
            out.append(np.uint64(a.data_ptr()))
        else:
            out.append(a)
    return tuple(out)


def _require_cuda(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_cuda:
            raise ValueError(f"cupy_ops: expected CUDA tensors, got one on {t.device}")


def fast_nms_keep(cand: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Kernel twin of :func:`rtseg.ops.nms.fast_nms_keep`: (C, K, 4) candidates → (C, K) bool keep."""
    _require_cuda(cand)
    num_classes, k, _ = cand.shape
    keep = torch.empty((num_classes, k), dtype=torch.uint8, device=cand.device)
    _launch(_kernel("fast_nms.cu", "fast_nms_keep"), ((k + THREADS - 1) // THREADS, num_classes),
            (cand.float().contiguous(), np.int32(num_classes), np.int32(k), np.float32(iou_threshold), keep))
    return keep.view(torch.bool)


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float = 0.5,
             top_k: int = 200, max_detections: int = 100, padded: bool = False,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast NMS per class with the keep decision in one CUDA kernel (see :func:`rtseg.ops.nms.fast_nms`).

    boxes (N, 4) point form, scores (C, N) → (index (M,), class_id (M,), score (M,)), score descending
    (padded: fixed size, non-detections with score -1). Results differ from the torch reference
    only where scores tie exactly.
    """
    return nms.fast_nms(boxes, scores, iou_threshold=iou_threshold, top_k=top_k, max_detections=max_detections,
                        keep_fn=fast_nms_keep, padded=padded)


def _grid_probabilities(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, crop: bool) -> torch.Tensor:
    """(n, h, w) float32 soft masks on the prototype grid, ``crop(sigmoid(proto @ coef.T))`` as
    :func:`rtseg.ops.masks.mask_probabilities`: the GEMM by torch (cuBLAS), sigmoid and crop in one kernel.

    proto (h, w, k); coef (n, k); boxes (n, 4) float32 contiguous, relative point form.
    """
    h, w, _ = proto.shape
    n = coef.shape[0]
    logits = proto.float() @ coef.float().t()  # (h, w, n), contiguous
    prob = torch.empty((n, h, w), dtype=torch.float32, device=proto.device)
    _launch(_kernel("mask_overlay.cu", "grid_probabilities"), ((n * h * w + THREADS - 1) // THREADS,),
            (logits, boxes, np.int32(h), np.int32(w), np.int32(n), np.int32(crop), prob))
    return prob


def _scales(h: int, w: int, size: tuple[int, int]) -> tuple[np.float32, np.float32]:
    """torch's bilinear source scale in float32: in / out per axis."""
    return np.float32(h) / np.float32(size[0]), np.float32(w) / np.float32(size[1])


def assemble_masks(proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], *,
                   crop: bool = True, threshold: float = 0.5) -> torch.Tensor:
    """Full-resolution binary masks, kernel twin of :func:`rtseg.ops.masks.assemble_masks`.

    proto (h, w, k); coef (n, k); boxes (n, 4) relative point form; size (H, W) → (n, H, W) bool.
    """
    n = coef.shape[0]
    if n == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=proto.device)
    _require_cuda(proto, coef, boxes)
    h, w, _ = proto.shape
    prob = _grid_probabilities(proto, coef, boxes.float().contiguous(), crop)
    out = torch.empty((n, *size), dtype=torch.uint8, device=proto.device)
    sy, sx = _scales(h, w, size)
    total = n * size[0] * size[1]
    _launch(_kernel("mask_overlay.cu", "assemble_masks"), ((total + THREADS - 1) // THREADS,),
            (prob, np.int32(h), np.int32(w), np.int32(n), np.int32(size[0]), np.int32(size[1]), sy, sx,
             np.float32(threshold), out))
    return out.view(torch.bool)


def overlay_masks(frame: torch.Tensor, proto: torch.Tensor, coef: torch.Tensor, boxes: torch.Tensor,
                  scores: torch.Tensor, colors: torch.Tensor, *, alpha: float = 0.45, crop: bool = True,
                  threshold: float = 0.5) -> torch.Tensor:
    """Blend instance masks into a frame on the device (the mask part of :func:`rtseg.ops.overlay.annotate`).

    frame (H, W, 3) uint8 BGR; proto (h, w, k); coef (n, k); boxes (n, 4) relative point form;
    scores (n,) (higher paints on top; ties: the later index on top, as annotate's stable sort);
    colors (n, 3) uint8 BGR. Each mask paints only inside its box rounded out by one pixel.
    Returns a new (H, W, 3) uint8 tensor; ``frame`` is not modified.
    """
    _require_cuda(frame, proto, coef, boxes)
    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"overlay_masks: expected an (H, W, 3) uint8 frame, got {frame.dtype} {tuple(frame.shape)}")
    n = coef.shape[0]
    if n == 0:
        return frame.clone()
    size = (frame.shape[0], frame.shape[1])
    h, w, _ = proto.shape
    boxes = boxes.float().contiguous()
    prob = _grid_probabilities(proto, coef, boxes, crop)
    out = torch.empty_like(frame)
    sy, sx = _scales(h, w, size)
    total = size[0] * size[1]
    _launch(_kernel("mask_overlay.cu", "overlay_masks"), ((total + THREADS - 1) // THREADS,),
            (frame.contiguous(), prob, boxes, scores.float().contiguous(),
             colors.to(frame.device, torch.uint8).contiguous(),
             np.int32(h), np.int32(w), np.int32(n), np.int32(size[0]), np.int32(size[1]), sy, sx,
             np.float32(threshold), np.float32(alpha), out))
    return out
