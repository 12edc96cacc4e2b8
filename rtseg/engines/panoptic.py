"""Panoptic fusion: instances (YOLACT or MS R-CNN) + stuff classes of a semantic engine (FCN).

:func:`fuse_panoptic` is the heuristic of Kirillov et al. (panoptic FPN / the
COCO panoptic baseline): paste instances best first, skipping one whose mask is
mostly covered already (``overlap_threshold``) and keeping only its uncovered
part; then fill the still-empty pixels with each stuff class of the semantic
map whose remaining area reaches ``stuff_min_area``. Everything else is void (0).

:func:`write_panoptic` writes panopticapi's prediction format: a PNG per frame
with id = R + 256 G + 256² B and one JSON with ``segments_info`` per frame.
"""
from __future__ import annotations

import functools
import json
import numbers
import reprlib
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from rtseg.engines import INSTANCE_ENGINES
from rtseg.engines.base import Engine, frames_as_list
from rtseg.engines.fcn import FcnEngine
from rtseg.engines.options import OptionChecks, check_int, check_option, check_options, check_real, resolve_device
from rtseg.engines.slic import SlicEngine
from rtseg.engines.yolact import check_backend
from rtseg.errors import ConfigError, SinkError
from rtseg.imageio import imread, imwrite
from rtseg.manifest import FCN_FORMAT, peek_manifest
from rtseg.types import Detections, Panoptic, SemanticMap


def fuse_panoptic(dets: Detections, semantic: SemanticMap, *, thing_category: np.ndarray,
                  stuff_categories: Sequence[int], overlap_threshold: float = 0.5, stuff_min_area: int = 64,
                  score_threshold: float = 0.3, class_names: Sequence[str] | None = None) -> Panoptic:
    """Fuse one frame's instances and semantic map.

    thing_category: (num instance classes,) int64 panoptic category of each instance class id.
    stuff_categories: semantic labels that are stuff (their label is their category id).
    Instances are ordered by ``mask_scores`` when present (MS R-CNN), else ``scores``;
    those below ``score_threshold`` are dropped. Segment ids count from 1 in paste order.
    class_names: names of the categories (default: the semantic map's).
    Returns Panoptic with those class names; instance segments carry "score".
    """
    if tuple(dets.image_size) != semantic.labels.shape:
        raise ValueError(f"fuse_panoptic: detections {dets.image_size} and semantic map {semantic.labels.shape} differ")
    ids = np.zeros(semantic.labels.shape, np.int64)
    segments: list[dict[str, Any]] = []
    quality = dets.mask_scores if dets.mask_scores is not None else dets.scores
    keep = np.flatnonzero(quality >= score_threshold)
    if len(keep):
        masks = dets.masks
        for i in keep[np.argsort(-quality[keep], kind="stable")]:
            mask = masks[i]
            area = int(mask.sum())
            if area == 0:
                continue
            free = mask & (ids == 0)
            if 1.0 - free.sum() / area > overlap_threshold or not free.any():
                continue
            ids[free] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": int(thing_category[dets.class_ids[i]]),
                             "isthing": True, "area": int(free.sum()), "score": float(quality[i])})
    empty = ids == 0
    for c in stuff_categories:
        region = empty & (semantic.labels == c)
        area = int(region.sum())
        if area < max(stuff_min_area, 1):
            continue
        ids[region] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(c), "isthing": False, "area": area})
    return Panoptic(ids=ids, segments=segments,
                    class_names=semantic.class_names if class_names is None else tuple(class_names))


# -- panopticapi format --------------------------------------------------------------------
def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) int64 segment ids -> (H, W, 3) uint8 RGB with id = R + 256 G + 256² B."""
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("id_to_rgb: segment ids must be in [0, 2^24)")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 ids (inverse of :func:`id_to_rgb`)."""
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _image_ids(image_ids: Sequence[int] | None, count: int) -> list[int]:
    """The image ids of :func:`write_panoptic`'s ``count`` predictions as ints: ``image_ids`` checked, or 0 … count-1
    when None. ConfigError when their number is not ``count``, one is not an integer >= 0 or one repeats."""
    if image_ids is None:
        return list(range(count))
    ids = list(image_ids)
    if len(ids) != count:
        raise ConfigError(f"write_panoptic: {len(ids)} image_ids for {count} predictions; give one id per prediction")
    for i, v in enumerate(ids):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ConfigError(f"write_panoptic: image_ids[{i}] is {reprlib.repr(v)}; COCO image ids are integers >= 0 "
                             f"(the PNG is named after the id)")
    ints = [int(v) for v in ids]
    seen: set[int] = set()
    for v in ints:
        if v in seen:
            raise ConfigError(f"write_panoptic: image id {v} is given twice; its PNG would be written over")
        seen.add(v)
    return ints


