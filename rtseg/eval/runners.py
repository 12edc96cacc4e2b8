"""The evaluation loops of ``rtseg eval``, one per engine kind, and the class matching they share.

Each runner takes a loaded engine and samples, streams (prediction, ground truth)
pairs into an evaluator and returns its metrics. Class ids are matched by name
between the engine and the data set.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Collection, Iterable, Iterator, Sequence

import cv2
import numpy as np

from rtseg.data.dataset import InstanceDataset, Sample
from rtseg.engines.base import Engine, placeholder_names
from rtseg.errors import ConfigError
from rtseg.eval.coco import CocoEvaluator
from rtseg.eval.mask_scoring import MaskScoringEvaluator
from rtseg.eval.panoptic import PanopticEvaluator, panoptic_from_masks
from rtseg.eval.semantic import SemanticEvaluator, semantic_target
from rtseg.eval.superpixels import masks_to_segmentation, superpixel_metrics
from rtseg.types import Detections, Panoptic

if TYPE_CHECKING:
    from rtseg.engines.panoptic import PanopticEngine

IGNORE = 255
"""Label of target pixels the semantic evaluation skips (COCO crowd regions)."""


def class_mapping(engine_names: Sequence[str], data_names: Sequence[str],
                  annotated: Iterable[int] | None = None) -> np.ndarray:
    """(C_engine,) int64: data-set class id of each engine class, -1 for classes the data set lacks.

    ``ConfigError`` when a data-set class among ``annotated`` (data-set class ids; None: all) is unknown to the
    engine (its AP could only be 0). A class without ground truth counts in no AP (as in pycocotools).
    """
    index = {n: i for i, n in enumerate(data_names)}
    known = set(engine_names)
    needed = data_names if annotated is None else [data_names[i] for i in sorted(set(annotated))]
    missing = [n for n in needed if n not in known]
    if missing:
        advice = ("; those are placeholders (the weights name no classes): give their names with --class-names FILE, "
                  "one per line in class order" if _placeholder_names(engine_names)
                  else "; evaluate weights trained on these classes")
        raise ConfigError(f"the weights do not know data-set classes {quoted(missing)} (theirs: {quoted(engine_names)})"
                          + advice)
    return np.array([index.get(n, -1) for n in engine_names], np.int64)


def _placeholder_names(names: Sequence[str]) -> bool:
    """Whether ``names`` are the placeholders an engine names the classes of weights that name none
    (:func:`~rtseg.engines.base.placeholder_names`: class0, class1 …; an FCN's: background, class1 …)."""
    n = len(names)
    return n > 0 and list(names) in (placeholder_names(n), placeholder_names(n, background=True))


def checked_samples(data: Iterable[Sample], engine_names: Sequence[str], data_names: Sequence[str],
                    annotated: Collection[int] | None) -> Iterator[Sample]:
    """The samples of ``data``; when ``annotated`` is None (a data set that cannot say its classes before it is
    read), each checked as it comes: ``ConfigError`` (:func:`class_mapping`) at one holding a non-crowd object of a
    data-set class the engine lacks."""
    for sample in data:
        if annotated is None:
            real = sample.class_ids if sample.iscrowd is None else sample.class_ids[~sample.iscrowd]
            class_mapping(engine_names, data_names, annotated=real.tolist())
        yield sample


def quoted(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` quoted (``repr``: a comma, space or line break inside a name stays
    visible), then `` … (N in all)`` when there are more."""
    more = f" … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more


def remap(dets: Detections, mapping: np.ndarray, data_names: Sequence[str]) -> Detections:
    """Detections with class ids of the data set (detections of other classes dropped)."""
    if np.array_equal(mapping, np.arange(len(mapping))) and len(mapping) == len(data_names):
        return dets
    ids = mapping[dets.class_ids]
    keep = ids >= 0
    return Detections(boxes=dets.boxes[keep], scores=dets.scores[keep], class_ids=ids[keep],
                      image_size=dets.image_size, class_names=tuple(data_names),
                      mask_scores=None if dets.mask_scores is None else dets.mask_scores[keep],
                      _masks=dets.masks[keep])


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """``sample`` at ``size`` = (W, H): image with area averaging, masks nearest-neighbour, the sample's own boxes
    (a COCO annotation's bbox) scaled with the image, every object and crowd flag kept: only the scale changes.

    An object whose mask covers no pixel at the new size stays, as the evaluation counts a COCO object whose mask
    covers no pixel centre: ground truth no predicted mask matches (its box still can).
    """
    w, h = size
    if sample.image_size == (h, w):
        return sample
    image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA)
    masks = np.array([cv2.resize(m.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in sample.masks],
                     dtype=bool).reshape(-1, h, w)
    old_h, old_w = sample.image_size
    scale = np.array([w / old_w, h / old_h, w / old_w, h / old_h])
    return dataclasses.replace(sample, image=image, masks=masks, boxes=(sample.boxes * scale).astype(np.float32))


def samples(dataset: InstanceDataset, n: int, resize: tuple[int, int] | None = None) -> Iterator[Sample]:
    """The first ``n`` samples (resized to ``resize`` = (W, H) if given), with progress on stderr."""
    for i in range(n):
        sample = dataset[i]
        yield sample if resize is None else resize_sample(sample, resize)
        if (i + 1) % 50 == 0 or i + 1 == n:
            print(f"\r{i + 1}/{n} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def evaluate_instances(engine: Engine, data: Iterable[Sample], data_names: Sequence[str], *,
                       annotated: Collection[int] | None = None, mask_scoring: bool = False) -> dict[str, float]:
    """COCO mask/box AP of an instance engine (``Detections``) on ``data``: ``rtseg.eval.coco.METRICS``.

    annotated: the data-set class ids with (non-crowd) objects in ``data``, known before it is read
    (:func:`rtseg.data.dataset.classes_with_objects`): ``ConfigError`` before the first sample when the engine
    lacks one of them; None: each sample is checked as it comes (:func:`checked_samples`). Data-set classes
    without such objects need not be known (pycocotools leaves classes without ground truth out of AP).
    ``mask_scoring``: the engine is an MS R-CNN; add ``rtseg.eval.mask_scoring.SCORING_METRICS``.
    """
    mapping = class_mapping(engine.class_names, data_names, annotated=() if annotated is None else annotated)
    ev = MaskScoringEvaluator(data_names) if mask_scoring else CocoEvaluator(data_names)
    for sample in checked_samples(data, engine.class_names, data_names, annotated):
        ev.add(remap(engine(sample.image), mapping, data_names), sample)
    return ev.summarize()


def _with_background(engine_names: Sequence[str], data_names: Sequence[str],
                     annotated: Collection[int] | None) -> tuple[list[str], np.ndarray]:
    """The evaluation classes of semantic and panoptic ground truth, ["background", *data_names], and the
    :func:`class_mapping` of the engine's classes to them; ``ConfigError`` when the engine lacks "background" or a
    data-set class among ``annotated`` (data-set class ids; None: every one)."""
    target_names = ["background", *data_names]
    needed = None if annotated is None else [0, *(c + 1 for c in annotated)]
    return target_names, class_mapping(engine_names, target_names, annotated=needed)


def target_lut(engine_names: Sequence[str], data_names: Sequence[str],
               annotated: Collection[int] | None = None) -> np.ndarray:
    """(1 + C_data,) int64: the engine's class id of "background" and of each data-set class (matched by name),
    -1 for a data-set class the engine lacks.

    ``ConfigError`` when the engine lacks "background" or a data-set class among ``annotated`` (data-set class
    ids; None: every one): the classes whose pixels the targets hold.
    """
    target_names, mapping = _with_background(engine_names, data_names, annotated)
    lut = np.full(len(target_names), -1, np.int64)
    lut[mapping[mapping >= 0]] = np.flatnonzero(mapping >= 0)
    return lut


def engine_target(sample: Sample, lut: np.ndarray) -> np.ndarray:
    """(H, W) int64 semantic target of an instance sample in the engine's class ids (``lut`` from
    :func:`target_lut`); ``IGNORE`` on crowd regions."""
    target = lut[semantic_target(sample)]
    if sample.iscrowd is not None and sample.iscrowd.any():
        target[sample.masks[sample.iscrowd].any(0)] = IGNORE
    return target


def evaluate_semantic_engine(engine: Engine, data: Iterable[Sample], data_names: Sequence[str], *,
                             annotated: Collection[int] | None = None) -> dict[str, float]:
    """mIoU, pixel and mean accuracy, IoU per class of a semantic engine (its ``SemanticMap.labels``).

    Targets: :func:`engine_target`; the engine must know "background" and every data-set class with (non-crowd)
    objects in ``data``: ``annotated`` as in :func:`evaluate_instances` (before the first sample; None: sample by
    sample). A data-set class without them has no target pixel and, unknown to the engine, is never predicted:
    mIoU leaves it out, as every class absent from both (:mod:`rtseg.eval.semantic`). Engine classes absent from
    the data set still count (as IoU 0) wherever they are predicted.
    """
    lut = target_lut(engine.class_names, data_names, annotated=() if annotated is None else annotated)
    ev = SemanticEvaluator(len(engine.class_names), ignore_index=IGNORE)
    for sample in checked_samples(data, engine.class_names, data_names, annotated):
        ev.add(engine(sample.image).labels, engine_target(sample, lut))
    return ev.summarize(engine.class_names)


def format_semantic(metrics: dict[str, float]) -> str:
    """Text table of semantic metrics (percent): the three summary numbers, then IoU per class."""
    head = ("mIoU", "pixel_accuracy", "mean_accuracy")
    lines = ["  ".join(f"{k:>14}" for k in head), "  ".join(f"{100 * metrics[k]:14.2f}" for k in head), "",
             f"{'class':<16}{'IoU':>8}"]
    lines += [f"{k[4:]:<16}{100 * v:8.2f}" for k, v in metrics.items() if k.startswith("IoU/")]
    return "\n".join(lines)


class PanopticScorer:
    """PQ / SQ / RQ of a panoptic engine's predictions against instance samples.

    Ground truth per sample: its instances are things (category class_id + 1), its crowd regions one crowd
    segment per category (panopticapi's crowd rules, see :mod:`rtseg.eval.panoptic`), the rest one stuff segment
    "background" (category 0). Evaluation categories: "background", the data-set classes, then the
    engine categories the data set lacks (their segments are false positives; things if the engine pastes them
    as instances). Engine categories are matched by name; ``ConfigError`` when it lacks "background" or a
    data-set class among ``annotated`` (data-set class ids; None: every one). A data-set class the engine lacks
    must have no (non-crowd) object in the samples added: then it has no TP, FP or FN and PQ leaves it out.

    engine_names: the engine's category names; engine_things: its thing category ids.
    """

    def __init__(self, engine_names: Sequence[str], engine_things: Iterable[int], data_names: Sequence[str],
                 annotated: Collection[int] | None = None) -> None:
        target_names, mapping = _with_background(engine_names, data_names, annotated)
        extra = np.flatnonzero(mapping < 0)
        self.lut = mapping.copy()
        self.lut[extra] = len(target_names) + np.arange(len(extra))
        self.names = (*target_names, *(engine_names[i] for i in extra))
        things = set(range(1, len(target_names))) | {int(self.lut[c]) for c in engine_things if mapping[c] < 0}
        self.evaluator = PanopticEvaluator(len(self.names), things=sorted(things))

    def add(self, pred: Panoptic, sample: Sample) -> None:
        """One image: ``pred`` in the engine's categories, ``sample`` its ground truth (same size)."""
        segments = [{**seg, "category_id": int(self.lut[seg["category_id"]])} for seg in pred.segments]
        gt = panoptic_from_masks(sample.masks, sample.class_ids + 1, self.names, iscrowd=sample.iscrowd)
        self.evaluator.add(Panoptic(ids=pred.ids, segments=segments, class_names=self.names), gt)

    def summarize(self) -> dict[str, float]:
        """``PanopticEvaluator.summarize`` with the evaluation category names ("PQ/<name>" per category)."""
        return self.evaluator.summarize(self.names)


def evaluate_panoptic_engine(engine: PanopticEngine, data: Iterable[Sample], data_names: Sequence[str], *,
                             annotated: Collection[int] | None = None) -> dict[str, float]:
    """PQ, SQ, RQ (all, things "_th", stuff "_st") and PQ per category of a panoptic engine: see
    :class:`PanopticScorer`; ``annotated`` as in :func:`evaluate_instances`."""
    scorer = PanopticScorer(engine.class_names, set(engine.thing_category.tolist()), data_names,
                            annotated=() if annotated is None else annotated)
    for sample in checked_samples(data, engine.class_names, data_names, annotated):
        scorer.add(engine(sample.image), sample)
    return scorer.summarize()


def format_panoptic(metrics: dict[str, float]) -> str:
    """Text table of panoptic metrics (percent): PQ, SQ, RQ of all / things / stuff, then PQ per category."""
    lines = [f"{'':<8}" + "".join(f"{k:>8}" for k in ("PQ", "SQ", "RQ"))]
    for label, suffix in (("all", ""), ("things", "_th"), ("stuff", "_st")):
        lines.append(f"{label:<8}" + "".join(f"{100 * metrics[k + suffix]:8.2f}" for k in ("PQ", "SQ", "RQ")))
    lines += ["", f"{'category':<16}{'PQ':>8}"]
    lines += [f"{k[3:]:<16}{100 * v:8.2f}" for k, v in metrics.items() if k.startswith("PQ/")]
    return "\n".join(lines)


SUPERPIXEL_METRICS = ("boundary_recall", "undersegmentation_error", "asa", "num_segments", "num_images_left_out")


def evaluate_superpixel_engine(engine: Engine, data: Iterable[Sample]) -> dict[str, float]:
    """Mean boundary recall, undersegmentation error, ASA and segments per image of a superpixel engine
    (its ``Superpixels.labels``) against each sample's instance segmentation (background = one segment).

    Images without instances (a ground truth of one segment: no boundary to recall, and any superpixels would score
    a perfect undersegmentation error and ASA) are left out, unsegmented: the means are over the others, and
    "num_images_left_out" counts them. When every image is left out the means are NaN (undefined, not 100 %)."""
    per_image, left_out = [], 0
    for sample in data:
        truth = masks_to_segmentation(sample.masks)
        if truth.min() == truth.max():
            left_out += 1
            continue
        per_image.append(superpixel_metrics(engine(sample.image).labels, truth))
    means = {k: float(np.mean([m[k] for m in per_image])) if per_image else math.nan for k in SUPERPIXEL_METRICS[:-1]}
    return {**means, "num_images_left_out": float(left_out)}


def format_superpixels(metrics: dict[str, float]) -> str:
    """Text table of superpixel metrics: BR, UE, ASA in percent, then segments per image; then a line saying how
    many images without instances were left out of those means, if any."""
    keys = ("boundary_recall", "undersegmentation_error", "asa")
    head = [*keys, "segments/image"]
    values = [f"{100 * metrics[k]:.2f}" for k in keys] + [f"{metrics['num_segments']:.1f}"]
    table = "  ".join(head) + "\n" + "  ".join(v.rjust(len(h)) for h, v in zip(head, values))
    left_out = int(metrics["num_images_left_out"])
    if left_out:
        table += (f"\nleft out {left_out} image{'s' if left_out > 1 else ''} without instances (no boundary to "
                  "recall): the means are over the other images")
    return table
