"""Shared test settings: GPU tests skip without CUDA, fail when RTSEG_REQUIRE_CUDA=1."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or torch.cuda.is_available():
        return
    if os.environ.get("RTSEG_REQUIRE_CUDA") == "1":
        pytest.fail("CUDA required (RTSEG_REQUIRE_CUDA=1) but torch.cuda.is_available() is False")
    pytest.skip("needs CUDA")
