"""torch-tensorrt backend (CUDA only): fp16 or INT8 engines, serialised and cached.

Written against torch-tensorrt's documented dynamo path: ``torch.export.export`` with a
dynamic batch ``Dim``, ``torch_tensorrt.dynamo.compile(program, inputs=[torch_tensorrt.Input(
min_shape, opt_shape, max_shape, dtype)], enabled_precisions=...)``, ``torch_tensorrt.save``
as an ExportedProgram and ``torch_tensorrt.load(path).module()``. INT8 uses post-training
quantisation with NVIDIA ModelOpt (``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)``
over frames from a folder, then export under ``export_torch_mode()``), the replacement the
torch-tensorrt docs give for the removed TorchScript calibrators.

Engines are keyed by weights digest, architecture, precision, input shape range, GPU name,
calibration set and the torch / torch-tensorrt / TensorRT versions (see
:func:`rtseg.engines.backends.cached_artifact`).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from rtseg.engines.backends import Outputs, cached_artifact, in_chunks, weights_digest
from rtseg.engines.calibration import PRECISIONS, calibration_files
from rtseg.errors import ConfigError
from rtseg.imageio import imread
from rtseg.models.yolact import MEANS_BGR, STDS_BGR

#: Frames per INT8 calibration batch (the frames: :func:`rtseg.engines.calibration.calibration_files`).
CALIBRATION_BATCH = 8


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def calibration_batches(files: list[Path], *, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                        device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised (b, 3, S, S) float32 RGB batches from BGR image files (the engine's preprocessing).

    mean / std: per-channel BGR on the 0..255 scale.
    """
    import cv2

    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    for i in range(0, len(files), CALIBRATION_BATCH):
        imgs = [imread(p) for p in files[i:i + CALIBRATION_BATCH]]
        imgs = [cv2.resize(im, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
                for im in imgs if im is not None]
        if not imgs:
            continue
        x = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float()
        yield ((x - m) / s)[:, [2, 1, 0]].contiguous()


class TensorRTBackend:
    """Runs a deserialised torch-tensorrt module; float32 in, float32 out, on the CUDA device."""

    name = "tensorrt"

    def __init__(self, *, module: Any, half_input: bool, path: Path, max_batch: int) -> None:
        self.module = module
        self.half_input = half_input
        self.path = path
        self.max_batch = max_batch

    @classmethod
    def create(cls, net: nn.Module, *, device: torch.device, input_size: int, config: Any, cache_dir: Path,
               precision: str = "fp16", calibration_dir: str | None = None, max_batch: int = 16) -> "TensorRTBackend":
        """Build (or load the cached) engine for ``net`` at batch 1..max_batch of (3, S, S).

        config: the YolactConfig (its ``normalize`` picks the calibration frames' normalisation).
        """
        import torch_tensorrt

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        files: list[Path] = []
        if precision == "int8":
            if calibration_dir is None:
                raise ConfigError("TensorRT INT8 needs calibration frames: pass calibration_dir=FOLDER of images")
            files = calibration_files(calibration_dir)
        s = input_size
        shapes = {"min": (1, 3, s, s), "opt": (min(4, max_batch), 3, s, s), "max": (max_batch, 3, s, s)}
        calib = hashlib.sha256("\n".join(f"{p.name}:{p.stat().st_size}" for p in files).encode()).hexdigest()
        key = {"kind": "tensorrt", "weights": weights_digest(net), "config": repr(config), "precision": precision,
               "shapes": shapes, "gpu": torch.cuda.get_device_name(device), "calibration": calib,
               "torch": torch.__version__, "torch_tensorrt": _version("torch-tensorrt"),
               "tensorrt": _version("tensorrt")}
        unit = getattr(config, "normalize", "meanstd") == "unit"
        mean, std = ((0.0,) * 3, (255.0,) * 3) if unit else (MEANS_BGR, STDS_BGR)
        half_input = precision == "fp16"
        dtype = torch.half if half_input else torch.float32

        def build(path: Path) -> None:
            module = copy.deepcopy(net).eval().to(device)
            example = torch.zeros(shapes["opt"], device=device, dtype=dtype)
            quant_ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
            if half_input:
                module = module.half()
                enabled = {torch.half}
            else:
                import modelopt.torch.quantization as mtq
                from modelopt.torch.quantization.utils import export_torch_mode

                def forward_loop(m: nn.Module) -> None:
                    for batch in calibration_batches(files, input_size=s, mean=mean, std=std, device=device):
                        m(batch)

                mtq.quantize(module, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
                quant_ctx = export_torch_mode()
                enabled = {torch.int8}
            dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
            spec = torch_tensorrt.Input(min_shape=shapes["min"], opt_shape=shapes["opt"], max_shape=shapes["max"],
                                        dtype=dtype)
            with torch.no_grad(), quant_ctx:
                program = torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)
                compiled = torch_tensorrt.dynamo.compile(program, inputs=[spec], enabled_precisions=enabled)
                torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example],
                                    dynamic_shapes=dynamic)

        def load(path: Path) -> tuple[Any, Path]:
            return torch_tensorrt.load(str(path)).module(), path

        module, path = cached_artifact(cache_dir, "yolact", "ep", key, build=build, load=load)
        return cls(module=module, half_input=half_input, path=path, max_batch=max_batch)

    def __call__(self, x: torch.Tensor) -> Outputs:
        return in_chunks(self._run, x, self.max_batch)

    def _run(self, x: torch.Tensor) -> Outputs:
        out = self.module(x.half() if self.half_input else x)
        return tuple(t.float() for t in out)  # type: ignore[return-value]
