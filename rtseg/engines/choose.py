"""Which engine a ``--weights`` value belongs to (shared by ``rtseg`` and ``rtseg eval``).

rtseg weights name their engine in the manifest's ``format``; a ``.pth`` is YOLACT (official
or an rtseg training checkpoint); ``torchvision:fcn_resnet50|fcn_resnet101`` is torchvision's
pretrained FCN-ResNet, taken from the torch cache (never downloaded).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rtseg.errors import ConfigError, WeightsError
from rtseg.weights import MANIFEST_FORMAT, manifest_path

if TYPE_CHECKING:
    from rtseg.engines.base import Engine

TORCHVISION = "torchvision:"
"""``--weights`` prefix naming a torchvision FCN-ResNet instead of a file."""


def engine_formats() -> dict[str, str]:
    """Manifest ``format`` of rtseg weights -> engine name (imported on use: the engines load torchvision)."""
    from rtseg.engines.fcn import FCN_FORMAT
    from rtseg.engines.msrcnn import MSRCNN_FORMAT

    return {MANIFEST_FORMAT: "yolact", FCN_FORMAT: "fcn", MSRCNN_FORMAT: "msrcnn"}


def resolve_engine(weights: str, engine: str | None) -> str:
    """The engine of ``weights``: ``engine`` if given, else the one its manifest names (default yolact).

    ``ConfigError`` when ``engine`` contradicts the manifest. A missing or unreadable manifest is left to the
    engine's loader to report.
    """
    if weights.startswith(TORCHVISION):
        if engine not in (None, "fcn"):
            raise ConfigError(f"--engine {engine}: {weights} is an fcn; use --engine fcn or leave --engine out")
        return "fcn"
    try:
        fmt = json.loads(manifest_path(weights).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    found = engine_formats().get(fmt) if Path(weights).suffix == ".safetensors" else None
    if engine is not None and found is not None and engine != found:
        raise ConfigError(f"--engine {engine}: {weights} holds {found} weights (manifest format {fmt!r}); "
                          f"use --engine {found} or leave --engine out")
    return engine or found or "yolact"


def load_weights_engine(name: str, weights: str | None, *, device: str, **options: object) -> Engine:
    """``rtseg.load(name, weights, ...)``, or torchvision's FCN for ``torchvision:ARCH`` (``options`` unused)."""
    import rtseg

    if weights is not None and weights.startswith(TORCHVISION):
        return torchvision_fcn_engine(weights, device)
    return rtseg.load(name, weights=weights, device=device, **options)


def torchvision_fcn_engine(spec: str, device: str) -> Engine:
    """The engine of ``torchvision:fcn_resnet50|fcn_resnet101``, pretrained weights required (never downloaded)."""
    import torch

    import rtseg
    from rtseg.models.fcn import TORCHVISION_ARCHS

    arch = spec[len(TORCHVISION):]
    if arch not in TORCHVISION_ARCHS:
        raise ConfigError(f"--weights {spec}: use torchvision:{' or torchvision:'.join(TORCHVISION_ARCHS)}")
    with warnings.catch_warnings():  # the random-weights warning: refused below anyway, in one line
        warnings.simplefilter("ignore", UserWarning)
        engine = rtseg.load("fcn", arch=arch, device=device)
    if not engine.pretrained:
        raise WeightsError(f"--weights {spec}: torchvision's pretrained {arch} file is not in the torch cache "
                           f"({Path(torch.hub.get_dir()) / 'checkpoints'}) and nothing is downloaded; "
                           "copy it there first")
    return engine
