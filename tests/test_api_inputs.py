"""The Python API with ugly inputs: one clear error for bad ones, results for odd-but-valid ones."""
from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import rtseg
from rtseg.engines.options import resolve_device
from rtseg.errors import ConfigError, WeightsError
from rtseg.types import Detections

DEMO = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")


@pytest.fixture(scope="module")
def engine():
    return rtseg.load("yolact", weights=DEMO)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    from rtseg.data.synthetic import SyntheticScene

    return SyntheticScene(3, width=320, height=240, num_frames=10).frame(4)[0]


@pytest.mark.parametrize("bad, message", [
    (None, "got NoneType"),
    ("frame.jpg", "got str"),
    (np.zeros((0, 0, 3), np.uint8), "empty image"),
    (np.zeros((0, 10, 3), np.uint8), "empty image"),
    (np.zeros((24, 32, 3), np.float32), "got float32"),
])
def test_bad_frames_are_one_line_config_errors(engine, bad, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        engine(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("wrap, message", [
    (torch.from_numpy, r"got a torch.uint8 tensor of shape \(240, 320, 3\); pass a numpy array instead, "
                       r"e.g. tensor.cpu\(\).numpy\(\)"),
    (lambda f: torch.from_numpy(np.stack([f, f])), r"got a torch.uint8 tensor of shape \(2, 240, 320, 3\)"),
    (np.ndarray.tolist, r"got nested lists of numbers; pass a numpy array instead, e.g. np.asarray\(frame"),
])
def test_a_tensor_or_nested_lists_is_named_as_such_not_as_a_bad_batch(engine, frame, wrap, message) -> None:
    """Were "frame 0 of the batch: ... got Tensor" / "got list": one H×W×3 frame read as a batch of its rows."""
    with pytest.raises(ConfigError, match=r"^expected an H×W×3 uint8 BGR numpy array or a sequence of them, "
                                          + message) as err:
        engine(wrap(frame))
    assert "of the batch" not in str(err.value)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(240, 320, 3, dtype=torch.uint8), r"got a torch.uint8 tensor of shape \(240, 320, 3\); pass a numpy"),
    (np.zeros((24, 32, 3), np.uint8).tolist(), "got nested lists of numbers; pass a numpy array"),
    (np.zeros((24, 32, 3), np.float32), r"got float32 \(24, 32, 3\)"),
    ("frame.png", "got str"),
])
def test_a_bad_item_of_a_real_batch_is_named_by_its_index(engine, frame, bad, message) -> None:
    with pytest.raises(ConfigError, match=r"^frame 1 of the batch: expected an H×W×3 uint8 BGR array, " + message):
        engine([frame, bad])


