"""``--output`` on a full disk, run as a user runs it: a subprocess whose file size limit stands in for the disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from servers.helpers import FILE_LIMIT_RUN

REPO = Path(__file__).resolve().parents[1]

def test_a_recording_the_disk_cannot_hold_is_one_line_exit_2_and_the_existing_output_stays(tmp_path: Path) -> None:
    """4 frames: the whole recording is one fragment, written when the output closes. That failed write used
    to end with exit 0, no word, and the cut-off file (unplayable) renamed over the existing out.mp4."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier recording")
    r = subprocess.run([sys.executable, "-c", FILE_LIMIT_RUN, "20000", "--source", "synthetic", "--max-frames", "4",
                        "--no-progress", "--output", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert errors == [f"rtseg: error: MP4 output {out}: writing the end of the recording failed (File too large); "
                      "free space or choose another path (what was written before is kept in "
                      f"{tmp_path / 'out.partial.mp4'})"], r.stderr
    assert out.read_bytes() == b"an earlier recording"
    assert (tmp_path / "out.partial.mp4").stat().st_size == 20000


_TRAIN = ["train", "--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
          "--num-prototypes", "4", "--iters", "1", "--batch-size", "2", "--warmup", "1", "--workers", "0",
          "--threads", "1", "--val-images", "1", "--ckpt-every", "0"]


def _limited(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``rtseg *args`` in a subprocess whose files may grow to ``limit`` bytes (past it a write fails: EFBIG)."""
    return subprocess.run([sys.executable, "-c", FILE_LIMIT_RUN, str(limit), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_checkpoint_the_disk_cannot_hold_is_one_line_and_leaves_no_tmp_file(tmp_path: Path) -> None:
    """torch.save reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
    pos`` (was that traceback, exit 1 and an empty checkpoint.pth.tmp left behind)."""
    out, work = tmp_path / "w.safetensors", tmp_path / "w.train"
    r = _limited(100_000, *_TRAIN, "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"rtseg train: error: checkpoint {work / 'checkpoint.pth'}: write failed (File too large); free space or "
        "write the checkpoints to another folder; no earlier checkpoint of this run is kept"), r.stderr
    assert list(work.iterdir()) == [] and not out.exists()


def test_weights_the_disk_cannot_hold_are_one_line_naming_the_checkpoint_that_has_them(tmp_path: Path) -> None:
    """--out on a full disk (its .tmp file is /dev/full: ENOSPC) after the checkpoint was written: one line that
    says where the trained steps are (was an OSError traceback from save_model)."""
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    (out.parent / "w.safetensors.tmp").symlink_to("/dev/full")
    work = tmp_path / "work"
    r = _limited(2**40, *_TRAIN, "--out", str(out), "--work-dir", str(work))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"rtseg train: error: --out {out}: write failed (No space left on device); free space or "
                           f"choose another path; the model trained to step 1 is in {work / 'checkpoint.pth'} "
                           "(usable as --weights); export it with rtseg train "), r.stderr
    assert line.endswith(f"--resume {work / 'checkpoint.pth'} once there is room"), line
    assert sorted(p.name for p in out.parent.iterdir()) == [] and (work / "checkpoint.pth").is_file()
