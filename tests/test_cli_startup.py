"""``rtseg --help``, ``rtseg demo --help`` and plain option mistakes answer without importing torch (seconds), from
every entry point: ``python run.py``, ``python -m rtseg`` and the ``rtseg`` console script. Run as a user runs
them, in a subprocess; ``PYTHONPROFILEIMPORTTIME`` lists every module the process imported (no timings are
asserted)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("rtseg")  # the console script pip installs beside the interpreter
ENTRIES = {
    "run.py": [sys.executable, str(REPO / "run.py")],
    "python -m rtseg": [sys.executable, "-m", "rtseg"],
    "rtseg script": [str(SCRIPT)],
}
CASES = {
    # name: (arguments, exit status, the one stderr line of an error, or the start of the help on stdout)
    "help": (["--help"], 0, "usage: rtseg [-h]"),
    "demo help": (["demo", "--help"], 0, "usage: rtseg demo [-h]"),
    "unknown option": (["--bogus"], 2, "rtseg: error: unrecognized arguments: --bogus (see rtseg --help)"),
    "bad int": (["--source", "x.mp4", "--max-frames", "abc"], 2,
                "rtseg: error: argument --max-frames: invalid int value: 'abc' (see rtseg --help)"),
    "bad backend": (["--source", "x.mp4", "--backend", "fast"], 2,
                    "rtseg: error: argument --backend: invalid choice: 'fast' (choose from 'eager', 'compile', "
                    "'tensorrt', 'onnx', 'auto') (see rtseg --help)"),
    "no source": (["--no-hud"], 2, "rtseg: error: --source is required (run without arguments for the demo)"),
    "out of range": (["--source", "x.mp4", "--vid-stride", "0"], 2,
                     "rtseg: error: --vid-stride 0: must be an integer >= 1"),
    "token without serve": (["--source", "x.mp4", "--serve-token", "t"], 2,
                            "rtseg: error: --serve-token needs --serve HOST:PORT"),
    "missing weights": (["--source", "x.mp4", "--weights", "none.safetensors"], 2,
                        "rtseg: error: --weights none.safetensors: file not found"),
    "demo out of range": (["demo", "--frames", "1"], 2, "rtseg demo: error: --frames 1: must be an integer >= 2"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_help_and_option_mistakes_answer_before_torch_is_imported(entry, case, tmp_path):
    """Each imported torch first (rtseg.cli -> rtseg.engines -> rtseg.engines.base -> torch: 2-2.5 s here, most of
    the command's time); now only the command line's own light modules load, and the answer is the same."""
    if entry == "rtseg script" and not SCRIPT.exists():
        pytest.skip(f"no console script {SCRIPT} (pip install -e . installs it)")
    args, code, said = CASES[case]
    r = subprocess.run(ENTRIES[entry] + args, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said_lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert "rtseg.cliargs" in imported and "torch" not in imported, sorted(m for m in imported if "rtseg" in m)
    assert r.returncode == code, (r.returncode, said_lines)
    if code == 0:
        assert r.stdout.startswith(said) and said_lines == [], (r.stdout[:200], said_lines)
    else:
        assert said_lines == [said] and r.stdout == ""
    assert not any(tmp_path.iterdir()), "nothing may be written"


def test_the_options_offered_are_importable_without_torch():
    """The names the command line offers (engines, backends) and the modules it checks options with load without
    torch."""
    code = ("import sys; import rtseg.cli, rtseg.demo, rtseg.engines.choose, rtseg.outputs; "
            "from rtseg.engines import BACKENDS, ENGINE_NAMES, INSTANCE_ENGINES; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