def test_odd_but_valid_frames_just_work(engine, frame) -> None:
    ro = frame.copy()
    ro.setflags(write=False)
    ref = engine(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only frame must not make torch warn
        got = engine(ro)
    assert np.array_equal(got.boxes, ref.boxes)
    flipped = engine(frame[:, ::-1])  # a non-contiguous view
    assert np.array_equal(flipped.boxes, engine(np.ascontiguousarray(frame[:, ::-1])).boxes)
    assert len(engine(np.zeros((1, 1, 3), np.uint8)).boxes) >= 0
    assert [len(d) for d in engine((frame,))] == [len(ref)]  # a tuple of frames is a batch
    assert len(engine(iter([frame, frame]))) == 2  # and so is any other iterable of frames


@pytest.mark.parametrize("options, message", [
    ({"score_threshold": "0.3"}, "score_threshold must be a number in \\[0, 1\\]"),
    ({"iou_threshold": 2.0}, "iou_threshold must be a number in \\[0, 1\\]"),
    ({"top_k": 2.5}, "top_k must be an integer >= 1"),
    ({"top_k": None}, "top_k must be an integer >= 1"),
    ({"nms_top_k": 0}, "nms_top_k must be an integer >= 1"),
    ({"max_detections": True}, "max_detections must be an integer >= 1"),
])
def test_bad_engine_options_are_config_errors(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        rtseg.load("yolact", weights=DEMO, **options)


def test_weights_path_mistakes_name_the_fix(tmp_path) -> None:
    with pytest.raises(WeightsError, match="is a folder"):
        rtseg.load("yolact", weights=str(tmp_path))
    with pytest.raises(WeightsError, match="is the manifest; pass the weights beside it"):
        rtseg.load("yolact", weights=DEMO.replace(".safetensors", ".json"))
    with pytest.raises(ConfigError, match="instances= must be an engine or a \\(name, weights\\) pair"):
        rtseg.load("panoptic", instances="path.safetensors", semantic="fcn.safetensors")


def _dets(boxes, size=(240, 320)) -> Detections:
    n = len(boxes)
    return Detections(boxes=np.asarray(boxes, np.float32).reshape(n, 4), scores=np.linspace(0.9, 0.5, n).astype(np.float32),
                      class_ids=np.zeros(n, np.int64), image_size=size, class_names=["a"],
                      _masks=np.ones((n, *size), bool))


def test_annotate_survives_degenerate_boxes(frame) -> None:
    for boxes in ([[400, 300, 500, 400]], [[50, 50, 10, 10]], [[-1e12, -1e12, 1e12, 1e12]], [[-20, -20, -5, -5]]):
        out = rtseg.annotate(frame, _dets(boxes))
        assert out.shape == frame.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="must be finite"):
        _dets([[np.nan, 0, 10, 10]])
    with pytest.raises(ConfigError, match="hud must be a mapping"):
        rtseg.annotate(frame, _dets([[1, 1, 5, 5]]), hud=["FPS", 3])
    assert rtseg.annotate(np.zeros((0, 0, 3), np.uint8), _dets([], size=(0, 0)), hud={"FPS": 1.0}).shape == (0, 0, 3)


def test_detections_integer_index_is_a_detections_of_one(engine, frame) -> None:
    dets = engine(frame)
    assert len(dets) >= 2
    one = dets[1]
    assert isinstance(one, Detections) and len(one) == 1 and np.array_equal(one.boxes[0], dets.boxes[1])
    assert np.array_equal(dets[np.int64(0)].masks[0], dets.masks[0])


@pytest.mark.parametrize("device, message", [
    ("mps", "unknown device 'mps'; use cpu, cuda or cuda:N"),  # mps / xpu / meta passed and crashed later
    ("xpu", "unknown device 'xpu'"),
    ("meta", "unknown device 'meta'"),
    ("gpu", "unknown device 'gpu'"),
    ("cpu:1", "there is one CPU device; use cpu"),
    (0, "device must be a string such as 'cpu' or 'cuda:0', got int"),
])
def test_resolve_device_accepts_cpu_and_cuda_only(device, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_device(device)
    assert resolve_device("cpu:0").type == "cpu"


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch) -> None:
    """A one-GPU machine, mocked: the check is host-side and this machine may have no GPU (see the GPU test)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="cuda:7 requested but this machine has 1 CUDA device\\(s\\)"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.gpu
def test_odd_frames_go_up_to_the_gpu_as_they_are(engine, frame) -> None:
    """The CUDA upload (numpy copy into page-locked memory, non-blocking copy up): read-only, non-contiguous
    and 1-pixel frames reach the device unchanged, also when many uploads are queued before any is read."""
    cuda = rtseg.load("yolact", weights=DEMO, device="cuda")
    ro = frame.copy()
    ro.setflags(write=False)
    frames = [ro, frame[:, ::-1], frame[::2, ::3], np.full((1, 1, 3), 7, np.uint8)] * 4
    uploads = [cuda._upload(f) for f in frames]
    for f, up in zip(frames, uploads):
        assert up.is_cuda and np.array_equal(up.cpu().numpy(), f)
    got = cuda.preprocess([frame, frame[:, ::-1]]).cpu()
    want = engine.preprocess([frame, frame[:, ::-1]])
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.gpu
def test_cuda_index_beyond_the_devices_is_refused_on_a_gpu() -> None:
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"cuda:{n} requested but this machine has {n} CUDA device"):
        rtseg.load("slic", device=f"cuda:{n}")


@pytest.fixture(scope="module")
def fcn_weights(tmp_path_factory) -> str:
    from rtseg.engines.fcn import FcnEngine, save_fcn
    from rtseg.models.fcn import FcnConfig

    engine = FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=3, width=0.0625))
    return str(save_fcn(tmp_path_factory.mktemp("fcn") / "fcn.safetensors", engine.model, engine.class_names))


def test_every_engine_checks_its_device(fcn_weights) -> None:
    yolact = rtseg.load("yolact", weights=DEMO)
    for name, weights, options in [("yolact", DEMO, {}), ("fcn", fcn_weights, {}), ("slic", None, {"backend": "torch"}),
                                   ("panoptic", None, {"instances": yolact, "semantic": fcn_weights})]:
        with pytest.raises(ConfigError, match="unknown device 'mps'"):
            rtseg.load(name, weights, device="mps", **options)
    assert rtseg.load("fcn", fcn_weights, device="cpu:0").device == "cpu:0"


def test_class_names_must_be_a_list_of_strings(fcn_weights) -> None:
    """One string was split into characters: "square" named the demo model's six classes s, q, u, a, r, e; a
    number was a TypeError traceback."""
    for name, weights, given in [("yolact", DEMO, "square"), ("fcn", fcn_weights, "cat"), ("fcn", fcn_weights, 3),
                                 ("yolact", DEMO, [1, 2, 3, 4, 5, 6])]:
        with pytest.raises(ConfigError, match=f"^{name}: class_names must be a list of class names \\(strings\\), "
                                              f"got {type(given).__name__} "):
            rtseg.load(name, weights, class_names=given)
    with pytest.raises(ConfigError, match="^yolact: 2 class names for a model with 6 classes$"):
        rtseg.load("yolact", DEMO, class_names=("a", "b"))
    assert rtseg.load("fcn", fcn_weights, class_names=(n for n in ("bg", "x", "y"))).class_names == ("bg", "x", "y")
    # None is "not given": the weights' own names (it gave class0, class1 …)
    assert rtseg.load("yolact", DEMO, class_names=None).class_names == rtseg.load("yolact", DEMO).class_names
    assert rtseg.load("fcn", fcn_weights, class_names=None).class_names == rtseg.load("fcn", fcn_weights).class_names


def test_load_with_wrong_typed_arguments_is_one_line() -> None:
    """Each was a TypeError traceback."""
    for name in ("yolact", "fcn", "msrcnn"):
        with pytest.raises(WeightsError, match=f"^{name}: weights must be a file path \\(str or pathlib.Path\\), got int 123"):
            rtseg.load(name, 123)
    with pytest.raises(ConfigError, match="yolact: input_size must be an integer in \\[32, 2048\\], got 'a'"):
        rtseg.load("yolact", DEMO, input_size="a")
    assert rtseg.load("yolact", Path(DEMO)).cfg.input_size >= 32  # a pathlib.Path is a path


def test_annotate_and_stream_misuse_are_one_line_config_errors(engine, frame) -> None:
    """Was: annotate raised ValueError / TypeError for a grey image or None as the prediction (while its alpha and
    the engines raise ConfigError, the one-line RtsegError a caller catches), and ``stream(frame)`` of one frame
    iterated its rows: "frame: expected an H×W×3 uint8 BGR array, got uint8 (W, 3)"."""
    dets = engine(frame)
    cases = [((frame[:, :, 0], dets), r"^annotate: expected an \(H, W, 3\) uint8 BGR numpy image, got ndarray"),
             ((frame, None), r"^annotate: expected Detections, SemanticMap, Superpixels or Panoptic \(an engine's "
                             r"result\), got NoneType$")]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message):
            rtseg.annotate(*args)
    with pytest.raises(ConfigError, match=r"^stream\(\) takes an iterable of frames, got one array uint8 "
                                          r"\(\d+, \d+, 3\); call the engine for a single frame: engine\(frame\)$"):
        next(engine.stream(frame))


def test_annotate_draws_the_image_it_is_given_with_the_device_overlay(frame) -> None:
    """Was: with the device overlay the masks were blended into the device copy made at inference, so what the caller
    drew on the frame since was lost (on the CPU for a non-contiguous frame, which preprocessing copies; on CUDA for
    every frame). The pipeline, which never writes its frames, still blends into that copy: no second upload."""
    from rtseg.ops.overlay import _annotate_inferred

    seg = rtseg.load("yolact", DEMO, device_overlay=True)
    f = frame.copy()[:, ::-1]
    dets = seg(f)
    as_inferred = _annotate_inferred(f, dets)
    assert len(dets) > 0 and (as_inferred != f).any()
    f[:20] = 255
    host = dets[np.arange(len(dets))]  # the same detections with host masks: no device blend
    assert host._blend_fn is None
    want, got = rtseg.annotate(f, host), rtseg.annotate(f, dets)
    assert (want[5, 100:200] == 255).all()
    assert np.abs(got.astype(np.int16) - want).max() <= 1  # (torch vs OpenCV rounding)
    assert (_annotate_inferred(f, dets)[:20] == as_inferred[:20]).all()  # the kept device copy, as inferred


def _closure_tensors(dets: Detections) -> list[torch.Tensor]:
    """The tensors the result's mask / blend / RLE functions hold (their closures' cells, one tuple level deep)."""
    found = []
    for fn in (dets._mask_fn, dets._blend_fn, dets._rle_fn):
        for cell in getattr(fn, "__closure__", None) or ():
            value = cell.cell_contents
            found += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.Tensor)]
    return found


def test_results_keep_no_more_device_memory_than_their_own(engine, frame) -> None:
    """Was: a result with no detections kept the frame's prototypes (~1.8 MiB each: 300 kept results grew the process
    by 540 MiB), and each result of a batch kept the prototypes of the whole batch."""
    empty = engine(np.zeros((48, 64, 3), np.uint8))
    assert len(empty) == 0 and _closure_tensors(empty) == []
    assert empty.masks.shape == (0, 48, 64) and empty.rles() == []
    results = engine([frame, frame[:, ::-1]])
    for dets in results:
        protos = [t for t in _closure_tensors(dets) if t.ndim == 3]
        assert len(dets) > 0 and protos
        assert all(t.untyped_storage().nbytes() == t.nbytes for t in protos)
    np.testing.assert_array_equal(results[1].masks, engine(frame[:, ::-1]).masks)


def test_a_kept_result_does_not_keep_its_engine(frame) -> None:
    """The device blend function held the engine (its bound upload method): a kept result kept the network, its
    CUDA graphs and priors on the device after the engine was dropped."""
    seg = rtseg.load("yolact", DEMO, device_overlay=True)
    dets = seg(frame)
    assert len(dets) > 0 and dets._blend_fn is not None
    alive = weakref.ref(seg)
    del seg
    gc.collect()
    assert alive() is None
    assert rtseg.annotate(frame, dets).shape == frame.shape  # (the result still blends)


def test_device_overlay_is_true_false_or_none() -> None:
    """Was bool(device_overlay): "no" and "false" turned it on."""
    for bad in ("no", "false", 1):
        with pytest.raises(ConfigError, match=f"^yolact: device_overlay must be True, False or None \\(on for CUDA\\), "
                                              f"got {type(bad).__name__} {bad!r}$"):
            rtseg.load("yolact", DEMO, device_overlay=bad)
    assert rtseg.load("yolact", DEMO, device_overlay=False).device_overlay is False
    default = rtseg.load("yolact", DEMO, device_overlay=None)
    assert default.device_overlay is (default._dev.type == "cuda")


def test_yolact_class_names_are_a_tuple_no_result_can_change(engine, frame) -> None:
    """Was a list shared with every Detections: ``dets.class_names.append("x")`` renamed the engine's classes."""
    dets = engine(frame)
    assert isinstance(engine.class_names, tuple) and dets.class_names == engine.class_names
    with pytest.raises(AttributeError):
        dets.class_names.append("x")
