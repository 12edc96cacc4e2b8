"""Network backends: selection, errors, the engine cache, eager/compile equality (CPU) and GPU variants."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._pytree import tree_leaves

from rtseg.engines import backends
from rtseg.engines.backends import BACKENDS, available, cached_artifact, make_backend, resolve, weights_digest
from rtseg.engines.yolact import YolactEngine
from rtseg.errors import ConfigError
from rtseg.models.yolact import YolactConfig

TINY = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32, num_prototypes=8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine() -> YolactEngine:
    torch.manual_seed(0)
    return YolactEngine.from_config(TINY, class_names=["a", "b", "c"], score_threshold=0.0)


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x.float().cpu() - y.float().cpu()).abs().max()) for x, y in zip(a, b))


def test_unknown_backend_is_one_line_config_error(engine: YolactEngine) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'fast'") as err:
        make_backend(engine.net, name="fast", device="cpu", input_size=128)
    assert "\n" not in str(err.value) and "eager" in str(err.value)
    with pytest.raises(ConfigError, match="unknown backend"):
        YolactEngine.from_config(TINY, backend="tensorrtx")


def test_int8_is_reachable_only_through_tensorrt(tmp_path) -> None:
    """precision/calibration reach the tensorrt backend from the engine and the CLI; elsewhere a clear error."""
    from rtseg.cli import main

    with pytest.raises(ConfigError, match="tensorrt backend only"):
        YolactEngine.from_config(TINY, precision="int8", calibration_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="backend 'tensorrt' is not available"):  # a CPU engine
        YolactEngine.from_config(TINY, backend="tensorrt", precision="int8", calibration_dir=str(tmp_path))
    demo = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")
    assert main(["--source", "synthetic", "--weights", demo, "--precision", "int8"]) == 2
    assert main(["--source", "synthetic", "--weights", demo, "--backend", "tensorrt",
                 "--precision", "int8", "--calib", str(tmp_path)]) == 2


def test_tensorrt_on_cpu_is_unavailable(engine: YolactEngine) -> None:
    with pytest.raises(ConfigError, match="backend 'tensorrt' is not available: needs a CUDA device") as err:
        make_backend(engine.net, name="tensorrt", device="cpu", input_size=128)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None, reason="torch-tensorrt is installed")
def test_tensorrt_without_package_names_the_fix() -> None:
    # the availability check needs no GPU: it looks for the package
    reason = available("tensorrt", torch.device("cuda"))
    assert reason is not None and "pip install torch-tensorrt" in reason


def test_onnx_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    with pytest.raises(ConfigError, match="needs onnxruntime: pip install 'rtseg\\[onnx\\]'"):
        resolve("onnx", CPU)


def test_auto_resolution_on_cpu() -> None:
    assert set(BACKENDS) == {"eager", "compile", "tensorrt", "onnx", "auto"}
    want = backends.CPU_AUTO if available(backends.CPU_AUTO, CPU) is None else "eager"
    assert resolve("auto", CPU) == want
    assert resolve("eager", CPU) == "eager"


def test_eager_backend_is_the_module_as_is(engine: YolactEngine) -> None:
    x = torch.randn(2, 3, 128, 128)
    b = make_backend(engine.net, name="eager", device="cpu", input_size=128)
    assert b.name == "eager" and not b.half and not b.channels_last
    with torch.inference_mode():
        ref, out = engine.net(x), b(x)
    assert _max_diff(ref, out) == 0.0
    assert [t.dtype for t in out] == [torch.float32] * 4


def test_eager_channels_last_option_keeps_outputs(engine: YolactEngine) -> None:
    x = torch.randn(1, 3, 128, 128)
    net = copy.deepcopy(engine.net).to(memory_format=torch.contiguous_format)
    b = make_backend(net, name="eager", device="cpu", input_size=128, channels_last=True)
    with torch.inference_mode():
        ref, out = net(x), b(x)
    assert _max_diff(ref, out) < 1e-4
    # the caller's module is not converted in place
    assert net.model.backbone.conv1.weight.is_contiguous()


def test_cpu_engine_runs_its_network_channels_last_with_the_nchw_outputs(engine: YolactEngine) -> None:
    """On the CPU the engine's network keeps its 4-D weights channels_last (CPU_CHANNELS_LAST; faster, see
    benchmarks/cpu_channels_last.py), in place: same parameters, same outputs as the NCHW layout."""
    weights = [p for p in engine.net.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    nchw = copy.deepcopy(engine.net).to(memory_format=torch.contiguous_format)
    assert nchw.model.backbone.conv1.weight.is_contiguous()
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        assert _max_diff(nchw(x), engine.backend(x)) < 1e-4


def test_engine_backend_keyword_default_is_eager(engine: YolactEngine) -> None:
    assert engine.backend.name == "eager"
    img = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    dets = engine(img)
    assert dets.image_size == (96, 120) and len(dets) > 0


def test_compile_backend_on_cpu_logs_no_cuda_warning() -> None:
    """torch's C++ toolchain module, which a CPU compile imports, logs "No CUDA runtime is found" once on a CUDA
    build without a GPU (this machine's torch): making the CPU compile backend keeps that noise out of the run."""
    code = ("import torch, rtseg.engines.backends as b\n"
            "net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))\n"
            "b.make_backend(net, name='compile', device='cpu', input_size=32)\n"
            "import torch.utils.cpp_extension\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "No CUDA runtime" not in proc.stderr, proc.stderr


#: An inductor setting under which no C++ compiler runs (as ``CXX=/nonexistent/g++`` sets it).
NO_COMPILER = {"cpp.cxx": (None, "/nonexistent/g++")}
NO_COMPILER_LINE = ("backend 'compile' is not available: on the CPU it needs a C++ compiler and none runs here (tried "
                    "'/nonexistent/g++'); install one (e.g. apt install g++) or set CXX to one; or use backend='eager' "
                    "(--backend eager)")


def test_compile_on_the_cpu_without_a_cpp_compiler_is_one_line_before_anything_runs(engine: YolactEngine) -> None:
    """Was inductor's 118-line traceback at the engine's warm-up (InvalidCxxCompiler), after the outputs opened;
    now refused where the backend is chosen (also when the engine's options are checked). auto never picks compile
    on the CPU, so it is not affected."""
    import torch._inductor.config

    with torch._inductor.config.patch(NO_COMPILER):
        with pytest.raises(ConfigError) as err:
            make_backend(engine.net, name="compile", device="cpu", input_size=128)
        assert str(err.value) == NO_COMPILER_LINE
        with pytest.raises(ConfigError, match="backend 'compile' is not available: on the CPU it needs a C"):
            YolactEngine.from_config(TINY, backend="compile")
        assert resolve("auto", CPU) in ("onnx", "eager")


def test_compiling_without_a_cpp_compiler_is_the_same_line_at_the_first_call() -> None:
    """The backstop: a compiler that stopped working after the backend was made (the first call compiles)."""
    import torch._inductor.config

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.conv(x), self.conv(x).relu()

    b = backends.TorchBackend(name="compile", module=Two().eval(), half=False, channels_last=False,
                              compile_options={"dynamic": False})
    torch._dynamo.reset()  # a fresh compilation, not one cached from an earlier test
    with torch._inductor.config.patch({**NO_COMPILER, "fx_graph_cache": False}):
        with pytest.raises(ConfigError) as err:
            b(torch.randn(1, 3, 8, 8))
    assert str(err.value) == NO_COMPILER_LINE


@pytest.mark.skipif(os.environ.get("RTSEG_TEST_COMPILE") != "1",
                    reason="torch.compile of the tiny YOLACT takes ~100 s on the 2-core CPU (inductor C++ codegen); "
                           "set RTSEG_TEST_COMPILE=1 to run it")
@pytest.mark.parametrize("freeze", [False, True], ids=["plain", "frozen"])
def test_compile_on_cpu_equals_eager(engine: YolactEngine, freeze: bool) -> None:
    """Also with inductor's freezing (batch norms folded into the convolutions: the weights are graph constants)."""
    x = torch.randn(2, 3, 128, 128)
    b = make_backend(engine.net, name="compile", device="cpu", input_size=128, freeze=freeze)
    with torch.inference_mode():
        ref, out = engine.net(x), b(x)
    assert b.name == "compile" and _max_diff(ref, out) < 1e-4


def static_graph(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """A torch.compile backend that runs the traced graph as is after checking that it is CUDA-graph
    friendly: every value's shape is a plain int (no data-dependent size from a compaction) and no
    value is a symbolic scalar read from a tensor (``.item()``, ``int(t)``: a host wait)."""
    for node in gm.graph.nodes:
        for v in tree_leaves(node.meta.get("example_value")):
            assert not isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)), f"{node.format_node()}: host scalar"
            if isinstance(v, torch.Tensor):
                assert all(type(d) is int for d in v.shape), f"{node.format_node()}: data-dependent shape {v.shape}"
    STATIC_GRAPHS.append(gm)
    return gm.forward


STATIC_GRAPHS: list[torch.fx.GraphModule] = []


def test_fast_nms_candidates_trace_as_one_graph_and_match_eager(engine: YolactEngine) -> None:
    """The Fast NMS detection step has no host synchronisation and fixed shapes: torch.compile
    traces it as one graph (fullgraph=True fails on any break) of static shapes (``static_graph``),
    so CUDA graphs can capture it."""
    with torch.inference_mode():
        loc, conf, _, _ = engine.net(torch.randn(1, 3, 128, 128))
        conf = conf[0].clone()
        low = torch.arange(len(conf)) % 100 != 0  # 99 of 100 anchors below the threshold: dropped by score -1
        conf[low, 0] = 0.99
        conf[low, 1:] = 0.01 / 3
        ref = engine.candidates(loc[0], conf)
        compiled = torch.compile(engine.candidates, fullgraph=True, dynamic=False, backend=static_graph)
        out = compiled(loc[0], conf)
    assert ref[1].shape == (100,) and bool((ref[3] >= 0).any()) and bool((ref[3] == -1).any())
    for r, o in zip(ref, out):
        assert torch.equal(r, o)



def test_a_compile_says_so_once_per_input_shape(capsys) -> None:
    """The first call of a compile backend compiles (a minute or more for a YOLACT on a CPU) with nothing on the
    screen: now one line on stderr first, for each new input shape only."""
    b = backends.TorchBackend(name="compile", module=torch.nn.Conv2d(3, 3, 1).eval(), half=False,
                              channels_last=False, compile_options={"backend": "eager", "dynamic": False})
    torch._dynamo.reset()
    lines = []
    for shape in [(1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]:
        b(torch.randn(shape))
        lines.append(capsys.readouterr().err)
    assert lines == ["rtseg: compiling the network with torch.compile for 1x3x8x8 inputs on cpu (once per input "
                     "shape: seconds on a GPU, minutes on a CPU)\n", "",
                     "rtseg: compiling the network with torch.compile for 2x3x8x8 inputs on cpu (once per input "
                     "shape: seconds on a GPU, minutes on a CPU)\n", ""]


def test_compiled_forward_is_one_graph_of_network_and_detection_step() -> None:
    """With a compiling torch backend, ``forward`` (network + Fast NMS detection step + gathers of
    the rows' boxes and coefficients) is traced as ONE graph of static shapes (fullgraph=True fails
    on any break, ``static_graph`` on a data-dependent size or a host scalar; on CUDA that graph is
    one CUDA graph replay per batch), and the engine's detections equal the eager engine's.
    (Inductor's C++ code generation of the graph would take minutes here; the trace is the same.)"""
    torch.manual_seed(0)
    ref = YolactEngine.from_config(TINY, class_names=["a", "b", "c"], score_threshold=0.1, top_k=30)
    eng = YolactEngine(model=ref.net.model, class_names=["a", "b", "c"], score_threshold=0.1, top_k=30)
    eng.backend = backends.TorchBackend(name="compile", module=eng.net, half=False, channels_last=False,
                                        compile_options={"backend": static_graph, "fullgraph": True, "dynamic": False})
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (96, 120, 3), dtype=np.uint8) for _ in range(2)]
    torch._dynamo.reset()
    STATIC_GRAPHS.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):  # the second batch reuses the first graph
        got = [eng(frames), eng(frames[::-1])]
    assert len(STATIC_GRAPHS) == 1
    want = [ref(frames), ref(frames[::-1])]
    assert sum(len(d) for d in want[0]) > 10
    for g, w in zip(sum(got, []), sum(want, [])):
        assert len(g) == len(w)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)
        assert np.array_equal(g.class_ids, w.class_ids) and np.array_equal(g.masks, w.masks)


