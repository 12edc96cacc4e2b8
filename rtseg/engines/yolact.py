"""The YOLACT engine: preprocess → network → Fast NMS → lazy mask assembly.

Outputs equal the official implementation's for the same weights and frame
(pinned by tests/test_yolact_equivalence.py).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.data.coco_names import COCO_CLASSES
from rtseg.engines.backends import Backend, TorchBackend, make_backend, resolve
from rtseg.engines.base import StagedEngine, frames_as_list, host_tensor, placeholder_names
from rtseg.engines.options import (
    OptionChecks,
    check_class_names,
    check_int,
    check_option,
    check_options,
    check_real,
    check_weights_path,
    given_class_names,
    place_network,
    resolve_device,
)
from rtseg.errors import ConfigError
from rtseg.models.yolact import LIMITS, MEANS_BGR, STDS_BGR, Yolact, YolactConfig, make_priors
from rtseg.ops import cupy_ops
from rtseg.ops.boxes import boxes_to_pixels, decode
from rtseg.ops.device_overlay import blend, download
from rtseg.ops.masks import assemble_masks
from rtseg.ops.nms import cross_class_fast_nms, fast_nms, traditional_nms
from rtseg.ops.rle import encode_rle_device
from rtseg.types import Detections

#: Masks materialised per chunk when a consumer asks for full-resolution masks (bounds memory).
MASK_CHUNK = 8
NMS_KINDS = ("fast", "cross_class", "traditional")


def _check_nms(nms: Any) -> str:
    """``nms=`` when it is one of :data:`NMS_KINDS`, else ConfigError."""
    if nms not in NMS_KINDS:
        raise ConfigError(f"unknown NMS {nms!r}; choose one of {', '.join(NMS_KINDS)}")
    return nms


def _check_device_overlay(value: Any) -> bool | None:
    """``device_overlay=`` when it is True, False or None (the device's default), else ConfigError (a string such as
    "no" was taken as true)."""
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"yolact: device_overlay must be True, False or None (on for CUDA), "
                          f"got {type(value).__name__} {value!r}"[:200])
    return None if value is None else bool(value)


#: The checks of :class:`YolactEngine`'s options besides its model, class names and backend (:func:`check_options`;
#: the backend with its precision and device: :func:`check_backend`).
_OPTION_CHECKS: OptionChecks = {
    "nms": _check_nms,
    **{key: functools.partial(check_option, "yolact", key) for key in ("score_threshold", "top_k")},
    **{key: functools.partial(check_real, "yolact", key, low=0.0, high=1.0)
       for key in ("iou_threshold", "conf_threshold")},
    **{key: functools.partial(check_int, "yolact", key, low=1) for key in ("nms_top_k", "max_detections")},
    "device": resolve_device,
    "device_overlay": _check_device_overlay,
}


def check_backend(backend: str, precision: str, calibration_dir: str | None, device: torch.device) -> None:
    """ConfigError when a precision other than fp16 or calibration frames are given for a backend other than
    tensorrt, or when ``backend`` is unknown or not available on ``device`` (:func:`rtseg.engines.backends.resolve`)."""
    if (precision != "fp16" or calibration_dir is not None) and backend != "tensorrt":
        raise ConfigError(f"precision={precision!r} / calibration frames apply to the tensorrt backend only "
                          f"(got backend {backend!r}); add backend='tensorrt' (--backend tensorrt)")
    resolve(backend, device)


def _checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of :class:`YolactEngine`'s constructor but its model (``options``, defaults included) checked:
    those :data:`_OPTION_CHECKS` names, in the order of ``options``, then the backend (:func:`check_backend`)."""
    checked = check_options(_OPTION_CHECKS, options)
    check_backend(checked["backend"], checked["precision"], checked["calibration_dir"], checked["device"])
    return checked


class Candidates(NamedTuple):
    """One frame's detections before the score threshold, on the device (:meth:`YolactEngine.forward`).

    rows (M, 6) float32: x0, y0, x1, y1 (relative point form), score, class index; score descending,
    score -1 for rows that are not detections (with Fast NMS M is fixed: min(max_detections, C·nms_top_k)).
    coef (M, k): the rows' mask coefficients. proto (h, w, k): the frame's prototypes.
    """

    rows: torch.Tensor
    coef: torch.Tensor
    proto: torch.Tensor


