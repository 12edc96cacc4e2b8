"""The argument parser every rtseg command line uses: usage errors as one-line ConfigErrors; range checks of
numeric options."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn, Sequence

from rtseg.errors import ConfigError
from rtseg.ranges import number_problem

SUBCOMMANDS = {"train": "rtseg.train.cli", "eval": "rtseg.eval.cli", "demo": "rtseg.demo"}
"""``rtseg``'s subcommands and the module each runs from (its ``main(argv) -> exit code``); here, importable
without torch, so that the entry point names the command before it imports anything heavy."""

NumberRange = tuple[str, float, float | None, str]
"""An option's range: its name, least value, most value (None: no limit), why the limit (said with it)."""


class TypedFloat(float):
    """``type=`` of a float option (``--lr``, ``--time-budget``, ``--score-threshold`` …): the number, which says
    itself as it was typed, so that a range error (:func:`check_range`) quotes the user's words
    (``--time-budget 0: …``, not ``0.0``; ``1e-9``, not ``1e-09``). Made a plain float once the options are
    checked (:func:`plain_floats`): nothing past the checks (a checkpoint, read with ``weights_only``) holds one."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "TypedFloat":
        try:
            number = super().__new__(cls, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None  # as argparse's own line
        number.text = text.strip()
        return number

    def __getnewargs__(self) -> tuple[str]:  # (copy and pickle remake it from its text)
        return (self.text,)

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def plain_floats(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each :class:`TypedFloat` made a plain float, also in a list of them (an option of several values);
    once the options are checked; returns ``args``."""
    for name, value in vars(args).items():
        if isinstance(value, TypedFloat):
            setattr(args, name, float(value))
        elif isinstance(value, list) and any(isinstance(v, TypedFloat) for v in value):
            setattr(args, name, [float(v) if isinstance(v, TypedFloat) else v for v in value])
    return args


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one-line ConfigErrors naming the command (exit code 2 via
    :func:`rtseg.errors.exit_status`), and refuses options given an empty value (``--output ""``, often an
    unset shell variable), which would otherwise read as "not given" (or as the current folder) and silently
    drop or misplace an output."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        words = list(sys.argv[1:] if args is None else args)
        takes_value = {s for a in self._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}
        for word, following in zip(words, words[1:] + [None]):
            option, eq, value = word.partition("=")
            if option.startswith("--") and option not in takes_value and self.allow_abbrev:  # argparse's prefixes
                named = [s for s in takes_value if s.startswith(option)]
                option = named[0] if len(named) == 1 else option
            if option in takes_value and ((eq and not value.strip()) or (not eq and following is not None
                                                                          and not following.strip())):
                self.error(f"{option} is empty (an unset shell variable?); give it a value")
        return super().parse_args(words, namespace)


class Once(argparse.Action):
    """``action=Once``: an option of one value (an output path, an address) that may be given once. argparse keeps
    the last of a repeated option, so ``--json a.json --json a.jsonl`` would write only a.jsonl; here the second one
    is a usage error instead: ``--json given twice (a.json, a.jsonl); give it once``. (Given once, the option holds
    a value other than its default, which no command line can give: the defaults of these options are None.)"""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, self.default) is not self.default:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)}, {values}); give it once")
        setattr(namespace, self.dest, values)


def check_range(option: str, value: float, low: float, high: float | None, why: str, *,
                open_low: bool = False) -> None:
    """ConfigError ``"--input-size 0: must be an integer in [32, 2048]<why>"`` unless ``value`` is a finite
    number from ``low`` (above it with ``open_low``) to ``high`` (None: no upper limit), said as an integer when
    argparse parsed it as one (:func:`rtseg.ranges.number_problem` says what is expected)."""
    problem = number_problem(value, low, math.inf if high is None else high, integer=isinstance(value, int),
                             open_low=open_low)
    if problem is not None:
        raise ConfigError(f"{option} {value}: {problem}{why}")


def check_ranges(args: argparse.Namespace, ranges: Sequence[NumberRange]) -> None:
    """:func:`check_range` of each option of ``ranges`` (every value of a multi-value one such as ``--size W H``);
    an option left unset (None) is not checked."""
    for option, low, high, why in ranges:
        value = getattr(args, option[2:].replace("-", "_"))
        for each in value if isinstance(value, (list, tuple)) else () if value is None else (value,):
            check_range(option, each, low, high, why)
