"""Which engine a ``--weights`` value belongs to, and the engine options ``rtseg`` and ``rtseg eval`` share.

rtseg weights name their engine in the manifest's ``format``; a ``.pth`` is YOLACT (official
or an rtseg training checkpoint); ``torchvision:fcn_resnet50|fcn_resnet101`` is torchvision's
pretrained FCN-ResNet, taken from the torch cache (never downloaded). Without ``--weights``,
yolact (and panoptic's instances) use the shipped demo model; slic takes none.

No torch at its top, nor when it reads a manifest (:mod:`rtseg.manifest`): the command lines check their
options with it before a run imports torch.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rtseg.cliargs import check_range
from rtseg.engines import INSTANCE_ENGINES
from rtseg.engines.limits import OPTION_LIMITS
from rtseg.errors import ConfigError, WeightsError
from rtseg.manifest import ENGINE_FORMATS, peek_manifest
from rtseg.userfiles import check_input_file

if TYPE_CHECKING:
    from rtseg.engines.base import Engine

TORCHVISION = "torchvision:"
"""``--weights`` prefix naming a torchvision FCN-ResNet instead of a file."""


def resolve_engine(weights: str | None, engine: str | None) -> str:
    """The engine of ``weights``: ``engine`` if given, else the one its manifest names (default yolact).

    ``ConfigError`` when ``engine`` contradicts the manifest. A missing or unreadable manifest is left to the
    engine's loader to report. No ``weights``, and panoptic or slic (whose ``--weights`` are no engine's own,
    or none), give ``engine`` or yolact.
    """
    if weights is None or engine in ("panoptic", "slic"):
        return engine or "yolact"
    if weights.startswith(TORCHVISION):
        if engine not in (None, "fcn"):
            raise ConfigError(f"--engine {engine}: {weights} is an fcn; use --engine fcn or leave --engine out")
        return "fcn"
    fmt, found = manifest_engine(weights)
    if engine is not None and found is not None and engine != found:
        raise ConfigError(f"--engine {engine}: {weights} holds {found} weights (manifest format {fmt!r}); "
                          f"use --engine {found} or leave --engine out")
    return engine or found or "yolact"


def manifest_engine(weights: str) -> tuple[str | None, str | None]:
    """(manifest ``format``, engine it names) of the rtseg ``.safetensors`` file ``weights``; the engine is None
    for other files and for a manifest that is missing, unreadable or names no engine (the manifest as
    :func:`rtseg.manifest.peek_manifest` reads it; the engine's loader says what is wrong with it)."""
    fmt = (peek_manifest(weights) or {}).get("format")
    return fmt, ENGINE_FORMATS.get(fmt) if isinstance(fmt, str) else None  # a list or object names no engine


def check_engine_options(name: str, *, weights: str | None = None, semantic: str | None = None,
                         score_threshold: float | None = None, top_k: int | None = None, segments: int | None = None,
                         compactness: float | None = None, class_names: str | None = None) -> None:
    """Refuse, in one line each, the options (``None``: not given) that do not apply to engine ``name``, values
    out of the engines' range (:data:`rtseg.engines.limits.OPTION_LIMITS`, the table the engines check them against:
    ``"--top-k 0: must be an integer >= 1"``, NaN too), and a ``class_names`` file (``--class-names``) that cannot
    be read (:func:`rtseg.userfiles.check_input_file`)."""
    if name == "slic" and weights is not None:
        raise ConfigError(f"--engine slic takes no --weights (superpixels need no model); drop --weights {weights}")
    if semantic is not None and name != "panoptic":
        raise ConfigError("--semantic applies to --engine panoptic only")
    if name == "panoptic" and semantic is None:
        raise ConfigError("--engine panoptic needs --semantic FCN_WEIGHTS (the stuff classes) besides the instance "
                          "--weights (yolact or msrcnn; default: the demo model)")
    check_weights_file("--semantic", semantic)
    fmt, stuff = manifest_engine(semantic) if semantic is not None else (None, None)
    if stuff not in (None, "fcn"):
        raise ConfigError(f"--semantic {semantic} holds {stuff} weights (manifest format {fmt!r}); give the weights "
                          "of an fcn (the stuff classes)")
    if score_threshold is not None and name not in (*INSTANCE_ENGINES, "panoptic"):
        raise ConfigError(f"--score-threshold applies to yolact, msrcnn and panoptic only, not {name}")
    if top_k is not None and name not in INSTANCE_ENGINES:
        raise ConfigError(f"--top-k applies to {' and '.join(INSTANCE_ENGINES)} only, not {name}")
    if (segments is not None or compactness is not None) and name != "slic":
        raise ConfigError(f"--segments / --compactness apply to --engine slic only, not {name}")
    given = {"score_threshold": score_threshold, "top_k": top_k, "n_segments": segments, "compactness": compactness}
    for key, value in given.items():
        limit = OPTION_LIMITS[key]
        if value is not None:
            check_range(limit.option, value, limit.low, limit.high, "", open_low=limit.open_low)
    if class_names is not None:
        if name in ("panoptic", "slic"):
            raise ConfigError(f"--class-names applies to the yolact, msrcnn and fcn engines, not {name}")
        check_input_file(f"--class-names {class_names}", class_names, "give a text file with one class name per line")


def check_weights_file(option: str, path: str | None, *, torchvision: bool = False) -> None:
    """WeightsError (one line naming ``option`` and ``path``) unless ``path`` is a regular file this process may
    read (:func:`rtseg.userfiles.check_input_file`: a missing file, a folder, a FIFO, socket or device, permission
    denied, each said as such). ``None`` (not given) passes, and so does ``torchvision:ARCH``
    where ``torchvision`` (``--weights``: :func:`torchvision_fcn_engine` checks it).

    For ``--weights`` and ``--semantic`` before anything else reads them (a folder given as weights is no input
    folder that an output could overwrite)."""
    if path is None or (torchvision and path.startswith(TORCHVISION)):
        return
    if path.startswith(TORCHVISION) and not os.path.exists(path):
        raise WeightsError(f"{option} {path}: torchvision's models are taken by --weights (--engine fcn) only; give "
                           f"rtseg FCN weights here")
    check_input_file(f"{option} {path}", path, "give the weights file")


def default_weights(weights: str | None, name: str, command: str = "rtseg") -> str | None:
    """``weights``, or for yolact (and panoptic's instances) without them the shipped demo model (said on stderr
    as ``<command>: no --weights: …``, ``command`` being the command line that runs: ``rtseg``, ``rtseg eval``);
    ``ConfigError`` for fcn and msrcnn without weights."""
    if weights is not None or name == "slic":
        return weights
    if name not in ("yolact", "panoptic"):
        raise ConfigError(f"--engine {name} needs --weights PATH (rtseg .safetensors of that engine)")
    from rtseg.demo import DEMO_TRAIN_HINT, DEMO_WEIGHTS

    if not DEMO_WEIGHTS.is_file():
        raise WeightsError(f"no --weights and no demo model at {DEMO_WEIGHTS}: pass --weights PATH "
                           f"(official YOLACT .pth or rtseg .safetensors) or {DEMO_TRAIN_HINT}")
    print(f"{command}: no --weights: using the demo model {DEMO_WEIGHTS.name} (synthetic shapes; "
          "pass --weights for your own model)", file=sys.stderr)
    return str(DEMO_WEIGHTS)


def load_panoptic_engine(weights: str, semantic: str, *, device: str, **options: object) -> Engine:
    """Panoptic fusion of the instance engine of ``weights`` (yolact or msrcnn, from its manifest) and the FCN of
    ``semantic``; ``options`` as ``rtseg.load("panoptic", ...)``."""
    import rtseg

    things = resolve_engine(weights, None)
    if things not in INSTANCE_ENGINES:
        raise ConfigError(f"--engine panoptic: --weights {weights} holds {things} weights; give the weights "
                          f"of an instance engine ({' or '.join(INSTANCE_ENGINES)}) and --semantic FCN_WEIGHTS")
    return rtseg.load("panoptic", instances=(things, weights), semantic=semantic, device=device, **options)


def load_weights_engine(name: str, weights: str | None, *, device: str, class_names_file: str | None = None,
                        **options: object) -> Engine:
    """``rtseg.load(name, weights, ...)``, or torchvision's FCN for ``torchvision:ARCH`` (of ``options``, only its
    class names apply). ``class_names_file``: the command line's ``--class-names FILE``, read here (one name per
    line) and named by the error when it lists another number of names than the model has classes."""
    import rtseg
    from rtseg.engines.options import ClassCountError

    if class_names_file is not None:
        from rtseg.data.labelme import read_label_names

        options["class_names"] = read_label_names(class_names_file)
    try:
        if weights is not None and weights.startswith(TORCHVISION):
            return torchvision_fcn_engine(weights, device, options.get("class_names"))
        return rtseg.load(name, weights=weights, device=device, **options)
    except ClassCountError as exc:
        if class_names_file is None:
            raise
        raise ConfigError(f"--class-names {class_names_file}: lists {exc.given} class names, the model of "
                          f"{weights or 'the demo weights'} has {exc.count} classes; list one name per class, in "
                          "the model's class order") from None


def torchvision_fcn_engine(spec: str, device: str, class_names: object = None) -> Engine:
    """The engine of ``torchvision:fcn_resnet50|fcn_resnet101``, pretrained weights required (never downloaded);
    ``class_names``: names for its 21 VOC classes (None: VOC's)."""
    import torch

    import rtseg
    from rtseg.models.fcn import TORCHVISION_ARCHS, torchvision_fcn_weights

    arch = spec[len(TORCHVISION):]
    if arch not in TORCHVISION_ARCHS:
        raise ConfigError(f"--weights {spec}: use torchvision:{' or torchvision:'.join(TORCHVISION_ARCHS)}")
    with warnings.catch_warnings():  # the random-weights warning: refused below anyway, in one line
        warnings.simplefilter("ignore", UserWarning)
        named = {} if class_names is None else {"class_names": class_names}
        engine = rtseg.load("fcn", arch=arch, device=device, **named)
    if not engine.pretrained:
        url = torchvision_fcn_weights(arch).url
        raise WeightsError(f"--weights {spec}: torchvision's pretrained {arch} file {Path(url).name} is not in the "
                           f"torch cache ({Path(torch.hub.get_dir()) / 'checkpoints'}) and nothing is downloaded; "
                           f"copy it there first (it is {url})")
    return engine
