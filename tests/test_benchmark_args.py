"""Benchmark scripts' options, run as a user runs them: ``python benchmarks/<script>.py ...`` in a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two interpreters that import torch: ~7 s each on 2 cores
@pytest.mark.parametrize("option", ["--decode-threads", "--cv2-threads", "--mp4-slice-threads"])
def test_a_negative_thread_count_is_one_argparse_line_before_any_work(option, tmp_path):
    """Both were taken unchecked: a negative decoder thread count went to FFmpeg, a negative OpenCV one was
    OpenCV's default unsaid; the benchmark ran (a result written) either way."""
    result = tmp_path / "result"
    r = subprocess.run([sys.executable, "benchmarks/pipeline_efficiency.py", option, "-2", "--frames", "8",
                        "--size", "64x48", "--result", str(result)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"pipeline_efficiency.py: error: argument {option}: -2 is negative; give 0 or more"
    assert r.stderr.startswith("usage: ") and not result.with_suffix(".json").exists()
