"""Network backends: how an engine runs its exportable network part.

A backend is a callable ``(x) -> (loc, conf, coef, proto)`` that takes the
normalised float32 batch (B, 3, S, S) on the engine's device and returns the
raw float32 tensors of :class:`rtseg.engines.yolact.InferenceNet` on that
device; pre- and post-processing stay in the engine.

- ``eager``: the module as is (fp16 weights / channels_last memory as options).
- ``compile``: ``torch.compile`` (on CUDA with fp16 and CUDA graphs). :meth:`TorchBackend.then`
  compiles the network together with a device-side head (the engine's detection step) as one
  graph, so a frame costs one graph replay. On CUDA that step is recorded in CUDA graphs of our own
  by default (``capture=True``, :class:`CapturedGraphs`; eager can take it too): a replay skips
  dynamo's guards and Python entirely; ``capture=False`` uses inductor's ``reduce-overhead`` graphs.
- ``onnx``: exported once with ``torch.onnx.export`` and run by ONNX Runtime
  (:mod:`rtseg.engines.onnx_export`).
- ``tensorrt``: torch-tensorrt, fp16 or INT8 (:mod:`rtseg.engines.trt`).
- ``auto``: tensorrt when importable on CUDA, else compile on CUDA, else ONNX Runtime
  on the CPU (measured faster than eager; evidence at :data:`CPU_AUTO`). When the
  exported backend it picked cannot be made (a broken install, an engine cache that
  cannot be written) it runs compile on CUDA / eager on the CPU instead, with an
  :class:`~rtseg.errors.RtsegWarning` saying why.

Exported/compiled artefacts are cached under ``engines/cache/`` keyed by a digest
of the weights plus everything else that changes the artefact (:func:`artifact_key`,
:data:`EXPORT_FORMAT`); see :func:`cached_artifact`. A stale, foreign or unreadable
entry is rebuilt; a build says so on stderr first (it takes seconds to minutes); storing an
entry removes the entries of the same artefact that older code built (:func:`superseded`).
"""
from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import re
import secrets
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Callable, Collection, Mapping, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_map

from rtseg.engines import BACKENDS
from rtseg.errors import ConfigError, RtsegWarning, first_line

#: What ``auto`` picks on a CPU (eager when onnx/onnxscript/onnxruntime are missing). Evidence:
#: benchmarks/onnx_vs_eager_cpu.py (results/onnx_vs_eager_cpu.json), batch 1, network only, p50, on a 2-vCPU
#: Intel VM with eager channels_last as the engines run it: R-50 @ 550 eager 787 ms vs ORT 490 ms (1.61x);
#: resnet18 @ 320 demo-like config eager 49.9 ms vs ORT 31.0 ms (1.61x). Outputs equal within 2e-7. compile with
#: ``freeze=True`` in the same run: 444 ms (beats ORT on R-50) but 43.2 ms on the demo-like net (ORT is 1.39x
#: faster), after a first call of 17-30 s and only with a C++ compiler installed: not ``auto``'s choice.
CPU_AUTO = "onnx"
#: Whether ``compile`` on CUDA replays CUDA graphs of our own (``capture=True``) by default rather than
#: inductor's ``reduce-overhead`` ones. Evidence: benchmarks/engine_profile.py on an H200
#: (results/device/run5.engine_profile.json), R-101 @ 550 fp16, batch 1, network + detection step as one
#: graph, p50: inductor's graphs 3.14 ms vs ours 1.88 ms; model + post-processing 2.57 vs 2.10 ms.
CUDA_CAPTURE = True
#: ``torch.compile`` modes that replay CUDA graphs (their outputs live in memory the next replay overwrites).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: Largest batch the exported / compiled graphs are built for.
MAX_BATCH = 16
#: Environment variable that overrides the cache folder.
CACHE_ENV = "RTSEG_ENGINE_CACHE"
#: Version of the exported network, part of every cache key (:func:`artifact_key`). Bump it with any change to
#: rtseg's code that changes what the exported / compiled network computes (rtseg.models, InferenceNet, the export
#: settings), so that engines cached by the older code are rebuilt: the rtseg version in the key changes only with
#: a release, not with an edit in a checkout.
EXPORT_FORMAT = 1
#: The fields of :func:`artifact_key`'s keys that say which code built the artefact, not what it is: an entry
#: older in them than a new one of the same artefact is removed when the new one is stored (:func:`superseded`).
KEY_VERSIONS = ("format", "rtseg", "torch")
#: A version :func:`superseded` can order: numbers and dots, an optional local label (``2.14.1+cu130``).
_RELEASE = re.compile(r"(\d+(?:\.\d+)*)(\+[0-9A-Za-z.]+)?")
#: errno values of a write the disk cannot take (a full disk, a quota, a file size limit).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Backend = Callable[[torch.Tensor], Outputs]
T = TypeVar("T")


