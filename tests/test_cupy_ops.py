"""CuPy twins of the post-processing ops vs the torch references, and the engine's device overlay.

Four layers:
- The torch device overlay (:mod:`rtseg.ops.device_overlay`) and the YOLACT engine's
  ``device_overlay`` path (frame kept where the network ran, ``annotate`` blends there) against
  the host ``annotate`` path: on the CPU here, on CUDA in the GPU tests.
- GPU tests (``@pytest.mark.gpu``): the real CuPy kernels on CUDA against the torch ops.
- NVRTC (runs here, no GPU): the ``.cu`` sources compile as CuPy compiles them and export the kernels.
- Host emulation (runs here): the same ``.cu`` sources compiled by g++ with a tiny shim
  that maps ``blockIdx``/``threadIdx`` to host loops, driven through the real Python
  wrappers in :mod:`rtseg.ops.cupy_ops` (only the launch is swapped). This checks the kernels'
  arithmetic, indexing and the wrappers' argument preparation without a GPU; it cannot
  check CuPy interop or streams, which the GPU tests do.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.ops import cupy_ops, device_overlay
from rtseg.ops.boxes import boxes_to_pixels
from rtseg.ops.masks import assemble_masks
from rtseg.ops.nms import fast_nms


# -- shared data and references -------------------------------------------------------------
def nms_case(seed: int, n: int = 300, num_classes: int = 5, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered boxes (many overlaps) plus adversarial pairs at IoU just above / below 0.5."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(12, 2, generator=g)
    c = centers[torch.randint(0, 12, (n,), generator=g)] + 0.03 * torch.randn(n, 2, generator=g)
    wh = 0.05 + 0.2 * torch.rand(n, 2, generator=g)
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    # IoU of [0,0,1,1] with [0,0,1,h] is h: just above and just below the threshold
    boxes[0] = torch.tensor([0.0, 0.0, 0.4, 0.4])
    boxes[1] = torch.tensor([0.0, 0.0, 0.4, 0.4 * 0.5001])
    boxes[2] = torch.tensor([0.6, 0.6, 1.0, 1.0])
    boxes[3] = torch.tensor([0.6, 0.6, 1.0, 0.6 + 0.4 * 0.4999])
    # identical zero-area boxes: IoU is NaN (official behaviour: the later one is dropped)
    boxes[4] = torch.tensor([0.5, 0.5, 0.5, 0.7])
    boxes[5] = torch.tensor([0.5, 0.5, 0.5, 0.7])
    scores = torch.rand(num_classes, n, generator=g)
    scores[:, 0], scores[:, 1], scores[:, 2], scores[:, 3] = 0.99, 0.98, 0.97, 0.96
    scores[:, 4], scores[:, 5] = 0.95, 0.94
    return boxes.to(device), scores.to(device)


def mask_case(seed: int, n: int = 7, h: int = 32, w: int = 32, k: int = 8,
              device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    proto = torch.relu(torch.randn(h, w, k, generator=g))
    coef = torch.tanh(torch.randn(n, k, generator=g))
    a, b = torch.rand(n, 2, generator=g) * 0.8, torch.rand(n, 2, generator=g) * 0.8 + 0.2
    boxes = torch.cat([a, b], 1)  # some have x1 > x2 (unordered), as raw decoded boxes can
    boxes[0] = torch.tensor([-0.1, -0.2, 1.3, 1.1])  # beyond the frame
    scores = torch.rand(n, generator=g)
    scores[1] = scores[2]  # a tie: annotate's stable order decides
    return proto.to(device), coef.to(device), boxes.to(device), scores.to(device)


def reference_overlay(frame: np.ndarray, proto, coef, boxes, scores, colors: np.ndarray, alpha: float) -> np.ndarray:
    """The mask part of rtseg.ops.overlay.annotate (painter's order, box-limited, addWeighted) on torch masks."""
    cv2 = pytest.importorskip("cv2")
    from rtseg.ops.overlay import _int_boxes

    size = frame.shape[:2]
    masks = assemble_masks(proto, coef, boxes, size).cpu().numpy()
    ib = _int_boxes(boxes_to_pixels(boxes.float(), *size).cpu().numpy(), size)
    owner = np.full(size, -1, np.int32)
    for i in np.argsort(scores.cpu().numpy(), kind="stable"):  # painter's order, as annotate
        x0, y0, x1, y1 = ib[i]
        owner[y0:y1, x0:x1][masks[i, y0:y1, x0:x1]] = i
    if len(colors) == 0:
        return frame.copy()
    blended = cv2.addWeighted(frame, 1.0 - alpha, colors[np.maximum(owner, 0)], alpha, 0.0)
    return np.where((owner >= 0)[..., None], blended, frame)


def mask_ious(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.cpu(), b.cpu()
    out = []
    for x, y in zip(a, b):
        union = (x | y).sum().item()
        out.append(1.0 if union == 0 else (x & y).sum().item() / union)
    return out


def assert_same_nms(got, ref) -> None:
    (gi, gc, gs), (ri, rc, rs) = got, ref
    assert torch.equal(gi.cpu(), ri.cpu()) and torch.equal(gc.cpu(), rc.cpu())
    assert torch.equal(gs.cpu(), rs.cpu())


# -- import safety ------------------------------------------------------------------------------
def test_module_imports_and_reports_missing_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_ops, "HAVE_CUPY", False)
    cupy_ops._kernel.cache_clear()
    with pytest.raises(ConfigError, match="pip install cupy"):
        cupy_ops._kernel("fast_nms.cu", "fast_nms_keep")
    cupy_ops._kernel.cache_clear()


def test_cpu_tensors_are_rejected_with_a_clear_error() -> None:
    boxes, scores = nms_case(0, n=10)
    with pytest.raises(ValueError, match="expected CUDA tensors"):
        cupy_ops.fast_nms(boxes, scores)
    empty = cupy_ops.fast_nms(torch.zeros(0, 4), torch.zeros(3, 0))
    assert all(t.numel() == 0 for t in empty)


def test_kernel_arguments_are_device_pointers_and_scalars() -> None:
    t = torch.arange(12, dtype=torch.float32).view(3, 4)
    args = cupy_ops._pointer_args((t, np.int32(3), np.float32(0.5)))
    assert type(args[0]) is np.uint64 and int(args[0]) == t.data_ptr()  # a pointer parameter's 8 bytes
    assert type(args[1]) is np.int32 and type(args[2]) is np.float32
    with pytest.raises(ValueError, match="contiguous"):  # a kernel would read a strided view wrongly
        cupy_ops._pointer_args((t.t(),))


#: Each kernel source and the kernels the wrappers in :mod:`rtseg.ops.cupy_ops` launch from it.
KERNEL_FILES = {"fast_nms.cu": {"fast_nms_keep"}, "mask_overlay.cu": {"grid_probabilities", "assemble_masks",
                                                                         "overlay_masks"}}


def test_kernel_sources_ship_with_the_package() -> None:
    assert {p.name for p in cupy_ops.KERNELS.glob("*.cu")} >= set(KERNEL_FILES)


def _nvrtc_ptx(name: str) -> str:
    """PTX of kernel source ``name`` compiled by NVRTC with the options CuPy is given (``NVRTC_OPTIONS``), for
    Hopper; AssertionError with NVRTC's log when it does not compile; skips where NVRTC is not installed (it comes
    with torch's CUDA build as ``cuda.bindings``)."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    try:
        err, prog = nvrtc.nvrtcCreateProgram((cupy_ops.KERNELS / name).read_bytes(), name.encode(), 0, [], [])
    except (RuntimeError, OSError) as exc:  # the library itself is missing
        pytest.skip(f"NVRTC not loadable: {exc}")
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        options = [o.encode() for o in (*cupy_ops.NVRTC_OPTIONS, "--gpu-architecture=compute_90")]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = bytearray(size)  # a mutable buffer: NVRTC writes into it (b" " * 1 is CPython's shared b" ")
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
        _, size = nvrtc.nvrtcGetPTXSize(prog)
        ptx = bytearray(size)
        nvrtc.nvrtcGetPTX(prog, ptx)
        return ptx.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _ptx_params(ptx: str) -> dict[str, list[str]]:
    """Each kernel entry of ``ptx`` → its parameters' PTX types in order (e.g. ``["u64", "u32", "f32"]``)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in ptx.splitlines():
        if ".entry" in line:
            current = line.split()[-1].rstrip("(")
            out[current] = []
        elif current is not None and ".param" in line:
            out[current].append(line.split()[1].lstrip("."))
        elif current is not None and line.strip().startswith(")"):
            current = None
    return out


def test_kernels_compile_with_nvrtc_and_the_wrappers_pass_their_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped kernels compile with NVRTC as CuPy compiles them and export every kernel the wrappers launch,
    and each wrapper passes exactly the parameters its kernel declares (a device pointer as 64 bits, ints as 32,
    floats as f32), as ``_launch`` hands them to CuPy. No GPU needed; the GPU tests run the kernels, the host
    emulation below checks their arithmetic."""
    params = {}
    for name, entries in KERNEL_FILES.items():
        found = _ptx_params(_nvrtc_ptx(name))
        assert set(found) == entries, found
        params.update(found)
    passed: dict[str, list[str]] = {}
    ptx_type = {np.uint64: "u64", np.int32: "u32", np.float32: "f32"}

    def record(kernel: str, grid: tuple[int, ...], args: tuple) -> None:
        passed[kernel] = [ptx_type[type(a)] for a in cupy_ops._pointer_args(args)]

    monkeypatch.setattr(cupy_ops, "_kernel", lambda source, name: name)
    monkeypatch.setattr(cupy_ops, "_launch", record)
    monkeypatch.setattr(cupy_ops, "_require_cuda", lambda *t: None)
    boxes, scores = nms_case(0, n=20)
    cupy_ops.fast_nms(boxes, scores)
    proto, coef, mboxes, mscores = mask_case(1)
    cupy_ops.assemble_masks(proto, coef, mboxes, (20, 30))
    cupy_ops.overlay_masks(torch.zeros(20, 30, 3, dtype=torch.uint8), proto, coef, mboxes, mscores,
                           torch.zeros(len(coef), 3, dtype=torch.uint8))
    assert passed == params


def test_paint_boxes_equal_annotate_boxes() -> None:
    pytest.importorskip("cv2")
    from rtseg.ops.overlay import _int_boxes

    _, _, boxes, _ = mask_case(6, n=12)
    boxes = torch.cat([boxes, torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.25, 0.75, 0.5]])])  # degenerate, exact grid
    for size in [(120, 160), (61, 47), (1, 1)]:
        px = boxes_to_pixels(boxes, *size).numpy()
        np.testing.assert_array_equal(device_overlay.paint_boxes(boxes, size).numpy(), _int_boxes(px, size))


# -- torch device overlay and the engine's device path ---------------------------------------------
def within_one_level(got: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(got.astype(int) - ref.astype(int))
    # within one level everywhere but where a mask edge pixel flips (sigmoid ulp): at most 0.1 %
    assert (diff > 1).mean() <= 1e-3, (diff > 1).mean()


@pytest.mark.parametrize("seed,size", [(10, (120, 160)), (11, (61, 47)), (12, (240, 320))])
def test_torch_overlay_equals_annotate_masks(seed: int, size) -> None:
    proto, coef, boxes, scores = mask_case(seed, n=11)
    frame = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    colors = np.random.default_rng(seed + 1).integers(0, 256, (len(coef), 3), dtype=np.uint8)
    ref = reference_overlay(frame, proto, coef, boxes, scores, colors, 0.45)
    got = device_overlay.overlay_masks(torch.from_numpy(frame), proto, coef, boxes, scores, torch.from_numpy(colors))
    assert (ref != frame).any()
    within_one_level(got.numpy(), ref)
    empty = device_overlay.overlay_masks(torch.from_numpy(frame), proto, coef[:0], boxes[:0], scores[:0],
                                         torch.from_numpy(colors[:0]))
    np.testing.assert_array_equal(empty.numpy(), frame)


def test_paint_order_is_annotates_stable_order() -> None:
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9])
    np.testing.assert_array_equal(device_overlay.paint_order(scores).numpy(),
                                  np.argsort(scores.numpy(), kind="stable"))


def tiny_engine(device: str, **kwargs):
    from rtseg.engines.yolact import YolactEngine
    from rtseg.models.yolact import YolactConfig

    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32, num_prototypes=8)
    return YolactEngine.from_config(cfg, class_names=["a", "b", "c"], score_threshold=0.0, top_k=30,
                                    device=device, **kwargs)


def check_engine_device_overlay(engine, size: tuple[int, int]) -> None:
    """annotate() through the engine's device blend equals annotate() on host masks."""
    from rtseg.ops.overlay import annotate, colors_for

    frame = np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8)
    dets = engine(frame)
    assert len(dets) > 0 and dets._blend_fn is not None
    host = dets[np.arange(len(dets))]  # same detections, masks on the host, no device blend
    assert host._blend_fn is None
    got, ref = annotate(frame, dets), annotate(frame, host)
    assert (ref != frame).any()
    within_one_level(got, ref)
    # another image of the same size is not the frame the detections came from: the host path runs
    assert dets._blend_fn(frame.copy(), colors_for(dets.class_ids), 0.45) is None


