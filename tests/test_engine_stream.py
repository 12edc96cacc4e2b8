"""YolactEngine.stream (one frame in flight: frame i + 1 queued before frame i's rows are awaited) and its parts,
dispatch / collect: the same detections, masks and device-overlay blends as one engine call per frame.

CPU tests run the real engine (the device overlay forced on, the torch blend); the GPU test (``@pytest.mark.gpu``)
runs the compile backend with our CUDA graphs, where frame i + 1's graph replay is queued before frame i's rows
have reached the host (page-locked copy + event)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.ops.overlay import annotate, colors_for
from rtseg.types import Detections
from tests.servers.helpers import tiny_engine


def blends_on_device(dets: Detections, frame: np.ndarray) -> bool:
    """Whether ``dets`` blend into ``frame`` through the device copy of it (not the host path's fallback)."""
    return dets._blend_fn is not None and dets._blend_fn(frame, colors_for(dets.class_ids), 0.45) is not None


def frames(sizes: list[tuple[int, int]], seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def assert_same(got: Detections, want: Detections) -> None:
    assert len(want) > 0 and len(got) == len(want)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_array_equal(got.masks, want.masks)


def test_stream_gives_what_one_call_per_frame_gives() -> None:
    engine = tiny_engine(top_k=20)
    clip = frames([(72, 96), (72, 96), (50, 64), (72, 96)])  # the frame size changes mid-stream
    streamed = list(engine.stream(iter(clip)))
    assert len(streamed) == len(clip)
    for got, frame in zip(streamed, clip):
        assert_same(got, engine(frame))


def test_stream_blends_each_frames_masks_into_that_frame() -> None:
    """With the device overlay each result keeps the device copy of its own frame, although the next frame was
    preprocessed before the result was handed out (and, here, every frame before any is annotated)."""
    engine = tiny_engine(top_k=20, device_overlay=True)
    clip = frames([(72, 96)] * 3, seed=8)
    streamed = list(engine.stream(clip))
    for got, frame in zip(streamed, clip):
        assert blends_on_device(got, frame)
        want = engine(frame)
        blended = annotate(frame, got)
        assert (blended != frame).any()
        np.testing.assert_array_equal(blended, annotate(frame, want))


def test_dispatch_then_collect_out_of_order() -> None:
    """Two batches in flight at once, collected in the opposite order: each gets its own rows and frames."""
    engine = tiny_engine(top_k=20, device_overlay=True)
    a, b = frames([(64, 80), (40, 48)], seed=11)
    first = engine.dispatch(engine.forward(engine.preprocess([a])), [a.shape[:2]])
    second = engine.dispatch(engine.forward(engine.preprocess([b])), [b.shape[:2]])
    (got_b,), (got_a,) = engine.collect(second), engine.collect(first)
    assert_same(got_a, engine(a))
    assert_same(got_b, engine(b))
    assert blends_on_device(got_a, a) and blends_on_device(got_b, b)
    np.testing.assert_array_equal(annotate(a, got_a), annotate(a, engine(a)))


def test_stream_refuses_anything_but_one_frame_per_item() -> None:
    engine = tiny_engine()
    one = frames([(32, 32)])[0]
    with pytest.raises(ConfigError, match=r"stream\(\): item 1 is a list"):
        list(engine.stream([one, [one, one]]))
    with pytest.raises(ConfigError, match="expected an H×W×3 uint8 BGR array"):
        list(engine.stream([one.astype(np.float32)]))
    assert list(engine.stream([])) == []


@pytest.mark.gpu
def test_gpu_stream_with_captured_graphs_equals_one_call_per_frame() -> None:
    """On CUDA with our CUDA graphs (compile, capture=True): frame i + 1's replay is queued before frame i's rows
    are awaited, and the results (rows copied to page-locked memory, masks, device blend) are each frame's own."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from rtseg.engines.backends import make_backend

    engine = tiny_engine(device="cuda", top_k=20)
    engine.backend = make_backend(engine.net, name="compile", device="cuda", input_size=engine.cfg.input_size,
                                  capture=True)
    clip = frames([(480, 640)] * 6, seed=21)
    for _ in range(3):  # record, then replay
        engine(clip[0])
    streamed = list(engine.stream(clip))
    for got, frame in zip(streamed, clip):
        want = engine(frame)
        assert_same(got, want)
        assert blends_on_device(got, frame)
        np.testing.assert_array_equal(annotate(frame, got), annotate(frame, want))


def test_stream_hands_out_every_result_before_a_failure() -> None:
    """Was: the frame in flight was lost when the source raised or a bad item came (2 of 3 results, then the error;
    1 of 2 before a bad item), although its result had been computed."""
    engine = tiny_engine(top_k=20)
    clip = frames([(72, 96)] * 3, seed=5)

    def camera():
        yield from clip
        raise OSError("camera gone")

    got = []
    with pytest.raises(OSError, match="camera gone"):
        got.extend(engine.stream(camera()))
    assert len(got) == 3
    for dets, frame in zip(got, clip):
        assert_same(dets, engine(frame))
    got = []
    with pytest.raises(ConfigError, match=r"^stream\(\): item 2: expected an H×W×3 uint8 BGR array, got uint8 \(3, 3\)$"):
        got.extend(engine.stream([clip[0], clip[1], np.zeros((3, 3), np.uint8)]))
    assert len(got) == 2
    assert_same(got[1], engine(clip[1]))


@pytest.mark.parametrize("bad, message", [
    (None, r"^stream\(\) takes an iterable of H×W×3 uint8 BGR frames \(a list, a generator\), got NoneType$"),
    (5, r"got int$"),
    (np.zeros((2, 32, 32, 3), np.uint8), r"^stream\(\) takes an iterable of frames, got one array uint8 \(2, 32, 32, 3\); "
                                         r"pass its frames: stream\(list\(array\)\) \(the engine, too, takes a batch "
                                         r"as a list of frames\)$"),
])
def test_stream_refuses_what_is_no_iterable_of_frames_at_the_call(bad, message) -> None:
    """Was a TypeError traceback at the first next() (None, 5), and an (N, H, W, 3) array was told to call the engine
    for a single frame (the engine, like stream(), takes a batch as a list of frames, not as one 4-D array)."""
    engine = tiny_engine()
    with pytest.raises(ConfigError, match=message):
        engine.stream(bad)
    with pytest.raises(ConfigError, match=r"^frame: expected an H×W×3 uint8 BGR array, got uint8 \(2, 32, 32, 3\)$"):
        engine(np.zeros((2, 32, 32, 3), np.uint8))
    assert len(list(engine.stream(list(np.zeros((2, 32, 32, 3), np.uint8))))) == 2
