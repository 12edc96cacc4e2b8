"""What the command lines know of rtseg weights before any of them loads, without torch: where the JSON manifest
of a ``.safetensors`` file is (:func:`manifest_path`), the manifest ``format`` of each engine's weights
(:data:`ENGINE_FORMATS`), and the manifest as read, unchecked (:func:`peek_manifest`).

:mod:`rtseg.weights` (torch) reads and checks weights with these; ``rtseg``, ``rtseg eval`` and ``rtseg train``
check their options with them before a run imports torch (seconds).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from rtseg.errors import one_line
from rtseg.userfiles import read_regular_file

MANIFEST_FORMAT = "rtseg-yolact/1"
"""Manifest ``format`` of rtseg YOLACT weights (the default of :func:`rtseg.weights.read_checkpoint`)."""
FCN_FORMAT = "rtseg-fcn/1"
"""Manifest ``format`` of rtseg FCN weights (:mod:`rtseg.engines.fcn`)."""
MSRCNN_FORMAT = "rtseg-msrcnn/1"
"""Manifest ``format`` of rtseg Mask Scoring R-CNN weights (:mod:`rtseg.engines.msrcnn`)."""
ENGINE_FORMATS = {MANIFEST_FORMAT: "yolact", FCN_FORMAT: "fcn", MSRCNN_FORMAT: "msrcnn"}
"""Manifest ``format`` -> the engine whose weights it marks."""
WEIGHTS_ADVICE = "give an official YOLACT .pth or an rtseg .safetensors"
"""What to do about a YOLACT weights file that cannot be used (:func:`rtseg.weights.read_checkpoint`,
``rtseg train --init``)."""


def ambiguous_class_name(names: Sequence[str]) -> str | None:
    """The first of ``names`` that outputs, which name classes by these, could not tell apart: an empty or blank
    name, one of more than one line, or one given twice; None when there is none. Checked in manifests
    (:func:`rtseg.weights.manifest_config`) and in the class names given to an engine
    (:func:`rtseg.engines.options.check_class_names`)."""
    return next((n for n in names if not n.strip() or one_line(n) != n or names.count(n) > 1), None)


def manifest_path(weights: str | Path) -> Path:
    """The JSON manifest beside a safetensors file (``x.safetensors`` → ``x.json``)."""
    return Path(weights).with_suffix(".json")


def peek_manifest(weights: str | Path) -> dict[str, Any] | None:
    """The manifest beside the rtseg ``.safetensors`` file ``weights`` as read, nothing in it checked (the loader
    checks it against the weights: :func:`rtseg.weights.read_manifest`), for checks of options before the weights
    are read; None for other files and where no manifest reads as a JSON object (the loader says what is wrong).
    Read without ever waiting (:func:`rtseg.userfiles.read_regular_file`: a FIFO or device is not read)."""
    if Path(weights).suffix != ".safetensors":
        return None
    try:
        manifest = json.loads(read_regular_file(manifest_path(weights)).decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError and json.JSONDecodeError too
        return None
    return manifest if isinstance(manifest, dict) else None