# -- the cache -----------------------------------------------------------------------------
def _cached(*args, **kwargs):
    """:func:`cached_artifact` of a test artefact (what its build says on stderr: "building it")."""
    return cached_artifact(*args, building="building it", **kwargs)


class _Counter:
    def __init__(self, text: str) -> None:
        self.text, self.builds = text, 0

    def build(self, path) -> None:
        self.builds += 1
        path.write_text(self.text)


def test_cache_hit_miss_and_stale_entries(tmp_path) -> None:
    key = {"weights": "abc", "opset": 18}
    art = _Counter("artefact-1")
    assert _cached(tmp_path, "m", "txt", key, art.build, lambda p: p.read_text()) == "artefact-1"
    assert _cached(tmp_path, "m", "txt", key, art.build, lambda p: p.read_text()) == "artefact-1"
    assert art.builds == 1
    (path,) = tmp_path.glob("m-*.txt")
    meta = path.with_suffix(".txt.json")

    # a foreign file put in its place (digest mismatch) is rebuilt, not trusted
    path.write_text("foreign")
    assert _cached(tmp_path, "m", "txt", key, art.build, lambda p: p.read_text()) == "artefact-1"
    assert art.builds == 2
    # a sidecar recording another key (e.g. copied from another model) is rebuilt
    doc = json.loads(meta.read_text())
    doc["key"]["weights"] = "zzz"
    meta.write_text(json.dumps(doc))
    _cached(tmp_path, "m", "txt", key, art.build, lambda p: p.read_text())
    assert art.builds == 3
    # an unreadable sidecar is rebuilt
    meta.write_text("{not json")
    _cached(tmp_path, "m", "txt", key, art.build, lambda p: p.read_text())
    assert art.builds == 4
    # a file the loader rejects is rebuilt
    calls = []

    def picky(p):
        calls.append(p)
        if len(calls) == 1:
            raise ValueError("corrupt")
        return p.read_text()

    assert _cached(tmp_path, "m", "txt", key, art.build, picky) == "artefact-1"
    assert art.builds == 5
    # a different key is a different entry; the old one stays
    _cached(tmp_path, "m", "txt", {**key, "opset": 17}, art.build, lambda p: p.read_text())
    assert art.builds == 6 and len(list(tmp_path.glob("m-*.txt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_build_failure_leaves_no_entry(tmp_path) -> None:
    def broken(path) -> None:
        path.write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        _cached(tmp_path, "m", "txt", {"k": 1}, broken, lambda p: p.read_text())
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_is_one_line_and_entries_follow_the_umask(tmp_path) -> None:
    import os

    from rtseg.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=f"engine cache {blocker / 'cache'}: cannot write there .*RTSEG_ENGINE_CACHE"):
        _cached(blocker / "cache", "m", "txt", {"k": 1}, _Counter("a").build, lambda p: p.read_text())
    umask = os.umask(0o022)
    try:
        _cached(tmp_path / "c", "m", "txt", {"k": 1}, _Counter("a").build, lambda p: p.read_text())
    finally:
        os.umask(umask)
    (entry,) = (tmp_path / "c").glob("m-*.txt")
    assert entry.stat().st_mode & 0o777 == 0o644  # others may read what an installation shares


def test_weights_digest_tracks_every_weight(engine: YolactEngine) -> None:
    net = engine.net
    before = weights_digest(net)
    assert weights_digest(net) == before
    param = next(net.parameters())
    with torch.no_grad():
        param[(0,) * param.dim()] += 1.0
    try:
        assert weights_digest(net) != before
    finally:
        with torch.no_grad():
            param[(0,) * param.dim()] -= 1.0


def test_default_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(backends.CACHE_ENV, raising=False)
    assert backends.default_cache_dir().parts[-2:] == ("engines", "cache")  # in this source checkout
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    assert backends.default_cache_dir() == tmp_path


def test_default_cache_dir_of_a_read_only_checkout_and_without_a_home(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    """A checkout the user cannot write to caches in the user's cache folder (was: one error line for every
    --backend onnx / auto run). Tests run as root, whom permissions do not stop, hence os.access is patched;
    an arbitrary container uid has neither HOME nor a passwd entry, hence Path.home is patched to fail."""
    from pathlib import Path

    monkeypatch.delenv(backends.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(backends.os, "access", lambda path, mode: False)
    assert backends.default_cache_dir() == tmp_path / "rtseg" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(ConfigError, match="engine cache: no home folder to keep it in; set RTSEG_ENGINE_CACHE"):
        backends.default_cache_dir()


def test_captured_graphs_are_refused_where_they_cannot_run(engine: YolactEngine) -> None:
    """CUDA graphs of our own: CUDA only, eager / compile only, and not on top of inductor's own graphs."""
    for name in ("eager", "compile", "onnx"):
        with pytest.raises(ConfigError, match="capture=True records CUDA graphs of the eager or compile backend"):
            make_backend(engine.net, name=name, device="cpu", input_size=128, capture=True)
    with pytest.raises(ValueError, match="capture twice"):
        backends.TorchBackend(name="compile", module=engine.net, half=False, channels_last=False,
                              compile_options={"mode": "reduce-overhead"}, capture=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input"):
        backends.CapturedGraphs(engine.net)(torch.zeros(1, 3, 128, 128))


def test_compile_modes_capture_by_default_on_cuda_and_autotune_on_request(engine: YolactEngine) -> None:
    """compile on CUDA replays our CUDA graphs unless capture=False (then inductor's); autotune=True tunes
    kernels in the mode that does not capture twice; on the CPU nothing captures; other backends refuse it."""
    mode = backends._compile_mode
    assert mode(on_cuda=True, capture=True, autotune=False) is None
    assert mode(on_cuda=True, capture=False, autotune=False) == "reduce-overhead"
    assert mode(on_cuda=True, capture=True, autotune=True) == "max-autotune-no-cudagraphs"
    assert mode(on_cuda=True, capture=False, autotune=True) == "max-autotune"
    assert mode(on_cuda=False, capture=False, autotune=True) == "max-autotune-no-cudagraphs"
    cpu = make_backend(engine.net, name="compile", device="cpu", input_size=128, autotune=True)  # compiles lazily
    assert cpu.compile_options["mode"] == "max-autotune-no-cudagraphs" and not cpu.captured and not cpu.cuda_graphs
    assert make_backend(engine.net, name="compile", device="cpu", input_size=128).compile_options["mode"] is None
    options = backends.compile_options
    assert options(on_cuda=True, capture=True, autotune=False, freeze=False) == {"mode": None, "dynamic": False}
    assert options(on_cuda=True, capture=True, autotune=False, freeze=True) == {"options": {"freezing": True},
                                                                                 "dynamic": False}
    frozen = options(on_cuda=True, capture=False, autotune=True, freeze=True)["options"]  # the mode's options too
    assert frozen["freezing"] and frozen["triton.cudagraphs"] and frozen["max_autotune"]
    inductor_graphs = backends.TorchBackend(name="compile", module=engine.net, half=False, channels_last=False,
                                            compile_options=options(on_cuda=True, capture=False, autotune=False,
                                                                    freeze=True))
    assert inductor_graphs.cuda_graphs and not inductor_graphs.captured  # outputs copied out of the graph's pool
    for name in ("eager", "onnx"):
        with pytest.raises(ConfigError, match="autotune=True sets torch.compile's options"):
            make_backend(engine.net, name=name, device="cpu", input_size=128, autotune=True)
        with pytest.raises(ConfigError, match="freeze=True sets torch.compile's options"):
            make_backend(engine.net, name=name, device="cpu", input_size=128, freeze=True)


# -- GPU -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_engine() -> YolactEngine:
    torch.manual_seed(0)
    return YolactEngine.from_config(TINY, class_names=["a", "b", "c"], score_threshold=0.0, device="cuda")


@pytest.mark.gpu
def test_gpu_eager_fp16_channels_last_close_to_fp32(cuda_engine: YolactEngine) -> None:
    x = torch.randn(2, 3, 128, 128, device="cuda")
    b = make_backend(cuda_engine.net, name="eager", device="cuda", input_size=128, half=True, channels_last=True)
    with torch.inference_mode():
        ref, out = cuda_engine.net(x), b(x)
    assert all(t.dtype == torch.float32 and t.is_cuda for t in out)
    assert _max_diff(ref, out) < 2e-2
    assert next(cuda_engine.net.parameters()).dtype == torch.float32


@pytest.mark.gpu
def test_gpu_compile_reduce_overhead(cuda_engine: YolactEngine) -> None:
    default = make_backend(cuda_engine.net, name="compile", device="cuda", input_size=128)
    assert default.half and default.captured and not default.cuda_graphs  # our graphs replay by default
    b = make_backend(cuda_engine.net, name="compile", device="cuda", input_size=128, capture=False)
    assert b.half and b.cuda_graphs and not b.captured  # inductor's reduce-overhead graphs
    x1, x2 = torch.randn(2, 3, 128, 128, device="cuda"), torch.randn(2, 3, 128, 128, device="cuda")
    with torch.inference_mode():
        for _ in range(3):  # warm-up: record and replay the CUDA graph
            b(x1)
        o1 = b(x1)
        o2 = b(x2)  # must not overwrite o1 (outputs are copied out of the graph's pool)
        r1, r2 = cuda_engine.net(x1), cuda_engine.net(x2)
    assert _max_diff(r1, o1) < 2e-2 and _max_diff(r2, o2) < 2e-2



@pytest.mark.gpu
@pytest.mark.parametrize("name, freeze", [("eager", False), ("compile", False), ("compile", True)],
                         ids=["eager", "compile", "compile_frozen"])
def test_gpu_captured_graphs_equal_the_module_and_survive_the_next_replay(cuda_engine: YolactEngine,
                                                                          name: str, freeze: bool) -> None:
    b = make_backend(cuda_engine.net, name=name, device="cuda", input_size=128, half=True, channels_last=True,
                     capture=True, freeze=freeze)
    assert b.captured and not b.cuda_graphs
    x1, x2 = torch.randn(2, 3, 128, 128, device="cuda"), torch.randn(2, 3, 128, 128, device="cuda")
    with torch.inference_mode():
        o1 = b(x1)  # records the graph
        o2 = b(x2)  # replays it: must not overwrite o1
        o3 = b(x1[:1])  # another batch size: another graph
        r1, r2 = cuda_engine.net(x1), cuda_engine.net(x2)
    assert _max_diff(r1, o1) < 2e-2 and _max_diff(r2, o2) < 2e-2
    assert _max_diff(tuple(t[:1] for t in r1), o3) < 2e-2 and len(b._run._graphs) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("capture", [False, True], ids=["inductor_graphs", "captured_graphs"])
def test_gpu_compile_engine_one_graph_forward_matches_eager(capture: bool) -> None:
    """The compile engine (network + detection step as one CUDA graph, fp16: inductor's, or ours with
    capture=True) finds what the eager fp32 engine finds on the shipped demo model's own kind of frames, and a
    frame's detections survive the next replay (the outputs are copied out of the graph's memory pool)."""
    from rtseg.data.synthetic import SyntheticScene

    weights = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")
    eng = YolactEngine.from_weights(weights, device="cuda", backend="compile", score_threshold=0.3)
    if capture:
        eng.backend = make_backend(eng.net, name="compile", device="cuda", input_size=eng.cfg.input_size,
                                   capture=True)
    ref = YolactEngine.from_weights(weights, device="cuda", score_threshold=0.3)
    scene = SyntheticScene(41, num_frames=40, width=640, height=480)
    f1, f2 = scene.frame(5)[0], scene.frame(30)[0]
    skips = counters["inductor"]["cudagraph_skips"]
    for _ in range(3):  # warm-up: record, then replay the graph
        eng(f1)
    assert counters["inductor"]["cudagraph_skips"] == skips, "inductor ran the graph without CUDA graphs"
    d1 = eng(f1)
    remake = d1._mask_fn  # (Detections drops it once its masks are built)
    masks1 = remake()
    d2 = eng(f2)  # replays the graph: must not change d1's device tensors (masks are recomputed from them)
    assert masks1.any() and np.array_equal(remake(), masks1)
    for got, want in ((d1, ref(f1)), (d2, ref(f2))):
        assert len(want) >= 2 and abs(len(got) - len(want)) <= 1
        for i in range(min(len(got), len(want))):  # fp16 may swap two near-equal scores: match by box
            j = int(np.abs(want.boxes - got.boxes[i]).max(1).argmin())
            assert got.class_ids[i] == want.class_ids[j] and np.abs(want.boxes[j] - got.boxes[i]).max() <= 2.0
            inter = np.logical_and(got.masks[i], want.masks[j]).sum()
            assert inter / np.logical_or(got.masks[i], want.masks[j]).sum() > 0.9


@pytest.mark.gpu
def test_gpu_tensorrt_fp16_and_cache(cuda_engine: YolactEngine, tmp_path) -> None:
    pytest.importorskip("torch_tensorrt")
    b = make_backend(cuda_engine.net, name="tensorrt", device="cuda", input_size=128, cache_dir=tmp_path)
    x = torch.randn(3, 3, 128, 128, device="cuda")
    with torch.inference_mode():
        ref, out = cuda_engine.net(x), b(x)
    assert _max_diff(ref, out) < 3e-2
    again = make_backend(cuda_engine.net, name="tensorrt", device="cuda", input_size=128, cache_dir=tmp_path)
    assert again.path == b.path and len(list(tmp_path.glob("*.ep"))) == 1


def test_in_chunks_splits_batches_above_the_graph_limit(engine: YolactEngine) -> None:
    seen = []

    def run(x: torch.Tensor):
        seen.append(x.shape[0])
        assert x.shape[0] <= 2
        return engine.net(x)

    x = torch.randn(5, 3, 128, 128)
    with torch.inference_mode():
        out, ref = backends.in_chunks(run, x, 2), engine.net(x)
    assert seen == [2, 2, 1] and _max_diff(ref, out) < 1e-5