def test_engine_device_overlay_on_cpu_equals_host_path() -> None:
    check_engine_device_overlay(tiny_engine("cpu", device_overlay=True), (96, 128))


def test_engine_device_overlay_is_off_on_cpu_by_default() -> None:
    engine = tiny_engine("cpu")
    assert not engine.device_overlay
    assert engine(np.zeros((64, 64, 3), np.uint8))._blend_fn is None


# -- host emulation of the kernels ----------------------------------------------------------------
SHIM = r"""
#include <cmath>
#include <math.h>
struct rt_dim3 { unsigned x, y, z; };
static rt_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline int __float2int_rn(float v) { return (int)nearbyintf(v); }
"""
DRIVER = r"""
#define LOOP(GX, GY, T, CALL) \
  blockDim = {(unsigned)T, 1, 1}; gridDim = {(unsigned)GX, (unsigned)GY, 1}; \
  for (unsigned by = 0; by < (unsigned)GY; ++by) for (unsigned bx = 0; bx < (unsigned)GX; ++bx) \
    for (unsigned tx = 0; tx < (unsigned)T; ++tx) { blockIdx = {bx, by, 0}; threadIdx = {tx, 0, 0}; CALL; }
extern "C" void launch_fast_nms_keep(int gx, int gy, int t, const float* b, int c, int k, float thr,
                                     unsigned char* keep) { LOOP(gx, gy, t, fast_nms_keep(b, c, k, thr, keep)) }
extern "C" void launch_grid_probabilities(int gx, int gy, int t, const float* logits, const float* boxes, int h,
                                          int w, int n, int crop, float* prob) {
  LOOP(gx, gy, t, grid_probabilities(logits, boxes, h, w, n, crop, prob)) }
extern "C" void launch_assemble_masks(int gx, int gy, int t, const float* prob, int h, int w, int n,
                                      int H, int W, float sy, float sx, float thr, unsigned char* out) {
  LOOP(gx, gy, t, assemble_masks(prob, h, w, n, H, W, sy, sx, thr, out)) }
extern "C" void launch_overlay_masks(int gx, int gy, int t, const unsigned char* f, const float* prob,
                                     const float* boxes, const float* scores, const unsigned char* col, int h, int w,
                                     int n, int H, int W, float sy, float sx, float thr, float a, unsigned char* out) {
  LOOP(gx, gy, t, overlay_masks(f, prob, boxes, scores, col, h, w, n, H, W, sy, sx, thr, a, out)) }
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot emulate the CUDA kernels on the host")
    d = tmp_path_factory.mktemp("kernels")
    src = d / "emulate.cpp"
    src.write_text(SHIM + "".join(f'#include "{p}"\n' for p in sorted(cupy_ops.KERNELS.glob("*.cu"))) + DRIVER)
    lib = d / "emulate.so"
    # -ffp-contract=off mirrors NVRTC's --fmad=false
    subprocess.run([cxx, "-O1", "-std=c++14", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture
def emulated(host_kernels, monkeypatch: pytest.MonkeyPatch):
    """Run cupy_ops' wrappers on CPU tensors with the kernels executed by the host build."""

    def kernel(source: str, name: str):
        return getattr(host_kernels, f"launch_{name}")

    def launch(fn, grid, args) -> None:
        gx, gy = grid[0], grid[1] if len(grid) > 1 else 1
        conv = []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.is_contiguous()
                conv.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, np.float32):
                conv.append(ctypes.c_float(float(a)))
            else:
                conv.append(ctypes.c_int(int(a)))
        fn(ctypes.c_int(gx), ctypes.c_int(gy), ctypes.c_int(cupy_ops.THREADS), *conv)

    monkeypatch.setattr(cupy_ops, "_kernel", kernel)
    monkeypatch.setattr(cupy_ops, "_launch", launch)
    monkeypatch.setattr(cupy_ops, "_require_cuda", lambda *t: None)
    return cupy_ops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emulated_fast_nms_equals_torch(emulated, seed: int) -> None:
    boxes, scores = nms_case(seed)
    ref = fast_nms(boxes, scores, iou_threshold=0.5, top_k=200, max_detections=100)
    got = emulated.fast_nms(boxes, scores, iou_threshold=0.5, top_k=200, max_detections=100)
    assert_same_nms(got, ref)
    kept = set(ref[0].tolist())
    assert {0, 2, 3, 4} <= kept and 1 not in kept and 5 not in kept  # the adversarial pairs


