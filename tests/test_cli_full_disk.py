"""``--output`` on a full disk, run as a user runs it: a subprocess whose file size limit stands in for the disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_LIMITED_RUN = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # past the limit, write() fails with EFBIG (a full disk)
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY)); "
    "sys.argv = ['rtseg', *sys.argv[2:]]; "
    "runpy.run_module('rtseg', run_name='__main__')"
)


def test_a_recording_the_disk_cannot_hold_is_one_line_exit_2_and_the_existing_output_stays(tmp_path: Path) -> None:
    """4 frames: the whole recording is one fragment, written when the output closes. That failed write used
    to end with exit 0, no word, and the cut-off file (unplayable) renamed over the existing out.mp4."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier recording")
    r = subprocess.run([sys.executable, "-c", _LIMITED_RUN, "20000", "--source", "synthetic", "--max-frames", "4",
                        "--no-progress", "--output", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert errors == [f"rtseg: error: MP4 output {out}: writing the end of the recording failed (File too large); "
                      "free space or choose another path (what was written before is kept in "
                      f"{tmp_path / 'out.partial.mp4'})"], r.stderr
    assert out.read_bytes() == b"an earlier recording"
    assert (tmp_path / "out.partial.mp4").stat().st_size == 20000
