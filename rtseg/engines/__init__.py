"""Runnable segmenters and :func:`load`.

Light (no torch at its top): the command lines offer :data:`ENGINE_NAMES` and :data:`BACKENDS` in their ``--help``
without importing torch; each engine is imported by :func:`load` when it is loaded.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from rtseg.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from rtseg.engines.base import Engine

ENGINE_NAMES = ("yolact", "fcn", "msrcnn", "panoptic", "slic")
INSTANCE_ENGINES = ("yolact", "msrcnn")
"""The engines whose predictions are instance ``Detections`` (panoptic's things, COCO results files)."""
BACKENDS = ("eager", "compile", "tensorrt", "onnx", "auto")
"""The network backends of YOLACT (:mod:`rtseg.engines.backends`, which resolves and builds them)."""


def load(name: str = "yolact", weights: str | None = None, *, device: str = "cpu", **options: Any) -> Engine:
    """Load a segmentation engine by name.

    ``rtseg.load("yolact", weights="yolact_base_54_800000.pth", device="cpu", score_threshold=0.15, top_k=15)``;
    yolact options: input_size (32 to 2048; default 550, 700 for im700 files, the manifest's for rtseg files),
    score_threshold, top_k, nms ("fast" | "cross_class" | "traditional"), backend
    ("eager" | "compile" | "tensorrt" | "onnx" | "auto").
    ``"slic"`` (no weights; n_segments, compactness, backend "skimage" | "torch", default torch on CUDA),
    ``"fcn"`` (weights or arch="fcn_resnet50"), ``"msrcnn"`` and ``"panoptic"`` (instances=, semantic=) → see
    their engines. device: "cpu" or "cuda[:N]". Unknown options, and options the weights fix (num_classes
    of FCN weights), raise ConfigError; a bad weights file raises WeightsError.
    """
    if name == "yolact":
        from rtseg.engines.yolact import YolactEngine

        if weights is None:
            raise WeightsError("yolact needs weights: pass weights=PATH (an official .pth or an rtseg .safetensors)")
        _check_options(name, options, YolactEngine.from_weights, YolactEngine.__init__)
        return YolactEngine.from_weights(weights, device=device, **options)
    if name == "slic":
        from rtseg.engines.slic import SlicEngine

        if weights is not None:
            raise ConfigError("slic takes no weights: drop weights=; tune n_segments=, compactness=, backend=")
        _check_options(name, options, SlicEngine.__init__)
        return SlicEngine(device=device, **options)
    if name == "fcn":
        from rtseg.engines.fcn import FcnEngine

        _check_options(name, options, FcnEngine.from_weights, FcnEngine.__init__)
        return FcnEngine.from_weights(weights, device=device, **options)
    if name == "msrcnn":
        from rtseg.engines.msrcnn import MsrcnnEngine

        _check_options(name, options, MsrcnnEngine.from_weights, MsrcnnEngine.__init__)
        return MsrcnnEngine.from_weights(weights, device=device, **options)
    if name == "panoptic":
        from rtseg.engines.panoptic import PanopticEngine

        _check_options(name, options, PanopticEngine.from_weights, PanopticEngine.__init__)
        return PanopticEngine.from_weights(weights, device=device, **options)
    raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")


#: Parameters the loaders fill themselves (from the weights); never user options.
_RESERVED = {"self", "cls", "model", "weights", "device", "pretrained"}


def _check_options(engine: str, options: dict[str, Any], *functions: Callable[..., Any]) -> None:
    """ConfigError naming any option none of ``functions`` accepts as a keyword (or one the loader fills)."""
    accepted: set[str] = set()
    for fn in functions:
        accepted |= {p.name for p in inspect.signature(fn).parameters.values()
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    accepted -= _RESERVED
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"{engine}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")
