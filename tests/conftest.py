"""Shared test settings: GPU tests skip without CUDA, fail when RTSEG_REQUIRE_CUDA=1; torch's thread count per
test; a real Ctrl-C."""
from __future__ import annotations

import os
import signal
from typing import Any, Callable, Iterator

import cv2
import pytest
import torch

#: OpenCV is imported here, before any test module imports PyAV: after PyAV, OpenCV's window never opens
#: (``WindowSink`` refuses then; tests/test_window.py needs it to open).
OPENCV_VERSION = cv2.__version__

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a suite started in the background (`cmd &`, nohup):
    # an ignored signal stays ignored in every child, so the commands the tests Ctrl-C would not see it; a handled
    # one is reset to the default when a child starts, so they get Ctrl-C as from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Intra-op threads each test starts with: the machine's cores shared among pytest-xdist's workers, at most 2
#: (the CI and development machines have 2 cores and run 2 workers: 1 thread each, none waiting on another).
TEST_TORCH_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or torch.cuda.is_available():
        return
    if os.environ.get("RTSEG_REQUIRE_CUDA") == "1":
        pytest.fail("CUDA required (RTSEG_REQUIRE_CUDA=1) but torch.cuda.is_available() is False")
    pytest.skip("needs CUDA")


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """Every test starts with :data:`TEST_TORCH_THREADS` torch threads, whatever an earlier test set: a count set
    by one test (``tiny_engine`` sets 1) must not carry over to the rest of the run, where results would then
    depend on the order tests ran in."""
    torch.set_num_threads(TEST_TORCH_THREADS)


@pytest.fixture
def sigint_at_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any, str, int], None]]:
    """``arm(obj, name, n)``: the n-th call of ``obj.name`` first raises a real SIGINT, handled by Python's
    default handler (KeyboardInterrupt) whatever handler an earlier test left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def arm(obj: Any, name: str, n: int) -> None:
        original, calls = getattr(obj, name), [0]

        def interrupting(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == n:
                signal.raise_signal(signal.SIGINT)
            return original(*args, **kwargs)

        monkeypatch.setattr(obj, name, interrupting)

    yield arm
    signal.signal(signal.SIGINT, previous)