class BackendUnavailable(ConfigError):
    """A backend that cannot run here. ``reason``: what is wrong and what to do (one line); the message adds the
    eager backend as the other way out. ``auto`` runs its fallback on it (:func:`make_backend`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; or use backend='eager' (--backend eager)")
        self.reason = reason


def default_cache_dir() -> Path:
    """``$RTSEG_ENGINE_CACHE``, else ``<project>/engines/cache`` (git-ignored) in a source checkout the user
    may write to, else ``$XDG_CACHE_HOME/rtseg/engines`` (``~/.cache/rtseg/engines``): an installed package or
    a read-only checkout. :class:`BackendUnavailable` when none of these can be named (no home folder)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    project = Path(__file__).resolve().parents[2]
    engines = project / "engines"
    if (project / "pyproject.toml").is_file() and engines.is_dir():
        cache = engines / "cache"
        if os.access(cache if cache.is_dir() else engines, os.W_OK):
            return cache
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "rtseg" / "engines"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (an arbitrary container uid)
        raise BackendUnavailable(f"engine cache: no home folder to keep it in; set {CACHE_ENV} (or XDG_CACHE_HOME) "
                                 "to a writable folder") from None
    return home / ".cache" / "rtseg" / "engines"


def weights_digest(module: nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes and raw bytes), hex."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    """sha256 of the file's bytes, hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist`` (``importlib.metadata``), or ``"absent"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def artifact_key(kind: str, net: nn.Module, config: Any, **extra: Any) -> dict[str, Any]:
    """The cache key of a ``kind`` artefact of ``net``: its weights digest, ``repr(config)``, :data:`EXPORT_FORMAT`,
    the rtseg and torch versions (the fields :data:`KEY_VERSIONS`), and ``extra`` (what else the artefact depends
    on: shapes, exporter versions …)."""
    return {"kind": kind, "weights": weights_digest(net), "config": repr(config), "format": EXPORT_FORMAT,
            "rtseg": package_version("rtseg"), "torch": torch.__version__, **extra}


