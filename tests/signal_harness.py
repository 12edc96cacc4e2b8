"""Test harness (tests/test_signals.py): ``python signal_harness.py ENTRY ARGS…`` runs ``python -m ENTRY ARGS…``
(``rtseg``, ``rtseg.train.fcn_trainer`` …) with moments held, so that a test signals the process at a known moment.

``$RTSEG_TEST_HOLD`` names the moments, comma-separated, in the order the run meets them: ``module:Qual.name`` the
first call of that function, before it runs; ``module:Qual.name:after`` the same, once it has returned; ``exit``
the interpreter's shutdown, while it tears its modules down (after Python has put back the default action of the
signals it handled). At the i-th moment the process creates the file ``held<i>`` in ``$RTSEG_TEST_DIR`` and waits
until ``go<i>`` is there.
"""
from __future__ import annotations

import importlib
import os
import runpy
import sys
import time
from typing import Any, Callable


def wait(i: int, folder: str = os.environ["RTSEG_TEST_DIR"], exists: Callable[[str, int], bool] = os.access,
         found: int = os.F_OK, open_: Callable[..., int] = os.open, close: Callable[[int], None] = os.close,
         flags: int = os.O_CREAT | os.O_WRONLY, sleep: Callable[[float], None] = time.sleep) -> None:
    """Announce moment ``i`` and wait for the test's go. Only functions of C bound here: at shutdown the modules of
    Python code (``os.path`` …) may be torn down already."""
    close(open_(f"{folder}/held{i}", flags))
    while not exists(f"{folder}/go{i}", found):
        sleep(0.01)


class AtShutdown:
    """Waits at moment ``i`` when the interpreter's shutdown deletes it (kept in ``sys``: CPython clears that dict
    late in its shutdown, after it put back the signals' default actions, and always; a global of this module may
    outlive the clearing of ``__main__`` — the functions it patches in keep its globals — and a ``__del__`` is not
    guaranteed for objects alive at exit: 3 runs in 46 never reached the moment)."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __del__(self, wait: Callable[[int], None] = wait) -> None:
        wait(self.i)


def hold(i: int, spec: str) -> None:
    """Make the first call of the function ``spec`` names wait at moment ``i`` (before it runs, or ``:after``)."""
    module, qualname, *after = spec.split(":")
    owner: Any = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original, calls = getattr(owner, name), []

    def held(*args: Any, **kwargs: Any) -> Any:
        first = not calls
        calls.append(1)
        if first and not after:
            wait(i)
        result = original(*args, **kwargs)
        if first and after:
            wait(i)
        return result

    setattr(owner, name, held)


if __name__ == "__main__":
    for index, moment in enumerate(filter(None, os.environ["RTSEG_TEST_HOLD"].split(","))):
        if moment == "exit":  # (in sys, which shutdown always clears after the signals' fini; a global of this
            sys.rtseg_test_at_shutdown = AtShutdown(index)  # module may outlive it, its __del__ never called)
        else:
            hold(index, moment)
    entry, *arguments = sys.argv[1:]
    sys.argv = [entry, *arguments]
    runpy.run_module(entry, run_name="__main__", alter_sys=True)