class InFlight(NamedTuple):
    """A batch :meth:`YolactEngine.dispatch` started post-processing: its :class:`Candidates` (device), the frame
    sizes (H, W), each frame's (host frame, device copy) for the device overlay (or None), the rows of every frame
    (ΣM, 6) float32 on the host (page-locked on CUDA, still arriving until ``done``), and the CUDA event recorded
    after their copy (None off CUDA, where they are there already)."""

    cands: list[Candidates]
    sizes: list[tuple[int, int]]
    resident: list[tuple[np.ndarray, torch.Tensor] | None]
    host_rows: torch.Tensor
    done: torch.cuda.Event | None


class InferenceNet(nn.Module):
    """The exportable part: normalised (B, 3, S, S) → (loc, class probabilities, coef, proto).

    loc (B, A, 4) SSD offsets; conf (B, A, C+1) softmax probabilities (0 = background);
    coef (B, A, k); proto (B, S/4, S/4, k).
    """

    def __init__(self, model: Yolact) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out["loc"], F.softmax(out["conf"], -1), out["coef"], out["proto"]


class YolactEngine(StagedEngine):
    """Runnable YOLACT segmenter (see :class:`rtseg.engines.base.Engine`).

    score_threshold: detections with score <= it are dropped (0 keeps all Fast NMS keeps).
    top_k: at most this many detections per frame, best first.
    nms: "fast" (paper, per class), "cross_class" (Fast NMS over classes) or "traditional".
    conf_threshold / nms_top_k / max_detections / iou_threshold: the official Detect settings
    (0.05 / 200 / 100 / 0.5).
    backend: network backend (see :mod:`rtseg.engines.backends`). precision ("fp16" | "int8") and
        calibration_dir (a folder of frames for INT8 calibration): the tensorrt backend only.
    device_overlay: True, False or None (default: on for CUDA, off for CPU, where the host path is faster). On:
        :func:`rtseg.annotate` blends the masks on the device (CuPy kernel when installed), so only the finished
        frame comes back, not the masks (it uploads the image it is given, which may have been drawn on since;
        the pipeline, which never writes its frames, blends into the device copy kept at preprocessing instead), and
        masks are encoded as COCO RLE there for JSON output, so only the run boundaries come back.
        Frames go up through a pinned staging buffer on CUDA. An engine serves one thread at a time.
    """

    def __init__(self, *, model: Yolact, class_names: Sequence[str] | None = None, device: str = "cpu",
                 score_threshold: float = 0.15, top_k: int = 100, nms: str = "fast", iou_threshold: float = 0.5,
                 conf_threshold: float = 0.05, nms_top_k: int = 200, max_detections: int = 100,
                 backend: str = "eager", precision: str = "fp16", calibration_dir: str | None = None,
                 device_overlay: bool | None = None) -> None:
        checked = _checked_options({
            "nms": nms, "score_threshold": score_threshold, "iou_threshold": iou_threshold,
            "conf_threshold": conf_threshold, "top_k": top_k, "nms_top_k": nms_top_k, "max_detections": max_detections,
            "device": device, "backend": backend, "precision": precision, "calibration_dir": calibration_dir,
            "device_overlay": device_overlay})
        self.cfg: YolactConfig = model.cfg
        #: COCO category id of each class when the weights were trained on a COCO file (their manifest says), for
        #: COCO results files; None otherwise.
        self.category_ids: tuple[int, ...] | None = None
        self._dev: torch.device = checked["device"]
        if self._dev.type == "cuda":  # one input size: cuDNN's autotuner picks each conv's fastest kernel once
            torch.backends.cudnn.benchmark = True  # (as the official eval.py does)
        self.device = str(self._dev)
        names = class_names if class_names is not None else _default_names(self.cfg.num_classes)
        self.class_names: tuple[str, ...] = check_class_names("yolact", names, self.cfg.num_classes)
        self.net = place_network(InferenceNet(model), self._dev)
        self.priors = make_priors(self.cfg, self._dev)
        self.score_threshold: float = checked["score_threshold"]
        self.top_k: int = checked["top_k"]
        self.nms: str = checked["nms"]
        self.iou_threshold: float = checked["iou_threshold"]
        self.conf_threshold: float = checked["conf_threshold"]
        self.nms_top_k: int = checked["nms_top_k"]
        self.max_detections: int = checked["max_detections"]
        scale = torch.tensor(STDS_BGR) if self.cfg.normalize == "meanstd" else torch.full((3,), 255.0)
        mean = torch.tensor(MEANS_BGR) if self.cfg.normalize == "meanstd" else torch.zeros(3)
        self._mean = mean.view(1, 3, 1, 1).to(self._dev)
        self._std = scale.view(1, 3, 1, 1).to(self._dev)
        self.device_overlay: bool = (self._dev.type == "cuda" if checked["device_overlay"] is None
                                     else checked["device_overlay"])
        # Fast NMS with the keep decision in one CUDA kernel where CuPy is installed (same keep set).
        self._fast_nms = cupy_ops.fast_nms if self._dev.type == "cuda" and cupy_ops.HAVE_CUPY else fast_nms
        self.backend = make_backend(self.net, name=backend, device=self._dev, input_size=self.cfg.input_size,
                                    config=self.cfg, precision=precision, calibration_dir=calibration_dir)
        self._resident: list[tuple[np.ndarray, torch.Tensor]] = []  # (host frame, its device copy), last batch

    @classmethod
    def from_config(cls, cfg: YolactConfig, **kwargs) -> "YolactEngine":
        """An engine around a freshly initialised (untrained) network of ``cfg``."""
        return cls(model=Yolact(cfg), **kwargs)

    @classmethod
    def from_weights(cls, weights: str, *, input_size: int | None = None, **kwargs) -> "YolactEngine":
        """Load an official .pth or an rtseg .safetensors checkpoint (see :func:`rtseg.weights.load_yolact`);
        ``kwargs`` as the constructor's, checked before the weights are read (``class_names``: whether they are a
        list of strings; their number once the weights say how many classes there are, before the network is
        built)."""
        from rtseg.weights import build_yolact, read_yolact

        weights = check_weights_path("yolact", weights)
        if input_size is not None:
            low, high = LIMITS["input_size"]
            input_size = check_int("yolact", "input_size", input_size, low=low, high=high)
        given = inspect.signature(cls).bind_partial(**kwargs)
        given.apply_defaults()  # the backend's check needs the precision and device the constructor would take
        checked = _checked_options(given.arguments)
        kwargs = {key: checked[key] for key in kwargs}
        if kwargs.get("class_names") is not None:  # a generator is read once: the tuple goes on
            kwargs["class_names"] = check_class_names("yolact", kwargs["class_names"], None)
        read = read_yolact(weights, input_size=input_size)
        kwargs["class_names"] = given_class_names("yolact", kwargs.get("class_names"), read.class_names,
                                                  read.config.num_classes)
        engine = cls(model=build_yolact(read).model, **kwargs)
        engine.category_ids = read.category_ids
        return engine

    # -- stages -------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """BGR uint8 frames (H, W, 3), any sizes → (B, 3, S, S) float32 normalised RGB on the device.

        As the official FastBaseTransform: float, bilinear resize to S×S (align_corners=False,
        aspect ratio not kept), (x - mean) / std in BGR (DarkNet: x / 255), then BGR → RGB.
        """
        s = self.cfg.input_size
        batch, resident = [], []
        for img in images:
            t = self._upload(img)
            if self.device_overlay:
                resident.append((img, t))
            batch.append(F.interpolate(t.permute(2, 0, 1)[None].float(), (s, s), mode="bilinear", align_corners=False))
        self._resident = resident
        return self._normalise(torch.cat(batch))

    def preprocess_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 BGR frames of one size → (B, 3, S, S) network input, as :meth:`preprocess`.

        One copy of the whole batch to the device (non-blocking from pinned memory) and one
        resize, for training batches; frames are not kept for the device overlay.
        """
        s = self.cfg.input_size
        x = images.to(self._dev, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float BGR in 0..255 → (x - mean) / std (DarkNet: x / 255), then BGR → RGB."""
        x = (x - self._mean) / self._std
        return x[:, [2, 1, 0]].contiguous()

    def _upload(self, img: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 host frame → the same on this engine's device (:func:`upload_frame`)."""
        return upload_frame(img, self._dev)

    @property
    def backend(self) -> Backend:
        """The network backend (see :mod:`rtseg.engines.backends`); setting it rebuilds :meth:`forward`."""
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        self._backend = backend
        if isinstance(backend, TorchBackend) and backend.one_graph and self.nms == "fast":
            # A graph with fixed shapes: torch's Fast NMS keep decision (CuPy kernels are not traceable);
            # the priors stay at one address, so a CUDA graph reads them in place instead of copying them.
            torch._dynamo.mark_static_address(self.priors)
            self._forward = backend.then(functools.partial(self.detection_head, nms=fast_nms))
        else:  # the network, then the detection step (CuPy Fast NMS on CUDA; other NMS kinds wait for the device)
            self._forward = lambda x: self.detection_head(backend(x))

    @torch.inference_mode()
    def network(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network alone on a preprocessed batch → (loc, conf, coef, proto) (see :class:`InferenceNet`)."""
        return self.backend(x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> list[Candidates]:
        """All device work of a preprocessed batch (B, 3, S, S): the network and the detection step
        (:meth:`detection_head`) → one :class:`Candidates` per frame, still on the device.

        With the compile backend (or a captured one, ``capture=True``) and Fast NMS both run as one graph
        (on CUDA one CUDA graph replay per batch size), else in turn; nothing here waits for the device
        with Fast NMS.
        """
        return self._forward(x)

    def detection_head(self, raw: tuple[torch.Tensor, ...], nms: Callable[..., tuple[torch.Tensor, ...]] | None = None,
                       ) -> list[Candidates]:
        """Network outputs (loc, conf, coef, proto) of a batch → one :class:`Candidates` per frame
        (:meth:`candidates` plus the gathers of the rows' boxes and coefficients; ``nms`` as there)."""
        loc, conf, coef, proto = raw
        if loc.shape[1] != self.priors.shape[0]:
            raise RuntimeError(f"network produced {loc.shape[1]} anchors, priors have {self.priors.shape[0]}")
        out = []
        for b in range(loc.shape[0]):
            boxes, idx, classes, scores = self.candidates(loc[b], conf[b], nms)
            rows = torch.cat([boxes[idx], scores[:, None].float(), classes[:, None].float()], 1)
            out.append(Candidates(rows, coef[b][idx], proto[b]))
        return out

    @torch.inference_mode()
    def postprocess(self, cands: Sequence[Candidates], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """:meth:`forward`'s candidates + frame sizes (H, W) → one Detections per frame (masks lazy).

        Waits for the device once per batch: the rows of every frame come to the host in one copy
        (:meth:`dispatch`, then :meth:`collect`).
        """
        return self.collect(self.dispatch(cands, sizes))

    @torch.inference_mode()
    def dispatch(self, cands: Sequence[Candidates], sizes: Sequence[tuple[int, int]]) -> "InFlight":
        """Start :meth:`postprocess` without waiting: the rows of every frame start for the host (on CUDA a
        non-blocking copy into page-locked memory, with an event after it), and the device copies of the frames
        that :meth:`preprocess` kept for the device overlay go with them. :meth:`collect` finishes it, after
        the next batch may have been preprocessed and queued (:meth:`stream`)."""
        resident = [r if tuple(r[1].shape[:2]) == tuple(size) else None for r, size in zip(self._resident, sizes)]
        if len(resident) != len(cands):
            resident = [None] * len(cands)
        rows = [c.rows for c in cands]
        device_rows = (rows[0] if len(rows) == 1 else torch.cat(rows)) if rows else torch.zeros(0, 6)
        done = None
        if device_rows.is_cuda:
            host = torch.empty(device_rows.shape, dtype=device_rows.dtype, pin_memory=True)
            host.copy_(device_rows, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host = device_rows.cpu()
        return InFlight(list(cands), list(sizes), resident, host, done)

    @torch.inference_mode()
    def collect(self, batch: "InFlight") -> list[Detections]:
        """A :meth:`dispatch`-ed batch → one Detections per frame; waits only until its rows are on the host."""
        if batch.done is not None:
            batch.done.synchronize()
        starts = np.cumsum([0] + [len(c.rows) for c in batch.cands])
        return [self._detections(c, batch.host_rows[starts[b]:starts[b + 1]], batch.sizes[b], batch.resident[b])
                for b, c in enumerate(batch.cands)]

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[Detections]:
        """One Detections per frame of ``frames`` (each H×W×3 uint8 BGR), in order, with one frame in flight: frame
        i + 1 is uploaded, preprocessed and queued on the device before frame i's rows are awaited, so on CUDA the
        host's work for one frame overlaps the device's for the previous one. Each result is yielded once the next
        frame has been taken from ``frames`` (for a live source that waits for its next frame: call the engine per
        frame there). The same detections as one call per frame.

        ``frames`` that is not an iterable of frames is a ConfigError here, at the call (one array, a batch array
        (N, H, W, 3) included: as ``engine(array)``, which takes one frame). When ``frames`` raises, or an item is no
        frame (ConfigError naming the item), or a frame fails in the engine, every frame before it still gets its
        result, then the error is raised.
        """
        if isinstance(frames, np.ndarray):  # (iterating one frame gives its rows: "got uint8 (W, 3)")
            what = ("pass its frames: stream(list(array)) (the engine, too, takes a batch as a list of frames)"
                    if frames.ndim == 4 else "call the engine for a single frame: engine(frame)")
            raise ConfigError(f"stream() takes an iterable of frames, got one array {frames.dtype} {frames.shape}; "
                              f"{what}")
        if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
            raise ConfigError(f"stream() takes an iterable of H×W×3 uint8 BGR frames (a list, a generator), "
                              f"got {type(frames).__name__}")
        return self._stream(frames)

    def _stream(self, frames: Iterable[np.ndarray]) -> Iterator[Detections]:
        """:meth:`stream` once ``frames`` is known to be an iterable."""
        pending: InFlight | None = None
        try:
            for i, frame in enumerate(frames):
                image = _stream_frame(i, frame)
                queued = self.dispatch(self.forward(self.preprocess([image])), [image.shape[:2]])
                done, pending = pending, None  # (a failure while it is handed out leaves nothing pending)
                if done is not None:
                    yield self.collect(done)[0]
                pending = queued
        except Exception:  # the source, an item or the engine failed: the frame in flight first, then the error
            if pending is not None:
                yield self.collect(pending)[0]
            raise
        if pending is not None:
            yield self.collect(pending)[0]

    def candidates(self, loc: torch.Tensor, conf: torch.Tensor,
                   nms: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> tuple[torch.Tensor, ...]:
        """One frame's detections on the device, before the score threshold: loc (A, 4), conf (A, C+1)
        → (boxes (A, 4) relative point form, index (M,), class (M,), score (M,)), score descending.

        Candidates whose best class score is at most ``conf_threshold`` are dropped (official Detect)
        by a score of -1 instead of by compaction, which would wait for the device: they sort after
        every real candidate, so the keep sets are the official ones. With Fast NMS (``self.nms ==
        "fast"``) nothing here waits for the device and the shapes are fixed (M = min(max_detections,
        C·nms_top_k); rows that are not detections have score -1), so the step can be captured in a
        CUDA graph. nms: the Fast NMS to use (default: the engine's, the CuPy kernel on CUDA).
        """
        boxes = decode(loc, self.priors)
        scores = conf[:, 1:].t()
        scores = scores.masked_fill((scores.max(dim=0).values <= self.conf_threshold)[None], -1)
        if self.nms == "traditional":
            return (boxes, *traditional_nms(boxes, scores, iou_threshold=self.iou_threshold,
                                            score_threshold=self.conf_threshold, max_detections=self.max_detections))
        if self.nms == "cross_class":
            return (boxes, *cross_class_fast_nms(boxes, scores, iou_threshold=self.iou_threshold,
                                                 top_k=self.nms_top_k, max_detections=self.max_detections))
        return (boxes, *(nms or self._fast_nms)(boxes, scores, iou_threshold=self.iou_threshold, top_k=self.nms_top_k,
                                                 max_detections=self.max_detections, padded=True))

    def _detections(self, cand: Candidates, host: torch.Tensor, size: tuple[int, int],
                    resident: tuple[np.ndarray, torch.Tensor] | None) -> Detections:
        """One frame's candidates (device) and their rows on the host (M, 6) → Detections.

        The result's mask, RLE and blend functions keep what they need of the device tensors: the frame's own
        prototypes (copied out of a batch's, which would stay alive with every kept result), its detections' rows
        and coefficients, and ``resident`` (for the blend); a frame without detections keeps none.
        """
        h, w = size
        # Rows are score descending, so the detections are a prefix.
        scores = host[:, 4]
        n = min(int(torch.count_nonzero(scores > self.score_threshold if self.score_threshold > 0 else scores >= 0)),
                self.top_k)
        if n == 0:
            return Detections.empty((h, w), self.class_names)
        rel_boxes, det_coef, det_scores = cand.rows[:n, :4], cand.coef[:n], cand.rows[:n, 4]
        proto = _compact(cand.proto)
        pixels = boxes_to_pixels(host[:n, :4], h, w).numpy()

        def masks() -> np.ndarray:
            with torch.inference_mode():
                parts = [assemble_masks(proto, det_coef[i:i + MASK_CHUNK], rel_boxes[i:i + MASK_CHUNK], (h, w)).cpu().numpy()
                         for i in range(0, n, MASK_CHUNK)]
            return np.concatenate(parts)

        def rles() -> list[dict]:
            with torch.inference_mode():
                return [rle for i in range(0, n, MASK_CHUNK) for rle in encode_rle_device(
                    assemble_masks(proto, det_coef[i:i + MASK_CHUNK], rel_boxes[i:i + MASK_CHUNK], (h, w)))]

        return Detections(
            boxes=np.ascontiguousarray(pixels),
            scores=host[:n, 4].numpy().copy(),
            class_ids=host[:n, 5].numpy().astype(np.int64),
            image_size=(h, w),
            class_names=self.class_names,
            _mask_fn=masks,
            _blend_fn=(_device_blender(resident, proto, det_coef, rel_boxes, det_scores,
                                        functools.partial(upload_frame, dev=self._dev))
                       if resident else None),
            _rle_fn=rles if self.device_overlay else None,
        )

    def warmup(self) -> None:
        """One dummy frame through every stage (allocations, lazy init)."""
        self(np.zeros((self.cfg.input_size, self.cfg.input_size, 3), np.uint8)).masks


def upload_frame(img: np.ndarray, dev: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 host frame → the same on ``dev`` (CUDA: via page-locked memory, non-blocking).

    The page-locked copy comes from torch's caching host allocator, which reuses a block only after the
    copies queued from it have finished (and keeps a bounded set of size classes, whatever the frame sizes).
    The frame is copied into it by numpy on this thread: torch's own copy (``pin_memory()``) splits a 1080p
    frame over its OpenMP pool, whose idle workers then spin for milliseconds each, every frame, taking the
    cores the decoder and encoder threads need (``benchmarks/host_copy_cost.py``).
    """
    host = host_tensor(img)
    if dev.type != "cuda":
        return host.to(dev)
    staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    np.copyto(staging.numpy(), host.numpy())
    return staging.to(dev, non_blocking=True)


def _stream_frame(i: int, item: Any) -> np.ndarray:
    """Item ``i`` of :meth:`YolactEngine.stream`'s frames when it is one H×W×3 uint8 BGR frame, else ConfigError
    ``"stream(): item 2: expected an H×W×3 uint8 BGR array, got uint8 (3, 3)"`` (:func:`frames_as_list`'s check)."""
    try:
        single, images = frames_as_list(item)
    except ConfigError as exc:
        raise ConfigError(f"stream(): item {i}: {str(exc).removeprefix('frame: ')}") from None
    if not single:
        raise ConfigError(f"stream(): item {i} is a {type(item).__name__}; give one H×W×3 uint8 BGR array per frame")
    return images[0]


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` when it spans its whole storage, else a copy that does: one frame's slice of a batch's tensor would keep
    the whole batch's memory while it lives."""
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()


def _device_blender(resident: tuple[np.ndarray, torch.Tensor], proto: torch.Tensor, coef: torch.Tensor,
                    boxes: torch.Tensor, scores: torch.Tensor, upload: Callable[[np.ndarray], torch.Tensor],
                    ) -> Callable[..., np.ndarray | None]:
    """A ``Detections`` blend function ``blend_fn(image, colors, alpha, *, inferred=False)``: the masks blended into
    ``image`` on the device (:func:`rtseg.ops.device_overlay.blend`), the (H, W, 3) uint8 result on the host; None
    when ``image`` is not the host frame the detections came from (:func:`rtseg.annotate` then blends on the host).

    The caller may have drawn on ``image`` since the inference, so it goes up again (``upload``: (H, W, 3) uint8 host
    → device), unless ``inferred``: the caller vouches that ``image`` is unchanged since it was inferred on (the
    pipeline, which owns its frames: :func:`rtseg.ops.overlay._annotate_inferred`), and the device copy the engine
    kept at preprocessing is blended into, with no upload.

    resident: (host frame, its (H, W, 3) uint8 device copy); proto (h, w, k), coef (n, k), boxes (n, 4)
    relative, scores (n,) of the kept detections, all on the device.
    """
    host_frame, kept = resident

    def blend_fn(image: np.ndarray, colors: np.ndarray, alpha: float, *, inferred: bool = False) -> np.ndarray | None:
        if image is not host_frame:
            return None
        with torch.inference_mode():
            frame = kept if inferred else upload(image)
            out = blend(frame, proto, coef, boxes, scores, torch.from_numpy(colors).to(frame.device), alpha=alpha)
            return download(out)

    return blend_fn


def _default_names(n: int) -> tuple[str, ...]:
    return tuple(COCO_CLASSES) if n == len(COCO_CLASSES) else tuple(placeholder_names(n))
