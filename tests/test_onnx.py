"""ONNX export of the YOLACT network: checker, ONNX Runtime equals eager, dynamic batch, cache, engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rtseg.engines.backends import make_backend  # noqa: E402
from rtseg.engines.onnx_export import INPUT_NAME, OUTPUT_NAMES, OnnxBackend, providers_for  # noqa: E402
from rtseg.engines.yolact import InferenceNet, YolactEngine  # noqa: E402
from rtseg.models.yolact import Yolact, YolactConfig  # noqa: E402

TINY = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32, num_prototypes=8)
#: ORT vs eager float32: same maths, different kernels / summation order.
ATOL = 1e-4


def _close(ref: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...], atol: float = ATOL) -> None:
    assert len(ref) == len(out) == 4
    for name, r, o in zip(OUTPUT_NAMES, ref, out):
        assert r.shape == o.shape, (name, r.shape, o.shape)
        diff = float((r - o).abs().max())
        assert diff < atol, f"{name}: max |ort - eager| = {diff}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    engine = YolactEngine.from_config(TINY, class_names=["a", "b", "c"], score_threshold=0.0)
    cache = tmp_path_factory.mktemp("cache")
    backend = make_backend(engine.net, name="onnx", device="cpu", input_size=128, config=TINY, cache_dir=cache)
    return engine, backend, cache


def test_exported_graph_is_valid_and_has_a_dynamic_batch(tiny) -> None:
    _, backend, _ = tiny
    model = onnx.load(str(backend.path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == INPUT_NAME
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 128, 128]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for(torch.device("cpu"), both) == ["CPUExecutionProvider"]
    assert providers_for(torch.device("cuda"), both) == both
    assert backend.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_ort_equals_eager_at_any_batch(tiny, batch: int) -> None:
    engine, backend, _ = tiny
    x = torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch)) * 2
    with torch.inference_mode():
        ref, out = engine.net(x), backend(x)
    _close(ref, out)
    conf = out[1]
    assert torch.allclose(conf.sum(-1), torch.ones(()), atol=1e-5)  # softmax is inside the graph


def test_engine_with_onnx_backend_gives_the_same_detections(tiny, monkeypatch, tmp_path) -> None:
    engine, _, cache = tiny
    monkeypatch.setenv("RTSEG_ENGINE_CACHE", str(cache))
    torch.manual_seed(0)
    onnx_engine = YolactEngine.from_config(TINY, class_names=["a", "b", "c"], score_threshold=0.0, backend="onnx")
    assert onnx_engine.backend.name == "onnx"
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)]
    for ref, got in zip(engine(imgs), onnx_engine(imgs)):
        assert len(ref) == len(got) > 0
        np.testing.assert_array_equal(ref.class_ids, got.class_ids)
        np.testing.assert_allclose(ref.scores, got.scores, atol=1e-4)
        np.testing.assert_allclose(ref.boxes, got.boxes, atol=1e-2)
        agree = (ref.masks == got.masks).mean()
        assert agree > 0.999, agree


def test_cache_reuses_then_rebuilds_stale_entries(tiny) -> None:
    engine, backend, cache = tiny
    stamp = backend.path.stat().st_mtime_ns
    again = OnnxBackend.create(engine.net, device=torch.device("cpu"), input_size=128, config=TINY, cache_dir=cache)
    assert again.path == backend.path and backend.path.stat().st_mtime_ns == stamp  # reused, not re-exported

    # a corrupted model file is detected (digest) and re-exported
    backend.path.write_bytes(b"\x00garbage")
    rebuilt = OnnxBackend.create(engine.net, device=torch.device("cpu"), input_size=128, config=TINY, cache_dir=cache)
    assert rebuilt.path == backend.path and onnx.load(str(rebuilt.path)).graph.output
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        _close(engine.net(x), rebuilt(x))

    # other weights → another key → another entry; the old one is not used for them, nor removed (another artefact)
    net2 = InferenceNet(Yolact(TINY).eval())
    b2 = OnnxBackend.create(net2, device=torch.device("cpu"), input_size=128, config=TINY, cache_dir=cache)
    assert b2.path != backend.path and backend.path.is_file()
    with torch.inference_mode():
        _close(net2(x), b2(x))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet101"])
def test_full_size_export_at_550(backbone: str, tmp_path) -> None:
    """The published R-101 architecture at 550 (random weights; 80 classes). R-50 is the same graph with fewer
    bottleneck blocks (27 s more of the suite on a 2-core CPU for no other path)."""
    torch.manual_seed(0)
    cfg = YolactConfig(backbone=backbone)
    net = InferenceNet(Yolact(cfg).eval())
    backend = OnnxBackend.create(net, device=torch.device("cpu"), input_size=550, config=cfg, cache_dir=tmp_path,
                                 max_batch=4)
    x = torch.randn(1, 3, 550, 550)
    with torch.inference_mode():
        ref, out = net(x), backend(x)
    assert out[0].shape == (1, 19248, 4) and out[3].shape == (1, 138, 138, 32)
    _close(ref, out, atol=2e-3)
