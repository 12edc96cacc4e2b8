"""torch-tensorrt backend (CUDA only): fp16 or INT8 engines, serialised and cached.

Written against torch-tensorrt's documented dynamo path: ``torch.export.export`` with a
dynamic batch ``Dim``, ``torch_tensorrt.dynamo.compile(program, inputs=[torch_tensorrt.Input(
min_shape, opt_shape, max_shape, dtype)], enabled_precisions=...)``, ``torch_tensorrt.save``
as an ExportedProgram (into memory, then written by the engine cache: a full disk is its one line, see
:func:`rtseg.engines.backends.built_in_memory`) and ``torch_tensorrt.load(path).module()``. INT8 uses post-training
quantisation with NVIDIA ModelOpt (``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)``
over frames from a folder, then export under ``export_torch_mode()``), the replacement the
torch-tensorrt docs give for the removed TorchScript calibrators.

Engines are keyed by weights digest, architecture, precision, input shape range, GPU name,
calibration frames (their bytes), the network's export format, and the rtseg / torch /
torch-tensorrt / TensorRT / ModelOpt versions (see :func:`rtseg.engines.backends.artifact_key`
and :func:`rtseg.engines.backends.cached_artifact`).
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
from torch import nn

from rtseg.engines.backends import (
    KEY_VERSIONS,
    Outputs,
    artifact_key,
    built_in_memory,
    cached_artifact,
    import_installed,
    in_chunks,
    package_version,
)
from rtseg.engines.calibration import PRECISIONS, calibration_digest, calibration_files
from rtseg.errors import ConfigError
from rtseg.imageio import ImageReadError, read_image_file
from rtseg.models.yolact import MEANS_BGR, STDS_BGR

#: Frames per INT8 calibration batch (the frames: :func:`rtseg.engines.calibration.calibration_files`).
CALIBRATION_BATCH = 8


def calibration_batches(files: list[Path], *, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                        device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised (b, 3, S, S) float32 RGB batches from BGR image files (the engine's preprocessing); a file that
    cannot be read or decoded is skipped, ConfigError (one line, after the last batch) when none can.

    mean / std: per-channel BGR on the 0..255 scale.
    """
    import cv2

    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    failed: list[tuple[Path, ImageReadError]] = []
    for i in range(0, len(files), CALIBRATION_BATCH):
        imgs = []
        for p in files[i:i + CALIBRATION_BATCH]:
            try:
                imgs.append(cv2.resize(read_image_file(p), (input_size, input_size), interpolation=cv2.INTER_LINEAR))
            except ImageReadError as exc:
                failed.append((p, exc))
        if imgs:
            x = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float()
            yield ((x - m) / s)[:, [2, 1, 0]].contiguous()
    if files and len(failed) == len(files):
        first, why = failed[0]
        raise ConfigError(f"INT8 calibration: none of the {len(files)} frames of {str(first.parent)!r} can be read "
                          f"(e.g. {first.name}: {why}); pass a folder of readable images")


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
        torch_tensorrt = import_installed("tensorrt", "torch_tensorrt")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        files: list[Path] = []
        if precision == "int8":
            if calibration_dir is None:
                raise ConfigError("TensorRT INT8 needs calibration frames: pass calibration_dir=FOLDER of images")
            files = calibration_files(calibration_dir)
        s = input_size
        shapes = {"min": (1, 3, s, s), "opt": (min(4, max_batch), 3, s, s), "max": (max_batch, 3, s, s)}
        builder = {"torch_tensorrt": package_version("torch-tensorrt"), "tensorrt": package_version("tensorrt"),
                   "modelopt": package_version("nvidia-modelopt") if precision == "int8" else None}
        key = artifact_key("tensorrt", net, config, precision=precision, shapes=shapes,
                           gpu=torch.cuda.get_device_name(device), calibration=calibration_digest(files), **builder)
        unit = getattr(config, "normalize", "meanstd") == "unit"
        mean, std = ((0.0,) * 3, (255.0,) * 3) if unit else (MEANS_BGR, STDS_BGR)
        half_input = precision == "fp16"
        dtype = torch.half if half_input else torch.float32

        def build(f: BinaryIO) -> None:
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
                torch_tensorrt.save(compiled, f, output_format="exported_program", arg_inputs=[example],
                                    dynamic_shapes=dynamic)

        def load(path: Path) -> tuple[Any, Path]:
            return torch_tensorrt.load(str(path)).module(), path

        building = (f"building a TensorRT {precision} engine of the network for 3x{s}x{s} inputs, batch 1-{max_batch}, "
                    f"on {key['gpu']}")
        # saved through memory: torch's zip writer reports a full disk as a RuntimeError (built_in_memory)
        module, path = cached_artifact(cache_dir, "yolact", "ep", key, build=built_in_memory(build), load=load,
                                       building=building, versions=(*KEY_VERSIONS, *builder))
        return cls(module=module, half_input=half_input, path=path, max_batch=max_batch)

    def __call__(self, x: torch.Tensor) -> Outputs:
        return in_chunks(self._run, x, self.max_batch)

    def _run(self, x: torch.Tensor) -> Outputs:
        out = self.module(x.half() if self.half_input else x)
        return tuple(t.float() for t in out)  # type: ignore[return-value]
