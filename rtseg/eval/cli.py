"""``rtseg eval``: accuracy of YOLACT, FCN, Mask Scoring R-CNN, panoptic or SLIC on a data set.

    rtseg eval --weights engines/demo.safetensors --data synthetic:test
    rtseg eval --weights yolact_base_54_800000.pth --data coco:instances_val2017.json:val2017 --device cuda
    rtseg eval --weights fcn8s.safetensors --data synthetic:test --resize 128x96       # mIoU, pixel accuracy
    rtseg eval --weights msrcnn.safetensors --data synthetic:test --resize 160x120     # + AP by mask score
    rtseg eval --engine panoptic --weights yolact.safetensors --semantic fcn8s.safetensors --resize 160x120
    rtseg eval --engine slic --segments 200 --compactness 10 --data synthetic:test     # BR, UE, ASA

YOLACT and MS R-CNN give COCO mask/box AP (MS R-CNN also AP ranked by mask score and
the correlation of predicted and true MaskIoU); FCN gives mIoU, pixel accuracy, mean
accuracy and IoU per class; panoptic (instance --weights, yolact or msrcnn, fused with
the --semantic FCN) gives PQ / SQ / RQ of all, thing and stuff categories against the
data set's instances as things and the rest as one "background" stuff segment; SLIC
(no weights) gives boundary recall, undersegmentation error, achievable segmentation
accuracy and segments per image against each image's instance segmentation, over the images
with instances (those without, which have no boundary to recall, are left out and counted). The engine
is read from the manifest of rtseg weights (``--engine`` overrides; a .pth is YOLACT);
without ``--weights``, yolact and panoptic use the shipped demo model.

``--data`` is ``synthetic:{train|val|test}``, ``coco:ANNOTATIONS.json:IMAGE_DIR`` or
``labelme:FOLDER``. Classes of the weights and the data set are matched by name
(for the official COCO checkpoints the 80 names equal the COCO category names). The weights must know every
data-set class with (non-crowd) objects in the images evaluated (a class without any counts in no AP, mIoU or PQ);
one they lack is refused before the first image where the data set knows its classes unread (COCO), else at the
first image that holds one.

``--json PATH`` writes the metrics whole at the end, renamed over PATH (a symbolic link: over its target, the link
kept); ``--json -`` prints them on stdout, the table then on stderr. A FIFO, a device or a descriptor's name
(``/dev/stdout``, ``/proc/self/fd/N``) is refused before the evaluation, as is a folder that cannot be written:
a rename would replace the device node with a file, and cannot write into a descriptor; use ``-`` (and a pipe).

No torch at its top: ``--help`` and a bad option answer at once; :func:`run` imports the evaluation (torch) once
the options are checked.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rtseg.cliargs import Once, Parser, TypedFloat, check_range, check_ranges, plain_floats
from rtseg.data.spec import parse_data
from rtseg.engines import ENGINE_NAMES
from rtseg.engines.choose import (
    check_engine_options,
    check_weights_file,
    default_weights,
    load_panoptic_engine,
    load_weights_engine,
    resolve_engine,
)
from rtseg.entry import lazy_attributes
from rtseg.errors import ConfigError, DatasetError, SinkError, Terminated, exit_status, sigterm_raises
from rtseg.imageio import MAX_IMAGE_PIXELS
from rtseg.outputs import (
    check_not_among_labelme_files,
    check_not_an_image_of,
    check_outputs_are_not_inputs,
    weights_paths,
)
from rtseg.video.outfiles import output_target, replace_whole

if TYPE_CHECKING:
    from rtseg.data.dataset import InstanceDataset
    from rtseg.engines.base import Engine

__all__ = ["ENGINES", "main", "open_dataset", "run"]
__getattr__, __dir__ = lazy_attributes(globals(), {"class_mapping": "rtseg.eval.runners"})  # also importable from here
ENGINES = ENGINE_NAMES
AP_SCORE_THRESHOLD = 0.05
"""Default --score-threshold of yolact and msrcnn: low, as AP needs the whole precision-recall curve."""
STDOUT = "-"
"""``--json -``: the metrics JSON on standard output (the table on stderr), as ``rtseg --json -`` writes its lines."""


def open_dataset(spec: str) -> InstanceDataset:
    """The data set named by a ``--data`` spec (:func:`~rtseg.data.spec.parse_data`; synthetic: the test split
    unless the spec names one)."""
    data = parse_data(spec)
    if data.kind == "synthetic":
        from rtseg.data.synthetic import SyntheticDataset

        return SyntheticDataset.split(data.split or "test")
    if data.kind == "coco":
        from rtseg.data.coco import CocoDataset

        return CocoDataset(data.path, data.images, include_crowd=True, keep_empty=True)
    from rtseg.data.labelme import LabelmeDataset

    return LabelmeDataset(data.path)


RESIZE_MAX_SIDE = math.isqrt(MAX_IMAGE_PIXELS)
"""The largest --resize width and height (11585): a WxH within it stays within the pixels rtseg reads of an image
(:data:`rtseg.imageio.MAX_IMAGE_PIXELS`, 2**27), so no resized image (and its masks) is larger than an image rtseg
would read; 100000x100000 asked OpenCV for 30 GB and failed after the model loaded."""


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H), each from 32 to :data:`RESIZE_MAX_SIDE` pixels (:func:`rtseg.cliargs.check_range`)."""
    w, sep, h = text.lower().partition("x")
    if not (sep and all(side.isascii() and side.isdigit() for side in (w, h))):
        raise ConfigError(f"--resize {text}: use WIDTHxHEIGHT, each from 32 to {RESIZE_MAX_SIDE}, "
                          "e.g. --resize 160x120")
    size = int(w), int(h)
    for side, value in zip(("width", "height"), size):
        check_range("--resize", value, 32, RESIZE_MAX_SIDE, f" pixels (the {side} of {text}; at most "
                    f"{RESIZE_MAX_SIDE} a side keeps an image within the {MAX_IMAGE_PIXELS:,} pixels rtseg reads)")
    return size


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="rtseg eval", description="Accuracy of an engine on a data set: COCO mask/box AP (yolact, "
                "msrcnn), mIoU and pixel accuracy (fcn), PQ/SQ/RQ (panoptic), boundary recall, undersegmentation "
                "error and ASA (slic).")
    p.add_argument("--weights", default=None,
                   help="official YOLACT .pth, rtseg .safetensors (+ .json manifest) of any engine, a YOLACT "
                        "training run's checkpoint.pth, or torchvision:fcn_resnet50|fcn_resnet101 (pretrained "
                        "VOC-label weights from the torch cache); for panoptic the instance (yolact/msrcnn) weights; "
                        "none for slic (default for yolact and panoptic: the shipped demo model)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="engine to evaluate (default: read from the manifest's 'format' of rtseg weights, "
                        "e.g. rtseg-fcn/1 -> fcn; yolact for .pth files)")
    p.add_argument("--semantic", metavar="FCN_WEIGHTS", help="panoptic: the FCN weights of the stuff classes")
    p.add_argument("--class-names", metavar="FILE",
                   help="yolact / msrcnn / fcn: the model's class names, one per line, matched to the data set's by "
                        "name (weights that carry none: an official YOLACT .pth of other than COCO's 80 classes)")
    p.add_argument("--segments", type=int, default=None, metavar="N",
                   help="slic: about how many superpixels per image (default 200)")
    p.add_argument("--compactness", type=TypedFloat, default=None, metavar="C",
                   help="slic: weight of closeness against colour (default 10)")
    p.add_argument("--data", default="synthetic:test",
                   help="synthetic:{train|val|test} | coco:ANNOTATIONS.json:IMAGE_DIR | labelme:FOLDER "
                        "(default synthetic:test, 300 images)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--resize", default=None, metavar="WxH",
                   help="resize images and their masks to WxH before evaluation (e.g. the size the weights "
                        "were trained at; metrics are then at that size)")
    p.add_argument("--score-threshold", type=TypedFloat, default=None,
                   help=f"yolact/msrcnn: drop detections scoring at or below this (default {AP_SCORE_THRESHOLD}); "
                        "panoptic: instances pasted (default 0.3)")
    p.add_argument("--json", action=Once, default=None, metavar="PATH",
                   help="also write the metrics to this JSON file (a link: to its target), or to standard output for "
                        "- (the table then goes to stderr); written whole at the end, so a FIFO or device is refused")
    return p


def load_engine(name: str, args: argparse.Namespace) -> tuple[Engine, dict[str, object]]:
    """The engine to evaluate and the settings the JSON record names (weights, thresholds, SLIC parameters)."""
    weights = default_weights(args.weights, name, command="rtseg eval")
    if name == "slic":
        options = {k: v for k, v in (("n_segments", args.segments), ("compactness", args.compactness)) if v is not None}
        engine = load_weights_engine(name, None, device=args.device, **options)
        return engine, {"segments": engine.n_segments, "compactness": engine.compactness}
    if name == "panoptic":
        options = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
        engine = load_panoptic_engine(weights, args.semantic, device=args.device, **options)
        return engine, {"weights": weights, "semantic": args.semantic, "score_threshold": engine.score_threshold}
    named = {"class_names_file": args.class_names}
    if name == "fcn":
        return load_weights_engine(name, weights, device=args.device, **named), {"weights": weights}
    threshold = AP_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    engine = load_weights_engine(name, weights, device=args.device, score_threshold=threshold, top_k=100, **named)
    return engine, {"weights": weights, "score_threshold": threshold}


def _check_args(args: argparse.Namespace) -> tuple[str, tuple[int, int] | None, Path | None]:
    """The engine to evaluate, the ``--resize`` size (W, H; None: as the images are) and the file the ``--json``
    metrics replace (:func:`rtseg.video.outfiles.output_target`: a link's target; None: no file, also for ``-``),
    once every option is checked (a ConfigError, WeightsError or SinkError line otherwise), before anything slow
    happens: a --json that cannot be written is refused now, not after hours of evaluation."""
    check_ranges(args, [("--max-images", 1, None, "")])
    check_weights_file("--weights", args.weights, torchvision=True)
    engine_name = resolve_engine(args.weights, args.engine)
    check_engine_options(engine_name, weights=args.weights, semantic=args.semantic,
                         score_threshold=args.score_threshold, segments=args.segments, compactness=args.compactness,
                         class_names=args.class_names)
    plain_floats(args)
    resize = None if args.resize is None else parse_size(args.resize)
    target = None if args.json in (None, STDOUT) else output_target(
        Path(args.json), "--json", "give --json - for the metrics on standard output, or a file path")
    check_outputs_are_not_inputs([("--json", None if target is None else args.json)],
                                 [*weights_paths(args.weights, args.semantic), *parse_data(args.data).paths,
                                  *([args.class_names] if args.class_names is not None else [])])
    if target is not None:
        check_not_among_labelme_files(target, f"--json {args.json}", [("--data", args.data)],
                                      "write the metrics to another folder")
    return engine_name, resize, target


def run(args: argparse.Namespace) -> dict[str, float]:
    """Evaluate as the options say and print the metrics (in %); returns them. The options are checked first
    (:func:`_check_args`), then the evaluation (torch: seconds) is imported."""
    engine_name, resize, target = _check_args(args)
    from rtseg.data.dataset import classes_with_objects
    from rtseg.eval.coco import format_table
    from rtseg.eval.mask_scoring import format_scoring_table
    from rtseg.eval.runners import (
        evaluate_instances,
        evaluate_panoptic_engine,
        evaluate_semantic_engine,
        evaluate_superpixel_engine,
        format_panoptic,
        format_semantic,
        format_superpixels,
        samples,
    )
    dataset = open_dataset(args.data)
    check_not_an_image_of("--json", None if target is None else args.json, dataset.image_files, args.data)
    n = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    if n < 1:
        raise ConfigError(f"--data {args.data}: no images to evaluate")
    engine, settings = load_engine(engine_name, args)
    start = time.perf_counter()
    data = samples(dataset, n, resize)
    annotated = classes_with_objects(dataset, n)  # a class the engine lacks is refused before the first image
    if engine_name == "fcn":
        metrics = evaluate_semantic_engine(engine, data, dataset.class_names, annotated=annotated)
        table = format_semantic(metrics)
    elif engine_name == "panoptic":
        metrics = evaluate_panoptic_engine(engine, data, dataset.class_names, annotated=annotated)
        table = format_panoptic(metrics)
    elif engine_name == "slic":
        metrics = evaluate_superpixel_engine(engine, data)
        if math.isnan(metrics["boundary_recall"]):
            raise _no_instances(args.data, n, "boundary recall is undefined (and undersegmentation error and ASA "
                                              "trivially perfect)")
        table = format_superpixels(metrics)
    else:
        metrics = evaluate_instances(engine, data, dataset.class_names, annotated=annotated,
                                     mask_scoring=engine_name == "msrcnn")
        if math.isnan(metrics["mask_AP"]) and math.isnan(metrics["box_AP"]):
            raise _no_instances(args.data, n, "AP is undefined")
        table = format_table(metrics) + ("\n\n" + format_scoring_table(metrics) if engine_name == "msrcnn" else "")
    seconds = time.perf_counter() - start
    size = f" at {resize[0]}x{resize[1]}" if resize else ""
    report = sys.stderr if args.json == STDOUT else sys.stdout  # stdout: the JSON alone
    print(f"{args.data}{size}: {n} images, {engine_name}, {seconds:.1f} s "
          f"({n / seconds:.1f} images/s incl. loading and metric bookkeeping); values in %", file=report)
    print(table, file=report)
    if args.json is not None:
        record = {"engine": engine_name, **settings, "data": args.data, "images": n, "resize": args.resize,
                  "device": args.device, "metrics": metrics}
        text = json.dumps(record, indent=2)
        if target is None:
            print(text)
            return metrics
        try:
            replace_whole(target, text.encode())  # an earlier file stays if this fails
        except OSError as exc:
            raise SinkError(f"--json {args.json}: cannot write ({exc.strerror}); choose another path") from None
    return metrics


def _no_instances(data: str, n: int, consequence: str) -> DatasetError:
    """The error of ``--data`` whose ``n`` evaluated images hold no (non-crowd) instances: ``consequence`` says
    which metrics that leaves undefined."""
    return DatasetError(f"--data {data}: the {n} images hold no (non-crowd) instances, so {consequence}; evaluate "
                        "on annotated images")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtseg eval``; returns the exit status (0 ok, 2 on a user error, as every rtseg command).

    SIGTERM and SIGHUP raise :class:`rtseg.errors.Terminated` throughout (the options, the data set, the engine, the
    evaluation): one line and 143 or 129, not a death without a word; nothing is left half-written, as the only file the
    command writes, the ``--json`` metrics, is written whole at the end (:func:`rtseg.video.outfiles.replace_whole`)."""
    def evaluate() -> dict[str, float]:
        with sigterm_raises(Terminated):
            return run(_parser().parse_args(argv))

    return exit_status("rtseg eval", evaluate)


if __name__ == "__main__":
    sys.exit(main())
