"""What every engine shares: checks of its options (device strings, numbers, weights paths) and the placement
of its network on the device (:func:`place_network`).

Each check raises :class:`ConfigError` (or :class:`WeightsError` for a weights path) with one line
naming the engine, the option, what was given and what is expected. An engine names its checks once
(:data:`OptionChecks`) and runs them in its constructor and, on the options given, at the top of its
``from_weights`` (:func:`check_options`): a bad option is refused before any weights are read or any network
is built (seconds for a ResNet-50 MS R-CNN), and before whatever those would fail with.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from rtseg.engines.limits import OPTION_LIMITS
from rtseg.errors import ConfigError, WeightsError
from rtseg.manifest import ambiguous_class_name
from rtseg.ranges import check_number

DEVICE_TYPES = ("cpu", "cuda")
#: Whether an engine on the CPU keeps its network's 4-D weights in channels_last (NHWC) memory: oneDNN then
#: runs every convolution and pooling layer in NHWC (max pooling in NCHW is a slow scalar loop). Same values;
#: outputs differ by float rounding only. Evidence: benchmarks/cpu_channels_last.py
#: (results/cpu_channels_last.json): whole frames of each engine with and without it.
CPU_CHANNELS_LAST = True
OptionChecks = Mapping[str, Callable[[Any], Any]]
"""An engine's checks of its options by name: each takes the value given and returns it checked (a float, an
int, a ``torch.device`` …) or raises ConfigError (:func:`check_options`)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a user string: ``cpu`` (or ``cpu:0``), ``cuda`` or ``cuda:N``.

    ConfigError for any other device type (mps, xpu, meta …: the engines are built and tested
    for CPU and CUDA only), when CUDA is asked for but absent, or when N is not a CUDA device
    of this machine.
    """
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ConfigError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N")
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ConfigError(f"device {str(device)!r}: there is one CPU device; use cpu")
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available here; use device='cpu' (--device cpu)")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{dev} requested but this machine has {count} CUDA device(s); "
                          f"use cuda:0 … cuda:{count - 1}")
    return dev


def place_network(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` moved to ``device`` in place and put in eval mode; on the CPU (with :data:`CPU_CHANNELS_LAST`)
    its 4-D weights also become channels_last in place. The module stays the caller's (a trainer keeps training
    it: its CPU training steps run NHWC too). Returns ``module``."""
    module.to(device).eval()
    if device.type == "cpu" and CPU_CHANNELS_LAST:
        module.to(memory_format=torch.channels_last)
    return module


def check_real(engine: str, key: str, value: Any, *, low: float, high: float = math.inf,
               open_low: bool = False) -> float:
    """``value`` as a float when it is a finite real number (not a bool) in [low, high] ((low, high]
    with ``open_low``), else ConfigError ``"<engine>: <key> must be a number in [0, 1], got 'a'"``
    (:func:`rtseg.ranges.check_number`)."""
    check_number(f"{engine}: {key}", value, low, high, integer=False, open_low=open_low)
    return float(value)


def check_int(engine: str, key: str, value: Any, *, low: int, high: float = math.inf) -> int:
    """``value`` as an int when it is an integer (not a bool) in [low, high] (no upper bound by default), else
    ConfigError ``"<engine>: <key> must be an integer >= 1, got 1.5"`` (``… in [32, 2048] …`` with ``high``)."""
    check_number(f"{engine}: {key}", value, low, high, integer=True)
    return int(value)


def check_option(engine: str, key: str, value: Any) -> float | int:
    """``value`` of option ``key`` of ``engine``, one that the command lines offer too, checked against its range
    in :data:`rtseg.engines.limits.OPTION_LIMITS` (the one the command lines check): an int by :func:`check_int`,
    else a float by :func:`check_real`; ConfigError ``"slic: n_segments must be an integer >= 1, got 0"``."""
    limit = OPTION_LIMITS[key]
    if limit.integer:
        return check_int(engine, key, value, low=int(limit.low), high=limit.high)
    return check_real(engine, key, value, low=limit.low, high=limit.high, open_low=limit.open_low)


class ClassCountError(ConfigError):
    """Class names that are not one per class of the model: ``"<engine>: <given> class names for a model with
    <count> classes"``; ``given`` and ``count`` kept, so that a command line can name the file they came from."""

    def __init__(self, engine: str, given: int, count: int) -> None:
        super().__init__(f"{engine}: {given} class names for a model with {count} classes")
        self.given = given
        self.count = count


def check_class_names(engine: str, names: Any, count: int | None) -> tuple[str, ...]:
    """``names`` (an engine's ``class_names=``) as a tuple of strings, one per class of a model with ``count``
    classes (None: any number), else ConfigError naming ``engine``: ``"msrcnn: class_names must be a list of class
    names (strings), got str 'square'"`` (one string is no list of names: ``"cat"`` became the classes c, a, t),
    ``"msrcnn: class_names must be distinct, non-empty names of one line each, got ''"`` (as in a manifest:
    :func:`rtseg.manifest.ambiguous_class_name`) or ``"msrcnn: 1 class names for a model with 6 classes"``."""
    listed = None if isinstance(names, (str, bytes)) or not isinstance(names, Iterable) else list(names)
    if listed is None or not all(isinstance(name, str) for name in listed):
        raise ConfigError(f"{engine}: class_names must be a list of class names (strings), "
                          f"got {type(names).__name__} {names!r}"[:200])
    bad = ambiguous_class_name(listed)
    if bad is not None:
        raise ConfigError(f"{engine}: class_names must be distinct, non-empty names of one line each, "
                          f"got {bad!r}"[:200])
    if count is not None and len(listed) != count:
        raise ClassCountError(engine, len(listed), count)
    return tuple(listed)


def check_options(checks: OptionChecks, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the value of each one that ``checks`` names checked (in the order of ``options``: the
    first bad one is the ConfigError); the others unchanged."""
    return {key: checks[key](value) if key in checks else value for key, value in options.items()}


def given_class_names(engine: str, given: Any, default: Sequence[str] | None,
                      count: int | None) -> Sequence[str] | None:
    """The class names of an engine loaded from weights: ``given`` (its ``class_names=``; None: not given)
    checked against the ``count`` classes the weights say (their manifest; an official YOLACT .pth: its
    classification layer) (:func:`check_class_names`), before the network is built, else ``default``, the names
    the weights carry (None where they carry none: the engine's own default then)."""
    return default if given is None else check_class_names(engine, given, count)


def check_weights_path(engine: str, weights: Any) -> str:
    """``weights`` as a string when it is a path (str or os.PathLike) and not empty, else WeightsError (an empty
    string, often an unset variable, would be read as the current folder, ``.``)."""
    if isinstance(weights, bytes) or not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(f"{engine}: weights must be a file path (str or pathlib.Path), "
                           f"got {type(weights).__name__} {weights!r}"[:200])
    path = os.fspath(weights)
    if not path:
        raise WeightsError(f"{engine}: weights is an empty path (an unset variable?); give the weights file's path")
    return path