def write_panoptic(folder: str | Path, predictions: Iterable[Panoptic], *, image_ids: Sequence[int] | None = None,
                   json_name: str = "panoptic.json") -> Path:
    """Write panopticapi predictions: ``folder/<image_id>.png`` and ``folder/<json_name>``; returns the JSON path.

    JSON: {"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd",
    "bbox" (x, y, w, h), "area"}]}], "categories": [{"id", "name", "isthing"}]}.
    Category ids, in ``segments_info`` and ``categories`` alike, are the segments' ``category_id``: the 0-based
    index into the predictions' ``class_names`` (a :class:`PanopticEngine`'s categories: the FCN's classes, then
    the instance classes it lacks; 0 is a category, e.g. "background", not void), which every prediction must share
    (ConfigError otherwise); ``categories`` lists those the segments use, with that name. They are not the ids of a
    COCO panoptic ground truth: map them by name before scoring against one (panopticapi's ``pq_compute``).
    image_ids: one distinct integer >= 0 per prediction (COCO image ids: the PNG is named after the id in 12
    digits); default 0, 1, 2 … ConfigError (one line) otherwise, before anything is written.
    """
    predictions = list(predictions)
    ids_list = _image_ids(image_ids, len(predictions))
    for k, pan in enumerate(predictions):
        if tuple(pan.class_names) != tuple(predictions[0].class_names):
            raise ConfigError(f"write_panoptic: predictions[{k}] has other class_names than predictions[0]; category "
                              "ids index the class names, so write the predictions of one engine to one file")
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SinkError(f"panoptic writer: cannot create folder {out} ({e.strerror}); pick a writable path") from None
    annotations, categories = [], {}
    for image_id, pan in zip(ids_list, predictions):
        name = f"{image_id:012d}.png"
        if not imwrite(out / name, id_to_rgb(pan.ids)[..., ::-1]):
            raise SinkError(f"panoptic writer: cannot write {out / name}; check the folder's permissions")
        infos = []
        for s in pan.segments:
            mask = pan.ids == s["id"]
            if not mask.any():
                continue
            infos.append({"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                          "bbox": _bbox(mask), "area": int(mask.sum())})
            cid = int(s["category_id"])
            names = pan.class_names
            categories[cid] = {"id": cid, "name": names[cid] if cid < len(names) else str(cid),
                               "isthing": int(bool(s.get("isthing", True)))}
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": infos})
    path = out / json_name
    path.write_text(json.dumps({"annotations": annotations, "categories": sorted(categories.values(),
                                                                                  key=lambda c: c["id"])}),
                    encoding="utf-8")
    return path


def read_panoptic(json_path: str | Path) -> list[Panoptic]:
    """Read back what :func:`write_panoptic` wrote (PNG beside the JSON)."""
    p = Path(json_path)
    data = json.loads(p.read_text(encoding="utf-8"))
    cats = {c["id"]: c for c in data["categories"]}
    names = [cats[i]["name"] if i in cats else str(i) for i in range(max(cats, default=-1) + 1)]
    out = []
    for ann in data["annotations"]:
        bgr = imread(p.parent / ann["file_name"])
        if bgr is None:
            raise SinkError(f"{p}: its PNG {ann['file_name']} is missing or unreadable")
        rgb = bgr[..., ::-1]
        segs = [{"id": s["id"], "category_id": s["category_id"], "isthing": bool(cats[s["category_id"]]["isthing"]),
                 "area": s["area"]} for s in ann["segments_info"]]
        out.append(Panoptic(ids=rgb_to_id(rgb), segments=segs, class_names=names))
    return out


# -- engine --------------------------------------------------------------------------------
def _check_instances(instances: Any) -> None:
    """ConfigError unless ``instances`` is an engine producing Detections (not FCN, SLIC or panoptic)."""
    if isinstance(instances, (FcnEngine, SlicEngine, PanopticEngine)) or not isinstance(instances, Engine):
        raise ConfigError(f"panoptic: instances= must be an engine producing Detections (yolact, msrcnn) or a "
                          f"(name, weights) pair such as (\"yolact\", PATH), got {type(instances).__name__}")


def _check_given_engines(instances: Any, semantic: Any) -> None:
    """ConfigError unless ``instances`` is an engine producing Detections or a (name, weights) pair of one
    (:data:`rtseg.engines.INSTANCE_ENGINES`), and ``semantic`` an FCN engine or a path (of FCN weights): what
    :meth:`PanopticEngine.from_weights` takes, checked before it loads either."""
    if isinstance(instances, (tuple, list)):
        name, path = (instances[0], instances[1]) if len(instances) == 2 else (None, None)
        if name not in INSTANCE_ENGINES or not isinstance(path, (str, PathLike)):
            raise ConfigError(f"panoptic: instances={reprlib.repr(instances)} is not a (name, weights) pair with "
                              f"name one of {', '.join(INSTANCE_ENGINES)} and a weights path")
    elif isinstance(instances, (str, PathLike)):
        raise ConfigError(f"panoptic: instances= must be an engine or a (name, weights) pair such as "
                          f"(\"yolact\", PATH), got {type(instances).__name__}")
    else:
        _check_instances(instances)
    if not isinstance(semantic, (str, PathLike)):
        _check_semantic(semantic)


#: YOLACT's backend options as :meth:`PanopticEngine.from_weights` takes them, and their defaults.
_BACKEND_DEFAULTS = {"backend": "eager", "precision": "fp16", "calibration_dir": None}


def _check_instance_backend(instances: Any, given: Mapping[str, Any], device: torch.device) -> None:
    """ConfigError unless the backend options ``given`` (:data:`_BACKEND_DEFAULTS`' names: YOLACT's) apply to
    ``instances``: a ``("yolact", PATH)`` pair takes any YOLACT takes (checked as YOLACT checks them, before either
    engine loads: :func:`rtseg.engines.yolact.check_backend`); other instances only the defaults (eager): MS R-CNN
    has no other backend, and an engine given as an object was made with its own."""
    changed = [f"{name}={value!r}" for name, value in given.items() if value != _BACKEND_DEFAULTS[name]]
    if not changed:
        return
    if isinstance(instances, (tuple, list)) and instances[0] == "yolact":
        check_backend(device=device, **given)
        return
    if isinstance(instances, (tuple, list)):
        raise ConfigError(f"panoptic: {changed[0]} is for yolact instances only; {instances[0]} runs eager: leave it "
                          f"out or give yolact weights")
    raise ConfigError(f"panoptic: {changed[0]} is for instances=(\"yolact\", PATH) only; an instances engine given "
                      f"as an object runs the backend it was loaded with")


def _check_semantic(semantic: Any) -> None:
    """ConfigError unless ``semantic`` is an :class:`FcnEngine`."""
    if not isinstance(semantic, FcnEngine):
        raise ConfigError(f"panoptic: semantic= must be an FCN engine or an FCN weights path, "
                          f"got {type(semantic).__name__}")


def _names(stuff_classes: Any) -> list[str]:
    """Stuff class names: one str is one name; else a sequence of str (ConfigError otherwise)."""
    if isinstance(stuff_classes, str):
        return [stuff_classes]
    if isinstance(stuff_classes, Sequence) and all(isinstance(n, str) for n in stuff_classes):
        return list(stuff_classes)
    raise ConfigError(f"panoptic: stuff_classes must be a class name or a list of class names, got {stuff_classes!r}"[:200])


def _stuff_categories(stuff: list[str], sem_names: list[str]) -> list[int]:
    """The semantic label of each stuff class name; ConfigError naming those that are not in ``sem_names``."""
    unknown = [n for n in stuff if n not in sem_names]
    if unknown:
        raise ConfigError(f"panoptic: stuff classes {unknown[:5]} are not semantic classes; choose from {sem_names}")
    return [sem_names.index(n) for n in stuff]


def _semantic_names(semantic: FcnEngine | str | PathLike) -> list[str] | None:
    """The class names of ``semantic``: an FCN engine's, or those the manifest of the FCN weights at that path
    lists, before the weights are read (None where there is no FCN manifest listing names: the FCN's loader then
    says what is wrong with it)."""
    if isinstance(semantic, FcnEngine):
        return list(semantic.class_names)
    manifest = peek_manifest(semantic) or {}
    names = manifest.get("class_names")
    listed = manifest.get("format") == FCN_FORMAT and isinstance(names, list) and all(isinstance(n, str) for n in names)
    return names if listed else None


#: The checks of :class:`PanopticEngine`'s options besides its engines (:func:`check_options`).
_OPTION_CHECKS: OptionChecks = {
    "overlap_threshold": functools.partial(check_real, "panoptic", "overlap_threshold", low=0.0, high=1.0),
    "score_threshold": functools.partial(check_option, "panoptic", "score_threshold"),
    "stuff_min_area": functools.partial(check_int, "panoptic", "stuff_min_area", low=0),
    "stuff_classes": lambda stuff: None if stuff is None else _names(stuff),
}


class PanopticEngine:
    """Instance engine + semantic engine → ``Panoptic`` (see :class:`rtseg.engines.base.Engine`).

    instances: an engine producing ``Detections`` (YOLACT, MS R-CNN or your own); semantic: an
    :class:`FcnEngine`. Categories are the semantic engine's classes (category id = semantic label),
    then the instance classes the semantic engine does not know (a stuff-only FCN with a things
    detector, as in panoptic FPN); each instance class maps to the category of the same name.
    stuff_classes: semantic class names (one name may be given as a str) that are stuff; default:
    the semantic classes no instance class names. Thresholds as :func:`fuse_panoptic`.
    """

    def __init__(self, *, instances: Engine, semantic: FcnEngine, stuff_classes: Sequence[str] | str | None = None,
                 overlap_threshold: float = 0.5, stuff_min_area: int = 64, score_threshold: float = 0.3) -> None:
        _check_instances(instances)
        _check_semantic(semantic)
        checked = check_options(_OPTION_CHECKS, {
            "overlap_threshold": overlap_threshold, "score_threshold": score_threshold,
            "stuff_min_area": stuff_min_area, "stuff_classes": stuff_classes})
        self.overlap_threshold: float = checked["overlap_threshold"]
        self.score_threshold: float = checked["score_threshold"]
        self.stuff_min_area: int = checked["stuff_min_area"]
        sem_names = list(semantic.class_names)
        names = sem_names + [n for n in dict.fromkeys(instances.class_names) if n not in sem_names]
        self.thing_category = np.array([names.index(n) for n in instances.class_names], np.int64)
        stuff = checked["stuff_classes"]
        self.stuff_categories = _stuff_categories([n for n in sem_names if n not in instances.class_names]
                                                  if stuff is None else stuff, sem_names)
        self.instances, self.semantic = instances, semantic
        self.class_names = tuple(names)
        self.device = semantic.device

    @property
    def backend(self) -> Any:
        """The network backend of the instance engine (``.name``: eager, onnx …; see
        :mod:`rtseg.engines.backends`); None for one without (MS R-CNN). The semantic engine (FCN) runs eager."""
        return getattr(self.instances, "backend", None)

    @classmethod
    def from_weights(cls, weights: str | None = None, *, device: str = "cpu", instances: Any = None,
                     semantic: Any = None, backend: str = "eager", precision: str = "fp16",
                     calibration_dir: str | None = None, **options: Any) -> "PanopticEngine":
        """``rtseg.load("panoptic", instances=engine_or_(name, weights), semantic=engine_or_weights)``; every
        option (the constructor's) is checked before either engine loads (``stuff_classes`` against the classes
        of ``semantic``: an FCN weights path's are those its manifest lists).

        backend, precision, calibration_dir: those of YOLACT instances given as ``("yolact", PATH)``, which load
        with them (:class:`~rtseg.engines.yolact.YolactEngine`): the instance network, the bulk of the work, runs
        exported or compiled. The FCN runs eager (its engine has no other backend). Other instances take the
        defaults only (:func:`_check_instance_backend`)."""
        from rtseg.engines import load

        dev = resolve_device(device)
        if weights is not None:
            raise ConfigError("panoptic takes no weights=: pass instances=(\"yolact\", PATH) and semantic=FCN_PATH")
        if instances is None or semantic is None:
            raise ConfigError("panoptic needs instances= (an engine or (name, weights)) and semantic= "
                              "(an FCN engine or FCN weights path)")
        _check_given_engines(instances, semantic)
        backend_options = {"backend": backend, "precision": precision, "calibration_dir": calibration_dir}
        _check_instance_backend(instances, backend_options, dev)
        options = check_options(_OPTION_CHECKS, options)
        known = _semantic_names(semantic) if options.get("stuff_classes") is not None else None
        if known is not None:
            _stuff_categories(options["stuff_classes"], known)
        if isinstance(instances, (tuple, list)):
            yolact = instances[0] == "yolact"
            instances = load(instances[0], instances[1], device=device, **(backend_options if yolact else {}))
        if isinstance(semantic, (str, PathLike)):
            semantic = load("fcn", semantic, device=device)
        return cls(instances=instances, semantic=semantic, **options)

    def fuse(self, dets: Detections, semantic: SemanticMap) -> Panoptic:
        """One frame's fusion with this engine's category mapping and thresholds."""
        return fuse_panoptic(dets, semantic, thing_category=self.thing_category,
                             stuff_categories=self.stuff_categories, overlap_threshold=self.overlap_threshold,
                             stuff_min_area=self.stuff_min_area, score_threshold=self.score_threshold,
                             class_names=self.class_names)

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> Panoptic | list[Panoptic]:
        single, images = frames_as_list(frames)
        dets, sems = self.instances(images), self.semantic(images)
        wrong = [type(d).__name__ for d in dets if not isinstance(d, Detections)]
        if wrong:
            raise ConfigError(f"panoptic: the instances engine returned {wrong[0]}, expected Detections; "
                              f"pass an instance engine (yolact, msrcnn) as instances=")
        out = [self.fuse(d, s) for d, s in zip(dets, sems)]
        return out[0] if single else out

    def warmup(self) -> None:
        """Warm up both engines."""
        self.instances.warmup()
        self.semantic.warmup()
