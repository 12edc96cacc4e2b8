"""The one range check of a number shared by engine options, command-line options, model configs and data files.

:func:`number_problem` decides whether a value is an integer or a finite real number (never a bool) within
bounds, and says what it must be when it is not. Each caller puts what was checked in front of that text and
shows the value given, so every such message reads alike:

* engine option (:func:`rtseg.engines.options.check_real`):
  ``yolact: score_threshold must be a number in [0, 1], got 'a'``
* command line (:func:`rtseg.cliargs.check_range`):
  ``--input-size 0: must be an integer in [32, 2048] pixels (YOLACT uses 550 or 700)``
* model config, or any other argument of the Python API (:func:`check_number`):
  ``YolactConfig: input_size must be an integer in [32, 2048], got 100000``

Light (the standard library and :mod:`rtseg.errors` only), so models, engines, command lines, data readers and
drawing can all use it.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

from rtseg.errors import ConfigError


def number_problem(value: object, low: float = -math.inf, high: float = math.inf, *, integer: bool,
                   open_low: bool = False) -> str | None:
    """None when ``value`` is an integer (``integer``) or else a finite real number, not a bool, in
    [low, high] ((low, high] with ``open_low``; an infinite bound is no bound). Otherwise what it must be, such
    as ``"must be an integer in [32, 2048]"``, ``"must be a finite number > 0"`` or ``"must be a number in
    [0, 1]"``, for the caller to prefix with what was checked and follow with the value given.

    numpy scalars count like Python numbers (``np.int64(3)`` is an integer, ``np.float32(0.5)`` a real number);
    bools (Python or numpy) and numeric strings do not. Integers are finite however large.
    """
    kind = type(value)  # the common case first, without the number ABCs (a COCO file checks millions of numbers)
    if ((kind is int or (kind is float and not integer and math.isfinite(value)))
            and (low < value if open_low else low <= value) and value <= high):
        return None
    if (not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
            and (isinstance(value, numbers.Integral) or math.isfinite(value))
            and (low < value if open_low else low <= value) and value <= high):
        return None
    return f"must be {_expected(low, high, integer=integer, open_low=open_low)}"


def check_number(what: str, value: object, low: float = -math.inf, high: float = math.inf, *, integer: bool,
                 open_low: bool = False) -> None:
    """ConfigError ``"<what> must be an integer >= 1, got 1.5"`` unless ``value`` passes :func:`number_problem`
    with these bounds. ``what`` names the value where the user gave it: ``"annotate: alpha"``,
    ``"YolactConfig: input_size"``, ``"yolact: top_k"``."""
    problem = number_problem(value, low, high, integer=integer, open_low=open_low)
    if problem is not None:
        raise ConfigError(f"{what} {problem}, got {value!r}")


def check_fields(config: object, limits: Mapping[str, tuple[float, float]], *, integer: bool) -> None:
    """:func:`check_number` of each field of ``config`` (a config dataclass) that ``limits`` names, with its
    (least, most) values (inf: no limit): ConfigError ``"TrainConfig: iters must be an integer in [1, 1000000000],
    got 0"`` for the first one out of range."""
    for name, (low, high) in limits.items():
        check_number(f"{type(config).__name__}: {name}", getattr(config, name), low, high, integer=integer)


def _expected(low: float, high: float, *, integer: bool, open_low: bool) -> str:
    """What :func:`number_problem` asks for: ``an integer in [32, 2048]``, ``a number in (0, 1]``, ``a finite
    number >= 0``, ``an integer <= 8``, ``a finite number``."""
    if math.isfinite(low) and math.isfinite(high):
        return f"{'an integer' if integer else 'a number'} in {'(' if open_low else '['}{_bound(low)}, {_bound(high)}]"
    limit = (f" {'>' if open_low else '>='} {_bound(low)}" if math.isfinite(low)
             else f" <= {_bound(high)}" if math.isfinite(high) else "")
    return f"{'an integer' if integer else 'a finite number'}{limit}"


def _bound(bound: float) -> str:
    """A bound as written in a message: an integer in full (1000000000), a float short (0.01, 1 for 1.0)."""
    return str(bound) if isinstance(bound, numbers.Integral) else f"{bound:g}"
