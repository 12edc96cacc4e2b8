"""The ranges of the engine options the command lines offer: one table (:data:`OPTION_LIMITS`) that the engines check
their options against (:func:`rtseg.engines.options.check_option`) and the command lines check theirs against
before torch is imported (:func:`rtseg.engines.choose.check_engine_options`).

Light (the standard library only): the command lines import it without torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class OptionLimit(NamedTuple):
    """The values an engine option takes: an integer (``integer``) or else a finite real number from ``low`` (above
    it with ``open_low``) to ``high`` (inf: no limit); ``option``: the command-line option that gives it."""

    option: str
    low: float
    high: float
    integer: bool
    open_low: bool = False


OPTION_LIMITS: dict[str, OptionLimit] = {
    "score_threshold": OptionLimit("--score-threshold", 0.0, 1.0, integer=False),
    "top_k": OptionLimit("--top-k", 1, math.inf, integer=True),
    "n_segments": OptionLimit("--segments", 1, math.inf, integer=True),
    "compactness": OptionLimit("--compactness", 0.0, math.inf, integer=False, open_low=True),
}
"""The engine options the command lines offer, by the engines' parameter names: yolact, msrcnn and panoptic's
score_threshold, yolact and msrcnn's top_k, slic's n_segments and compactness."""