def test_emulated_fast_nms_small_top_k_and_single_candidate(emulated) -> None:
    boxes, scores = nms_case(3, n=40, num_classes=2)
    assert_same_nms(emulated.fast_nms(boxes, scores, top_k=7, max_detections=5),
                    fast_nms(boxes, scores, top_k=7, max_detections=5))
    one = emulated.fast_nms(boxes[:1], scores[:, :1])
    assert one[0].tolist() == [0, 0]


@pytest.mark.parametrize("size", [(90, 120), (200, 150), (17, 33)])
def test_emulated_assemble_masks_equals_torch(emulated, size) -> None:
    proto, coef, boxes, _ = mask_case(4)
    ref = assemble_masks(proto, coef, boxes, size)
    got = emulated.assemble_masks(proto, coef, boxes, size)
    assert got.dtype == torch.bool and got.shape == ref.shape
    assert min(mask_ious(got, ref)) >= 0.999
    assert ref.any()
    nocrop = emulated.assemble_masks(proto, coef, boxes, size, crop=False)
    assert min(mask_ious(nocrop, assemble_masks(proto, coef, boxes, size, crop=False))) >= 0.999


@pytest.mark.parametrize("size", [(120, 160), (61, 47)])
def test_emulated_overlay_matches_annotate(emulated, size) -> None:
    proto, coef, boxes, scores = mask_case(5, n=9)
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    colors = np.random.default_rng(2).integers(0, 256, (len(coef), 3), dtype=np.uint8)
    ref = reference_overlay(frame, proto, coef, boxes, scores, colors, 0.45)
    got = emulated.overlay_masks(torch.from_numpy(frame), proto, coef, boxes, scores, torch.from_numpy(colors),
                                 alpha=0.45)
    diff = np.abs(got.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (ref != frame).any()  # something was painted
    assert np.array_equal(emulated.overlay_masks(torch.from_numpy(frame), proto, coef[:0], boxes[:0], scores[:0],
                                                 torch.from_numpy(colors[:0])).numpy(), frame)


# -- GPU ----------------------------------------------------------------------------------------
@pytest.fixture
def cupy_ok() -> None:
    pytest.importorskip("cupy")


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gpu_fast_nms_equals_torch(cupy_ok, seed: int) -> None:
    boxes, scores = nms_case(seed, n=2000, num_classes=80, device="cuda")
    ref = fast_nms(boxes, scores, iou_threshold=0.5, top_k=200, max_detections=100)
    got = cupy_ops.fast_nms(boxes, scores, iou_threshold=0.5, top_k=200, max_detections=100)
    assert_same_nms(got, ref)  # random float scores: no exact ties


@pytest.mark.gpu
def test_gpu_fast_nms_edge_cases(cupy_ok) -> None:
    boxes, scores = nms_case(7, n=6, num_classes=1, device="cuda")
    assert_same_nms(cupy_ops.fast_nms(boxes, scores), fast_nms(boxes, scores))
    empty = cupy_ops.fast_nms(boxes[:0], scores[:, :0])
    assert all(t.numel() == 0 for t in empty)


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (37, 53)])
def test_gpu_assemble_masks_iou(cupy_ok, size) -> None:
    proto, coef, boxes, _ = mask_case(8, n=20, h=138, w=138, k=32, device="cuda")
    ref = assemble_masks(proto, coef, boxes, size)
    got = cupy_ops.assemble_masks(proto, coef, boxes, size)
    assert got.shape == ref.shape and got.is_cuda
    assert min(mask_ious(got, ref)) >= 0.999


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(480, 640), (720, 1280)])
def test_gpu_overlay_within_one_level(cupy_ok, size) -> None:
    proto, coef, boxes, scores = mask_case(9, n=15, h=138, w=138, k=32, device="cuda")
    frame = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    colors = np.random.default_rng(2).integers(0, 256, (len(coef), 3), dtype=np.uint8)
    ref = reference_overlay(frame, proto, coef, boxes, scores, colors, 0.45)
    got = cupy_ops.overlay_masks(torch.from_numpy(frame).cuda(), proto, coef, boxes, scores,
                                 torch.from_numpy(colors).cuda(), alpha=0.45)
    assert got.is_cuda and got.dtype == torch.uint8
    diff = np.abs(got.cpu().numpy().astype(int) - ref.astype(int))
    # within one level everywhere but where a mask edge pixel flips (sigmoid ulp): at most 0.1 %
    assert (diff > 1).mean() <= 1e-3, (diff > 1).mean()
    assert (ref != frame).any()


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(480, 640), (1080, 1920)])
def test_gpu_engine_device_overlay_equals_host_path(size) -> None:
    """On CUDA the engine keeps the frame on the device by default; annotate blends there (CuPy when installed)."""
    engine = tiny_engine("cuda")
    assert engine.device_overlay
    check_engine_device_overlay(engine, size)
