"""rtseg.ranges.number_problem (and check_number, its ConfigError): the one range check behind engine options, command-line options, model configs
and data files (their own messages are tested with them: test_api_inputs, test_train, test_weights, ...)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.ranges import check_number, number_problem


@pytest.mark.parametrize("value", [0, 3, 10, np.int64(3), np.int32(10), np.uint8(5)])
def test_integers_in_range_pass(value) -> None:
    assert number_problem(value, 0, 10, integer=True) is None


@pytest.mark.parametrize("value", [0, 0.5, 1, 1.0, np.float32(0.5), np.float64(1.0), np.int64(1), Fraction(1, 3)])
def test_reals_in_range_pass(value) -> None:
    assert number_problem(value, 0, 1, integer=False) is None


@pytest.mark.parametrize("value", [True, False, np.bool_(True), "1", None, [1], 1.0, 2.5, np.float32(2.0), math.nan])
def test_non_integers_are_refused_as_integers(value) -> None:
    """Bools (Python or numpy) are not numbers, and a float is not an integer even when whole."""
    assert number_problem(value, 0, 10, integer=True) == "must be an integer in [0, 10]"


@pytest.mark.parametrize("value", [True, False, np.bool_(False), "0.5", None, math.nan, math.inf, -math.inf,
                                   np.float32("nan"), np.float64("inf"), complex(0.5, 0)])
def test_non_finite_reals_are_refused(value) -> None:
    assert number_problem(value, 0, 1, integer=False) == "must be a number in [0, 1]"
    assert number_problem(value, integer=False) == "must be a finite number"


def test_bounds_closed_by_default_and_low_open_on_request() -> None:
    assert number_problem(0.0, 0, 1, integer=False) is None
    assert number_problem(1.0, 0, 1, integer=False) is None
    assert number_problem(0.0, 0, 1, integer=False, open_low=True) == "must be a number in (0, 1]"
    assert number_problem(1e-9, 0, 1, integer=False, open_low=True) is None
    assert number_problem(1.0, 0, 1, integer=False, open_low=True) is None  # the high bound stays closed
    assert number_problem(np.nextafter(1.0, 2.0), 0, 1, integer=False) == "must be a number in [0, 1]"
    assert number_problem(-1e-9, 0, 1, integer=False) == "must be a number in [0, 1]"
    assert number_problem(0, 0, integer=True, open_low=True) == "must be an integer > 0"
    assert number_problem(1, 0, integer=True, open_low=True) is None


@pytest.mark.parametrize("args, expected", [
    ((100000, 32, 2048), "must be an integer in [32, 2048]"),
    ((-5, 32, 2048), "must be an integer in [32, 2048]"),
    ((0, 1), "must be an integer >= 1"),
    ((9, -math.inf, 8), "must be an integer <= 8"),
    ((10**21, 1, 10**9), "must be an integer in [1, 1000000000]"),  # an integer bound written in full
])
def test_integer_wording(args, expected) -> None:
    assert number_problem(*args, integer=True) == expected


@pytest.mark.parametrize("args, kw, expected", [
    ((-1.0, 0.0), {}, "must be a finite number >= 0"),  # no upper bound: "finite" says inf is refused too
    ((math.inf, 0.0), {}, "must be a finite number >= 0"),
    ((0.0, 0.0), {"open_low": True}, "must be a finite number > 0"),
    ((5.0, 0.0, 1.0), {}, "must be a number in [0, 1]"),  # float bounds written short: 0 and 1, not 0.0, 1.0
    ((0.0, 0.01, 525600), {}, "must be a number in [0.01, 525600]"),
    ((2.0, -math.inf, 1.5), {}, "must be a finite number <= 1.5"),
])
def test_real_wording(args, kw, expected) -> None:
    assert number_problem(*args, integer=False, **kw) == expected


def test_unbounded_integers_are_finite_however_large() -> None:
    """An int too large for a float is still a finite number (no OverflowError from the finiteness check)."""
    assert number_problem(10**400, 0, integer=True) is None
    assert number_problem(10**400, integer=False) is None
    assert number_problem(10**400, 0, 10**9, integer=False) == "must be a number in [0, 1000000000]"


@pytest.mark.parametrize("value, kw, expected", [
    (0, {"integer": True}, "annotate: k must be an integer >= 1, got 0"),
    (1.5, {"integer": True}, "annotate: k must be an integer >= 1, got 1.5"),
    (True, {"integer": True}, "annotate: k must be an integer >= 1, got True"),
    ("2", {"integer": True}, "annotate: k must be an integer >= 1, got '2'"),
    (math.nan, {"integer": False}, "annotate: k must be a finite number >= 1, got nan"),
    (1.0, {"integer": False, "open_low": True}, "annotate: k must be a finite number > 1, got 1.0"),
])
def test_check_number_is_one_config_error_line(value, kw, expected) -> None:
    with pytest.raises(ConfigError) as info:
        check_number("annotate: k", value, 1, **kw)
    assert str(info.value) == expected


def test_check_number_passes_numbers_in_range() -> None:
    for value in (1, np.int64(7), 10**400):
        check_number("k", value, 1, integer=True)
    for value in (1, 1.5, np.float32(2.0), Fraction(3, 2)):
        check_number("k", value, 1, 2, integer=False)
