"""ONNX export of the network part and an ONNX Runtime backend.

The graph maps ``image`` (B, 3, S, S) float32 to ``loc`` (B, A, 4), ``conf`` (B, A, C+1)
softmax probabilities, ``coef`` (B, A, k) and ``proto`` (B, S/4, S/4, k), with a dynamic
batch axis (1..max_batch). Post-processing stays in :mod:`rtseg.ops`. The same graph is
what TensorRT (or ONNX Runtime's TensorRT provider) consumes.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rtseg.engines.backends import (
    KEY_VERSIONS,
    Outputs,
    artifact_key,
    cached_artifact,
    import_installed,
    in_chunks,
    package_version,
)

INPUT_NAME = "image"
OUTPUT_NAMES = ("loc", "conf", "coef", "proto")
#: ONNX opset of the exported graph (the torch.export-based exporter's well-tested range).
OPSET = 18
#: Execution providers in order of preference; only those installed are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def export_onnx(net: nn.Module, path: Path | str, *, input_size: int, max_batch: int = 16,
                opset: int = OPSET) -> Path:
    """Export ``net`` (float32; put in eval mode here) to ``path`` and check it with ``onnx.checker``.

    The export traces ``net`` on the device its parameters are on (no copy is made). The graph has one input
    ``image`` (batch, 3, S, S) with batch in 1..max_batch and the outputs :data:`OUTPUT_NAMES`; weights are stored
    inside the file. :class:`~rtseg.engines.backends.BackendUnavailable` when onnx or onnxscript (the exporter's)
    is installed but cannot be imported.
    """
    onnx = import_installed("onnx", "onnx")
    import_installed("onnx", "onnxscript")  # torch.onnx.export's, imported here for the one-line error
    net = net.eval()
    device = next(net.parameters()).device
    example = torch.zeros(2, 3, input_size, input_size, device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch},),
                                    opset_version=opset, external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return Path(path)


def providers_for(device: torch.device, available: Sequence[str]) -> list[str]:
    """ORT providers to use: GPU ones only for a CUDA device, CPU always last."""
    wanted = PREFERRED_PROVIDERS if device.type == "cuda" else ("CPUExecutionProvider",)
    return [p for p in wanted if p in available]


class OnnxBackend:
    """Runs the exported graph with ONNX Runtime; inputs/outputs are torch tensors on ``device``.

    Data crosses the host (numpy) at the session boundary; with the CUDA provider ORT copies
    it to the GPU itself.
    """

    name = "onnx"

    def __init__(self, *, session: Any, device: torch.device, path: Path, max_batch: int) -> None:
        self.session = session
        self.device = device
        self.path = path
        self.max_batch = max_batch

    @classmethod
    def create(cls, net: nn.Module, *, device: torch.device, input_size: int, config: Any, cache_dir: Path,
               max_batch: int = 16, opset: int = OPSET) -> "OnnxBackend":
        """Export (or reuse the cached export of) ``net`` and open a session on it.

        The cache key (:func:`~rtseg.engines.backends.artifact_key`) adds the input size, batch range, opset and the
        onnx / onnxscript versions (the exporter's translation). :class:`~rtseg.engines.backends.BackendUnavailable`
        when onnxruntime (or, to export, onnx / onnxscript) cannot be imported or the cache cannot be written.
        """
        ort = import_installed("onnx", "onnxruntime")
        exporter = {"onnx": package_version("onnx"), "onnxscript": package_version("onnxscript")}
        key = artifact_key("onnx", net, config, input_size=input_size, max_batch=max_batch, opset=opset, **exporter)
        providers = providers_for(device, ort.get_available_providers())

        def load(path: Path) -> tuple[Any, Path]:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers), path

        def build(path: Path) -> None:
            export_onnx(net, path, input_size=input_size, max_batch=max_batch, opset=opset)

        building = f"exporting the network to ONNX for 3x{input_size}x{input_size} inputs, batch 1-{max_batch}"
        session, path = cached_artifact(cache_dir, "yolact", "onnx", key, build=build, load=load, building=building,
                                        versions=(*KEY_VERSIONS, *exporter))
        return cls(session=session, device=device, path=path, max_batch=max_batch)

    def __call__(self, x: torch.Tensor) -> Outputs:
        return in_chunks(self._run, x, self.max_batch)

    def _run(self, x: torch.Tensor) -> Outputs:
        feed = {INPUT_NAME: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        outs = self.session.run(list(OUTPUT_NAMES), feed)
        return tuple(torch.from_numpy(o).to(self.device) for o in outs)  # type: ignore[return-value]