def import_installed(backend: str, module: str) -> ModuleType:
    """Import ``module``, which backend ``backend`` needs and :func:`available` found installed;
    :class:`BackendUnavailable` (the import's own error in its line) when the installed package cannot be imported
    (e.g. a missing shared library)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = importlib.metadata.packages_distributions().get(module, [module])[0]  # onnxruntime-gpu, torch-tensorrt
        raise BackendUnavailable(f"backend {backend!r}: {module} is installed but cannot be imported "
                                 f"({first_line(exc)}); reinstall it (pip install --force-reinstall {dist})") from None


def entry_path(cache_dir: Path, prefix: str, suffix: str, key: Mapping[str, Any]) -> Path:
    """The cache entry of ``key``: ``<cache_dir>/<prefix>-<hash(key)>.<suffix>`` (its sidecar: that name +
    ``.json``). ``key``: JSON-able values, others by their ``str``."""
    name = hashlib.sha256(json.dumps(_normalised(key), sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{prefix}-{name}.{suffix}"


def _normalised(key: Mapping[str, Any]) -> dict[str, Any]:
    """``key`` as it reads back from JSON (tuples as lists, other objects as their ``str``)."""
    return json.loads(json.dumps(dict(key), sort_keys=True, default=str))


def cached_artifact(cache_dir: Path, prefix: str, suffix: str, key: Mapping[str, Any],
                    build: Callable[[Path], None], load: Callable[[Path], T], *, building: str,
                    versions: Collection[str] = KEY_VERSIONS) -> T:
    """Load a cached artefact for ``key``, or build, record and load it.

    The entry is :func:`entry_path` plus a ``.json`` sidecar holding the full key and the artefact's sha256. It
    is trusted only when the sidecar parses, its key equals ``key`` and the file's digest matches; ``load``
    raising on it also counts as stale. Anything else is rebuilt (``build(path)`` writes the artefact) and put in
    place with its sidecar (:func:`_store`), after one line on stderr: ``rtseg: <building> (once: ...)``, naming
    the entry (``building``: what the build does, e.g. ``exporting the network to ONNX for 3x550x550 inputs``);
    a cache hit says nothing. :class:`BackendUnavailable` (one line) when the cache cannot take the entry: a folder
    it cannot write, a full disk, a name taken by a folder; no temporary file is left then.

    Once the new entry is in place, the entries it supersedes are removed (:func:`superseded`; ``versions``: the
    fields of ``key`` that say which code built the artefact).
    """
    key = _normalised(key)
    path = entry_path(cache_dir, prefix, suffix, key)
    meta = path.with_name(path.name + ".json")
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
        if recorded.get("key") == key and recorded.get("sha256") == _file_digest(path):
            return load(path)
    except Exception:  # noqa: BLE001 - any unreadable / foreign entry is rebuilt, never trusted
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as exc:
        raise BackendUnavailable(f"engine cache {cache_dir}: cannot write there ({exc.strerror}); "
                                 f"set {CACHE_ENV} to a writable folder") from None
    print(f"rtseg: {building} (once: it is cached for later runs as {path})", file=sys.stderr, flush=True)
    try:
        _store(path, meta, key, build)
    except OSError as exc:
        raise _not_stored(cache_dir, path, exc) from None
    _remove_superseded(path, f"{prefix}-*.{suffix}.json", key, versions)
    return load(path)


def built_in_memory(save: Callable[[BinaryIO], None]) -> Callable[[Path], None]:
    """A ``build`` for :func:`cached_artifact` from ``save``, which writes the artefact into a file object: it saves
    into memory, then writes the bytes to the path with Python's own file I/O, so that a write the disk cannot take
    is the OSError :func:`cached_artifact` reports in one line, not the RuntimeError of torch's zip writer
    (``torch.save``, ``torch.export.save``: "PytorchStreamWriter failed writing file …"). Costs the artefact's size
    in memory once more while it is written."""
    def build(path: Path) -> None:
        buffer = io.BytesIO()
        save(buffer)
        path.write_bytes(buffer.getbuffer())

    return build


def _store(path: Path, meta: Path, key: dict[str, Any], build: Callable[[Path], None]) -> None:
    """``build`` the artefact into a temporary file beside ``path`` (build creates it: the umask applies), write
    the sidecar ``meta`` (key and sha256) into another, then rename both into place. The temporary files (named by
    process and a random token: two builds never share one) are removed whatever happens."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp, meta_tmp = (p.with_name(f"{p.name}.{token}.tmp") for p in (path, meta))
    try:
        build(tmp)
        meta_tmp.write_text(json.dumps({"key": key, "sha256": _file_digest(tmp)}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        os.replace(meta_tmp, meta)
    finally:
        tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)


def _remove_superseded(path: Path, sidecars: str, key: dict[str, Any], versions: Collection[str]) -> None:
    """Remove the entries beside ``path`` (their sidecars: the glob ``sidecars``) whose recorded key ``key``
    supersedes (:func:`superseded`): the artefact first, then its sidecar (a sidecar left alone is found again
    next time; an artefact without one never would be). Best effort: a sidecar that cannot be read, or a file that
    cannot be removed, is left as it is."""
    with contextlib.suppress(OSError):
        for meta in path.parent.glob(sidecars):
            entry = meta.with_name(meta.name.removesuffix(".json"))
            try:
                old = json.loads(meta.read_text(encoding="utf-8")).get("key")
            except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object: not ours to judge
                continue
            if entry != path and superseded(old, key, versions):
                with contextlib.suppress(OSError):
                    entry.unlink(missing_ok=True)
                    meta.unlink(missing_ok=True)


def superseded(old: Any, new: Mapping[str, Any], versions: Collection[str]) -> bool:
    """Whether a cache entry of key ``old`` is superseded by one of key ``new``, so that storing ``new`` removes it.

    The rule: ``old`` is the same artefact (the same fields, equal in every field but ``versions``: same weights,
    architecture, backend, precision, shapes, device, calibration frames, opset …) built by older code: in every
    field of ``versions`` (rtseg, torch and exporter versions, :data:`EXPORT_FORMAT`) it is older than or equal to
    ``new``, and older in at least one. Anything that cannot be ordered keeps the entry: a field that is newer in
    ``old`` (a newer installation sharing the cache folder still uses it), versions ordered differently (one
    newer, another older), a version that is not plain numbers (``2.5.0rc1``, ``absent``: a package missing from
    one installation), local labels that differ (``+cpu`` and ``+cu130``: builds installed side by side), and keys
    of another layout. So an upgrade clears its predecessors' entries once it builds its own; an older installation
    sharing the folder builds its entry again once and then keeps it (it never removes the newer one, and the newer
    one removes entries only when it stores one), so two installations never take turns rebuilding.
    """
    if not isinstance(old, dict) or old.keys() != new.keys():
        return False
    if any(old[field] != new[field] for field in new if field not in versions):
        return False
    order = [_version_order(old[field], new[field]) for field in versions if field in new]
    return None not in order and max(order, default=0) <= 0 and min(order, default=0) < 0


def _version_order(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b`` (ints: :data:`EXPORT_FORMAT`;
    strings: dotted numbers with an optional local label, compared only when the labels are equal); None when they
    cannot be ordered (see :func:`superseded`)."""
    if a == b:
        return 0
    if type(a) is int and type(b) is int:
        return (a > b) - (a < b)
    ma, mb = (_RELEASE.fullmatch(v) if isinstance(v, str) else None for v in (a, b))
    if ma is None or mb is None or ma[2] != mb[2]:
        return None
    ra, rb = ([int(n) for n in m[1].split(".")] for m in (ma, mb))
    width = max(len(ra), len(rb))
    ra, rb = ra + [0] * (width - len(ra)), rb + [0] * (width - len(rb))
    return (ra > rb) - (ra < rb)


def _not_stored(cache_dir: Path, path: Path, exc: OSError) -> BackendUnavailable:
    """The line for an entry (``path``) the cache could not take: the file, why, and what to do."""
    name = Path(exc.filename2).name if exc.filename2 else path.name  # a refused rename: the name taken
    fix = "free space or " if exc.errno in DISK_FULL else f"remove {name} or " if exc.filename2 else ""
    return BackendUnavailable(f"engine cache {cache_dir}: cannot write {name} ({exc.strerror or exc}); {fix}set "
                              f"{CACHE_ENV} to another folder")


def _module_on(net: nn.Module, device: torch.device, half: bool, channels_last: bool) -> nn.Module:
    """A copy of ``net`` on ``device`` (fp16 / channels_last when asked); ``net`` itself unchanged."""
    if not half and not channels_last:
        return net.to(device)
    out = copy.deepcopy(net).to(device)
    if half:
        out = out.half()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


class TorchBackend:
    """Runs a torch module on the device as is (eager) or through ``torch.compile``, fp16 / channels_last aware.

    module: the network on the device (already fp16 / channels_last when ``half`` / ``channels_last``).
    compile_options: keyword arguments of ``torch.compile`` (None: eager). With a CUDA-graph mode
    (``CUDA_GRAPH_MODES``) outputs are copied out of the graph's memory pool, which the next replay overwrites.
    capture: replay the (compiled or eager) step from :class:`CapturedGraphs` (CUDA only; not with a
    CUDA-graph mode, which captures already).
    """

    def __init__(self, *, name: str, module: nn.Module, half: bool, channels_last: bool,
                 compile_options: Mapping[str, Any] | None = None, capture: bool = False) -> None:
        self.name = name
        self.module = module
        self.half = half
        self.channels_last = channels_last
        self.compile_options = dict(compile_options) if compile_options is not None else None
        self.cuda_graphs = self.compile_options is not None and (
            self.compile_options.get("mode") in CUDA_GRAPH_MODES
            or self.compile_options.get("options", {}).get("triton.cudagraphs", False))
        if capture and self.cuda_graphs:
            raise ValueError("TorchBackend: capture=True with a CUDA-graph compile mode would capture twice")
        self.captured = capture
        self._run = self.then(lambda outputs: outputs)

    @property
    def compiled(self) -> bool:
        return self.compile_options is not None

    @property
    def one_graph(self) -> bool:
        """Whether :meth:`then` runs the network and its head as one graph (compiled or captured)."""
        return self.compiled or self.captured

    def __call__(self, x: torch.Tensor) -> Outputs:
        return self._run(x)

    def then(self, head: Callable[[Outputs], T]) -> Callable[[torch.Tensor], T]:
        """``x -> head(network(x))`` as one function; compiled (one CUDA graph with reduce-overhead) when
        this backend compiles. head gets the float32 outputs and returns tensors (any nesting of
        tuples / lists). Compilation is lazy: it happens on the first call, once per input shape."""
        def step(x: torch.Tensor) -> T:
            if self.half:
                x = x.half()
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return head(tuple(t.float() for t in self.module(x)))  # type: ignore[arg-type]

        fn = step if self.compile_options is None else _compiler_checked(torch.compile(step, **self.compile_options))
        if self.captured:
            return CapturedGraphs(fn)
        if not self.cuda_graphs:
            return fn

        def replay(x: torch.Tensor) -> T:
            torch.compiler.cudagraph_mark_step_begin()
            return tree_map(torch.clone, fn(x))

        return replay


class CapturedGraphs:
    """``fn`` replayed from CUDA graphs recorded with ``torch.cuda.graph``, one per input shape / dtype / device.

    A call copies its input into the graph's static input, launches the graph on the current stream and returns
    clones of the static outputs (the next replay overwrites them): no Python, no dynamo guard checks and no
    per-kernel launches. ``fn`` (tensor in, tensors out in any nesting) must have fixed shapes and must not wait
    for the device; the first call per shape runs it ``warmup`` times on a side stream (compiling it, cuDNN /
    cuBLAS choosing their kernels) before recording, as the ``torch.cuda.graph`` documentation asks.
    """

    def __init__(self, fn: Callable[[torch.Tensor], T], *, warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, T]] = {}

    def __call__(self, x: torch.Tensor) -> T:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphs:
            self._graphs[key] = self._record(x)
        graph, static_x, static_out = self._graphs[key]
        static_x.copy_(x)
        graph.replay()
        return tree_map(torch.clone, static_out)

    def _record(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, T]:
        if not x.is_cuda:
            raise ValueError(f"CapturedGraphs: CUDA graphs need a CUDA input, got one on {x.device}")
        static_x = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_x)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (the pipeline's) go on
            static_out = self.fn(static_x)
        return graph, static_x, static_out


def _import_cpp_toolchain_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor's C++ toolchain for CPU graphs) without the warning it logs
    once on a CUDA build of torch without a GPU ("No CUDA runtime is found, using CUDA_HOME=..."): noise for a CPU
    compile, which needs no CUDA."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(level)


def _cpp_compiler_missing() -> str | None:
    """None when inductor finds a working C++ compiler (what it makes of a graph on the CPU is C++), else the
    reason (one line). The search runs ``<compiler> --version`` once per setting (inductor caches it)."""
    from torch._inductor import config
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        cxx = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        tried = " or ".join(repr(c) for c in cxx if c)
        return (f"on the CPU it needs a C++ compiler and none runs here (tried {tried}); install one (e.g. "
                "apt install g++) or set CXX to one")
    return None


def _compiler_checked(fn: Callable[[torch.Tensor], T]) -> Callable[[torch.Tensor], T]:
    """``fn`` (a ``torch.compile``'d function) whose compilation failing for want of a C++ compiler is the one line
    of :func:`resolve` (:class:`BackendUnavailable`), not inductor's traceback: the backstop of :func:`available`'s
    check (a compiler that stopped working since, a setting it did not see). The first call for each input shape
    (where torch.compile compiles: seconds on a GPU, minutes on a CPU, with nothing to see) says so on stderr first,
    as an engine-cache build does (:func:`cached_artifact`); inductor's own cache may make it quick."""
    shapes: set[tuple[tuple[int, ...], torch.dtype, torch.device]] = set()

    def run(x: torch.Tensor) -> T:
        if (key := (tuple(x.shape), x.dtype, x.device)) not in shapes:
            shapes.add(key)
            print(f"rtseg: compiling the network with torch.compile for {'x'.join(map(str, x.shape))} inputs on "
                  f"{x.device} (once per input shape: seconds on a GPU, minutes on a CPU)", file=sys.stderr,
                  flush=True)
        try:
            return fn(x)
        except RuntimeError as exc:  # inductor's InductorError (a BackendCompilerFailed) holds its own error
            from torch._inductor.exc import InvalidCxxCompiler

            if not isinstance(getattr(exc, "inner_exception", None), InvalidCxxCompiler):
                raise
            raise _unavailable("compile", _cpp_compiler_missing() or first_line(exc.inner_exception)) from None

    return run


def in_chunks(run: Callable[[torch.Tensor], Outputs], x: torch.Tensor, max_batch: int) -> Outputs:
    """``run`` over ``x`` in slices of at most ``max_batch`` (graphs built for a batch range), outputs concatenated."""
    if x.shape[0] <= max_batch:
        return run(x)
    parts = [run(c) for c in x.split(max_batch)]
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def available(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device`` here, else the reason (one line). Packages are looked for,
    not imported (an installed one that fails to import is :func:`import_installed`'s error); compile on the CPU
    looks for inductor's C++ compiler."""
    if name == "compile" and device.type == "cpu":
        return _cpp_compiler_missing()
    if name == "tensorrt":
        if device.type != "cuda":
            return "needs a CUDA device (device='cuda', --device cuda)"
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "needs torch-tensorrt: pip install torch-tensorrt (matching your torch)"
    if name == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs {', '.join(missing)}: pip install 'rtseg[onnx]'"
    return None


def _unavailable(name: str, reason: str) -> BackendUnavailable:
    """The error of backend ``name`` not running here for ``reason`` (:func:`available`'s line)."""
    return BackendUnavailable(f"backend {name!r} is not available: {reason}")


def resolve(name: str, device: torch.device) -> str:
    """The concrete backend for ``name`` on ``device`` (``auto`` resolved; it never picks compile on the CPU);
    ConfigError when ``name`` is unknown, :class:`BackendUnavailable` when it cannot run here."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type == "cuda":
            return "tensorrt" if available("tensorrt", device) is None else "compile"
        return CPU_AUTO if available(CPU_AUTO, device) is None else "eager"
    reason = available(name, device)
    if reason is not None:
        raise _unavailable(name, reason)
    return name


def _compile_mode(*, on_cuda: bool, capture: bool, autotune: bool) -> str | None:
    """``torch.compile``'s mode: inductor's CUDA graphs on CUDA unless ours replay (``capture``), tuned or not."""
    if on_cuda and not capture:
        return "max-autotune" if autotune else "reduce-overhead"
    return "max-autotune-no-cudagraphs" if autotune else None


def compile_options(*, on_cuda: bool, capture: bool, autotune: bool, freeze: bool) -> dict[str, Any]:
    """``torch.compile``'s keyword arguments: the mode of :func:`_compile_mode`, static shapes; with ``freeze``
    that mode's inductor options plus ``freezing`` (torch.compile takes a mode or options, not both)."""
    mode = _compile_mode(on_cuda=on_cuda, capture=capture, autotune=autotune)
    if not freeze:
        return {"mode": mode, "dynamic": False}
    from torch._inductor import list_mode_options

    return {"options": {**list_mode_options(mode or "default"), "freezing": True}, "dynamic": False}


def make_backend(net: nn.Module, *, name: str, device: torch.device | str, input_size: int, config: Any = None,
                 half: bool | None = None, channels_last: bool | None = None, cache_dir: Path | None = None,
                 precision: str = "fp16", calibration_dir: str | None = None, max_batch: int = MAX_BATCH,
                 capture: bool | None = None, autotune: bool = False, freeze: bool = False) -> Backend:
    """Wrap ``net`` (an eval-mode :class:`InferenceNet`) in backend ``name``.

    device: where inputs arrive and outputs are returned. input_size: S of the (B, 3, S, S) input.
    config: anything whose ``repr`` identifies the architecture (part of cache keys).
    half / channels_last: fp16 weights / channels_last memory for eager and compile (default: on for
    compile on CUDA, off otherwise, so that eager is the module as is).
    precision ("fp16" | "int8") and calibration_dir (a folder of frames for INT8): tensorrt only.
    capture: eager / compile on CUDA: replay from CUDA graphs of our own (:class:`CapturedGraphs`; compile then
    uses inductor without its CUDA graphs) instead of inductor's ``reduce-overhead`` graphs (default: on for
    compile on CUDA, where it was measured faster, off otherwise; evidence at :data:`CUDA_CAPTURE`).
    autotune: compile only: inductor's ``max-autotune`` (benchmarks kernel choices while compiling: minutes
    more per input shape; with ``capture`` its ``max-autotune-no-cudagraphs`` mode, as our graphs replay).
    freeze: compile only: inductor's ``freezing`` (the weights become constants of the graph: batch norms folded
    into the convolutions before them, constant subgraphs precomputed; the graph keeps its own copy of the
    weights, so later changes to the module's parameters are not seen). Off by default until measured on a GPU
    (``benchmarks/engine_profile.py --backends compile_fp16_captured_frozen``).
    The returned callable has a ``name`` attribute with the resolved backend. ``auto`` runs compile on CUDA /
    eager on the CPU, with an :class:`~rtseg.errors.RtsegWarning` saying why, when the exported backend it picked
    cannot be made (:class:`BackendUnavailable`: a package that fails to import, a cache it cannot write).
    """
    asked = {"half": half, "channels_last": channels_last, "capture": capture}
    device = torch.device(device)
    concrete = resolve(name, device)
    on_cuda = device.type == "cuda"
    fast_default = on_cuda and concrete == "compile"
    half = fast_default if half is None else half
    channels_last = fast_default if channels_last is None else channels_last
    capture = (fast_default and CUDA_CAPTURE) if capture is None else capture
    net = net.eval()
    if capture and not (on_cuda and concrete in ("eager", "compile")):
        raise ConfigError(f"capture=True records CUDA graphs of the eager or compile backend on a CUDA device, "
                          f"not of {concrete!r} on {device}")
    if (autotune or freeze) and concrete != "compile":
        raise ConfigError(f"{'autotune' if autotune else 'freeze'}=True sets torch.compile's options; the "
                          f"{concrete!r} backend does not compile")
    if concrete == "eager":
        return TorchBackend(name="eager", module=_module_on(net, device, half, channels_last), half=half,
                            channels_last=channels_last, capture=capture)
    if concrete == "compile":
        if not on_cuda:
            _import_cpp_toolchain_quietly()
        return TorchBackend(name="compile", module=_module_on(net, device, half, channels_last), half=half,
                            channels_last=channels_last, capture=capture,
                            compile_options=compile_options(on_cuda=on_cuda, capture=capture, autotune=autotune,
                                                            freeze=freeze))
    try:
        return _exported(net, name=concrete, device=device, input_size=input_size, config=config,
                         cache_dir=cache_dir, precision=precision, calibration_dir=calibration_dir,
                         max_batch=max_batch)
    except BackendUnavailable as exc:
        if name != "auto":
            raise
        fallback = "compile" if on_cuda else "eager"
        warnings.warn(f"backend auto: {concrete} cannot be used ({exc.reason}); running {fallback} instead",
                      RtsegWarning, stacklevel=2)
        return make_backend(net, name=fallback, device=device, input_size=input_size, config=config, **asked)


def _exported(net: nn.Module, *, name: str, device: torch.device, input_size: int, config: Any,
              cache_dir: Path | None, precision: str, calibration_dir: str | None, max_batch: int) -> Backend:
    """The onnx or tensorrt backend (``name``) of ``net``, its artefact cached in ``cache_dir`` (default:
    :func:`default_cache_dir`); arguments as :func:`make_backend`'s."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == "onnx":
        from rtseg.engines.onnx_export import OnnxBackend

        return OnnxBackend.create(net, device=device, input_size=input_size, config=config, cache_dir=cache,
                                  max_batch=max_batch)
    from rtseg.engines.trt import TensorRTBackend

    return TensorRTBackend.create(net, device=device, input_size=input_size, config=config, cache_dir=cache,
                                  precision=precision, calibration_dir=calibration_dir, max_batch=max_batch)
