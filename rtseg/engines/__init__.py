"""Runnable segmenters and :func:`load`."""
from __future__ import annotations

from typing import Any

from rtseg.engines.base import Engine
from rtseg.errors import ConfigError, WeightsError

ENGINE_NAMES = ("yolact",)


def load(name: str = "yolact", weights: str | None = None, *, device: str = "cpu", **options: Any) -> Engine:
    """Load a segmentation engine by name.

    ``rtseg.load("yolact", weights="yolact_base_54_800000.pth", device="cpu", score_threshold=0.15, top_k=15)``;
    options: input_size (default 550, 700 for im700 files, the manifest's for rtseg files),
    score_threshold, top_k, nms ("fast" | "cross_class" | "traditional").
    """
    if name == "yolact":
        from rtseg.engines.yolact import YolactEngine

        if weights is None:
            raise WeightsError("yolact needs weights: pass weights=PATH (an official .pth or an rtseg .safetensors)")
        return YolactEngine.from_weights(str(weights), device=device, **options)
    raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")
