"""The command line's entry points at the edges of the process: Ctrl-C or SIGTERM while the CLI still imports,
standard streams that are full or closed, files this user may not read, image folders holding FIFOs or broken links.
Everything runs as a user runs it, in a subprocess, with real signals and real files."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from servers.helpers import make_clip

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "run.py")]
SCRIPT = Path(sys.executable).with_name("rtseg")  # the console script pip installs beside the interpreter
ENTRIES = {
    "run.py": RUN,
    "python -m rtseg": [sys.executable, "-m", "rtseg"],
    "rtseg script": [str(SCRIPT)],
    "python -m rtseg.train.fcn_trainer": [sys.executable, "-m", "rtseg.train.fcn_trainer"],
    "python -m rtseg.train.msrcnn_trainer": [sys.executable, "-m", "rtseg.train.msrcnn_trainer"],
    "python -m rtseg.data.export": [sys.executable, "-m", "rtseg.data.export"],
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("entry") / "clip.mp4", frames=6, width=64, height=48)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _shell(redirect: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """``cmd`` run with a shell redirection of its standard streams (``>&-``: stdout closed)."""
    return subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *cmd], cwd=REPO, env=_env(), timeout=120,
                          **kw)


def _slic(clip: Path, *more: str) -> list[str]:
    return RUN + ["--source", str(clip), "--engine", "slic", "--segments", "20", "--no-progress", *more]


_HOLD_TORCH = '''"""Test hook (sitecustomize): the first import of torch creates the file $RTSEG_TEST_IMPORTING and
waits there, so that a test signals the command line while it still imports."""
import os
import sys
import time


class _HoldTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            open(os.environ["RTSEG_TEST_IMPORTING"], "w").close()
            time.sleep(30)
        return None


sys.meta_path.insert(0, _HoldTorch())
'''


def _signal_while_importing_torch(cmd: list[str], signum: int, folder: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the empty folder ``folder``/run and send it ``signum`` once it imports torch (held there by a
    sitecustomize in ``folder``/hook: the moment is known, not guessed with a sleep)."""
    hook, run = folder / "hook", folder / "run"
    hook.mkdir()
    run.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD_TORCH)
    importing = hook / "importing"
    env = {**_env(), "RTSEG_TEST_IMPORTING": str(importing),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run, env=env)
    try:
        deadline = time.monotonic() + 60
        while not importing.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert importing.exists(), f"{cmd} did not get to importing torch (exit {proc.poll()})"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("signum,said,code", [(signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("entry,args,prog", [
    ("run.py", ["--source", "synthetic", "--output", "o.mp4"], "rtseg"), ("python -m rtseg", [], "rtseg"),
    ("rtseg script", ["--source", "synthetic", "--json", "o.jsonl"], "rtseg"),
    ("run.py", ["eval", "--engine", "slic", "--max-images", "1", "--json", "m.json"], "rtseg eval"),
    ("python -m rtseg", ["eval", "--engine", "slic"], "rtseg eval"),
    ("rtseg script", ["train", "--data", "synthetic", "--iters", "1", "--out", "m.safetensors"], "rtseg train"),
    ("python -m rtseg", ["train", "--data", "synthetic", "--iters", "2", "--out", "out/m.safetensors", "--work-dir",
                         "w"], "rtseg train"), ("run.py", ["demo"], "rtseg demo"),
    ("python -m rtseg.train.fcn_trainer", ["--out", "f.safetensors"], "fcn_trainer"),
    ("python -m rtseg.train.msrcnn_trainer", ["--out", "m.safetensors"], "msrcnn_trainer"),
    ("python -m rtseg.data.export", ["--out", "synthetic"], "export")])
def test_a_signal_while_the_cli_imports_is_one_line_naming_the_command(entry, args, prog, signum, said, code, tmp_path):
    """Ctrl-C or SIGTERM while torch still imports (seconds), before the command writes anything. Ctrl-C was a
    KeyboardInterrupt traceback and a death by the signal, as the import ran before the wrapper that reports it;
    then 'rtseg: interrupted' for the subcommands too. SIGTERM ended the process (-15) without a word, even
    `rtseg train`'s, which acts as Ctrl-C once training runs (tests/test_train.py). The FCN / MS R-CNN trainers
    imported torch at the top of the module `python -m` runs, before their wrapper: the same traceback / -15; so
    did the synthetic export (and the package rtseg.data it is in imported every data set). Each command here gets
    to torch with options that pass their checks (``--help`` and an option mistake answer before torch is imported:
    tests/test_cli_startup.py)."""
    if entry == "rtseg script" and not SCRIPT.exists():
        pytest.skip(f"no console script {SCRIPT} (pip install -e . installs it)")
    r = _signal_while_importing_torch(ENTRIES[entry] + args, signum, tmp_path)
    assert r.returncode == code and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"{prog}: {said}"], r.stderr
    assert r.stdout == "" and not any((tmp_path / "run").iterdir())


def test_each_subcommand_runs_from_a_module_with_a_main():
    """rtseg.cliargs.SUBCOMMANDS, the one table the entry point (naming the command before heavy imports) and the
    CLI (dispatching) read: each module has ``main(argv)``."""
    import importlib

    from rtseg.cliargs import SUBCOMMANDS

    assert set(SUBCOMMANDS) == {"train", "eval", "demo"}
    assert all(callable(importlib.import_module(module).main) for module in SUBCOMMANDS.values())


def test_dir_lists_the_names_that_load_at_first_use_without_loading_them():
    """dir() and tab completion show the lazy names of rtseg (and of the other modules of
    rtseg.entry.lazy_attributes) beside the module's own (was: neither load nor annotate), in a fresh interpreter
    that dir() leaves without torch."""
    code = ("import sys, rtseg, rtseg.data.export as export\n"
            "print(sorted({'load', 'annotate', 'Detections', 'ConfigError', '__doc__'} - set(dir(rtseg))))\n"
            "print(sorted({'export_mp4', 'main'} - set(dir(export))), 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "[]\n[] False\n", "")


def test_full_stdout_is_one_line_and_keeps_the_outputs(clip, tmp_path):
    """stdout on /dev/full: the summary's write failed with an OSError traceback; now one line, exit 2, and
    the JSON lines written before it are all there."""
    out = tmp_path / "o.jsonl"
    with open("/dev/full", "w") as full:
        r = subprocess.run(_slic(clip, "--json", str(out)), stdout=full, stderr=subprocess.PIPE, text=True,
                           cwd=REPO, env=_env(), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "rtseg: error: standard output: write failed (No space left on device); the files written are kept; "
        "check where standard output goes (a full disk, a closed pipe)"]
    assert len(out.read_text().splitlines()) == 6


def test_json_lines_to_a_full_stdout_names_stdout(clip):
    """``--json -`` with stdout on /dev/full: the line said "JSON Lines output -: write failed", where every other
    line of that output says stdout."""
    with open("/dev/full", "w") as full:
        r = subprocess.run(_slic(clip, "--json", "-"), stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=_env(), timeout=120)
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, [
        "rtseg: error: JSON Lines output stdout: write failed (No space left on device); free space or choose another "
        "path (the lines before it are kept)"]), r.stderr


@pytest.mark.parametrize("entry,prog", [("python -m rtseg.train.fcn_trainer", "fcn_trainer"),
                                        ("python -m rtseg.train.msrcnn_trainer", "msrcnn_trainer"),
                                        ("python -m rtseg.data.export", "export")])
def test_help_to_a_full_stdout_is_one_line(entry, prog):
    """The light entry modules' --help on /dev/full: argparse's write failed unseen and the exit was 0."""
    with open("/dev/full", "w") as full:
        r = subprocess.run(ENTRIES[entry] + ["--help"], stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=_env(), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [
        f"{prog}: error: standard output: write failed (No space left on device); the files written are kept; "
        "check where standard output goes (a full disk, a closed pipe)"]


@pytest.mark.parametrize("entry,prog", [("python -m rtseg.train.fcn_trainer", "fcn_trainer"),
                                        ("python -m rtseg.train.msrcnn_trainer", "msrcnn_trainer")])
@pytest.mark.parametrize("args,code,said", [
    (["--help"], 0, ""),
    (["--out", "m.pth"], 2, "error: --out m.pth: must end in .safetensors"),
    (["--out", "m.safetensors", "--steps", "0"], 2, "error: --steps 0: must be an integer in [1, 1000000000]"),
    (["--out", "m.safetensors", "--bogus"], 2, "error: unrecognized arguments: --bogus")])
def test_trainer_help_and_bad_options_answer_before_torch_is_imported(entry, prog, args, code, said, tmp_path):
    """The trainers parsed their options only once their module had imported torch (seconds): ``--help`` took
    4-5 s. Now torch is never imported for them (``-X importtime`` lists every module imported)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *ENTRIES[entry][1:], *args], capture_output=True,
                       text=True, cwd=tmp_path, env=_env(), timeout=120)
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said_lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert "rtseg.train.recipe" in imported and "torch" not in imported, sorted(imported)
    assert r.returncode == code and len(said_lines) == (code != 0), (r.returncode, said_lines)
    assert all(line.startswith(f"{prog}: {said}") for line in said_lines), said_lines
    assert ("usage:" in r.stdout) == (code == 0) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,code,said", [
    (["--help"], 0, ""),
    (["--out", "x", "--frames", "0"], 2, "error: --frames 0: must be an integer >= 1"),
    (["--out", "x", "--formats", "gif"], 2, "error: --formats gif: choose from mp4, coco, labelme"),
    (["--out", "x", "--width", "161"], 2, "error: --width 161 --height 480: the clip (H.264 yuv420p) needs an even"),
    (["--out", "x", "--bogus"], 2, "error: unrecognized arguments: --bogus"),
    (["--out", "."], 2, "error: --out .: clip.mp4 already exists (an earlier export?")])
def test_export_help_and_bad_options_answer_before_torch_is_imported(args, code, said, tmp_path):
    """``python -m rtseg.data.export`` parsed its options only once the exporters had imported torch (3.4 s for
    ``--help``), unlike the other commands (README: "--help and option mistakes answer before torch is imported").
    Now torch is never imported for them (``-X importtime`` lists every module imported); nothing is written."""
    (tmp_path / "clip.mp4").write_bytes(b"an earlier export")
    r = subprocess.run([sys.executable, "-X", "importtime", *ENTRIES["python -m rtseg.data.export"][1:], *args],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said_lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert "rtseg.cliargs" in imported and "torch" not in imported, sorted(imported)
    assert r.returncode == code and len(said_lines) == (code != 0), (r.returncode, said_lines)
    assert all(line.startswith(f"export: {said}") for line in said_lines), said_lines
    assert ("usage:" in r.stdout) == (code == 0)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize("entry,args,says,not_says", [
    ("python -m rtseg.train.fcn_trainer", [], ["--size W H training frame width and height in pixels (default: 128 96)",
                                               "--width WIDTH channel multiplier of VGG16 (1.0 = paper; default: 0.125)"],
     "(128, 96)"),
    ("python -m rtseg.train.msrcnn_trainer", [], ["(default: 160 120)"], "(160, 120)"),
    ("python -m rtseg", ["demo"], ["--device DEVICE cpu, cuda or cuda:N (default: cpu)"], "cpu or cuda "),
    ("python -m rtseg.data.export", [], ["comma-separated subset of mp4,coco,labelme (default: mp4,coco,labelme)"],
     None),
    ("python -m rtseg", ["train"], ["of any classes (those of other classes load but for the class-sized layers, "
                                    "which are learnt anew)"], "same architecture")])
def test_help_says_the_defaults_as_typed_and_what_is_taken(entry, args, says, not_says):
    """--help gave --size's default as a Python tuple "(128, 96)" (typed as 128 96), none for fcn_trainer --width
    or export --formats, "cpu or cuda" for rtseg demo --device (cuda:N is taken), and rtseg train --init weights "of
    the same architecture" (weights of other classes are taken)."""
    r = subprocess.run([*ENTRIES[entry], *args, "--help"], capture_output=True, text=True, cwd=REPO,
                       env={**_env(), "COLUMNS": "400"}, timeout=120)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and all(s in text for s in says) and (not_says is None or not_says not in text), text


def test_json_lines_to_a_closed_stdout_is_one_line(clip):
    """``--json - >&-``: was AttributeError ('NoneType' object has no attribute 'fileno'), then a write error
    advising to free space."""
    r = _shell(">&-", _slic(clip, "--json", "-"), stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtseg: error: JSON Lines output stdout: standard output is "
                                                   "closed or not open for writing;"), r.stderr


def test_closed_stderr_does_not_stop_the_run(clip, tmp_path):
    """``2>&-``: the run died (exit 1) on sys.stderr being None, before writing anything; now it writes every
    output, and no line meant for stderr lands on stdout."""
    out, video = tmp_path / "o.jsonl", tmp_path / "o.mp4"
    r = _shell("2>&-", _slic(clip, "--json", str(out), "--output", str(video)), stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0
    assert len(out.read_text().splitlines()) == 6 and video.stat().st_size > 0
    assert r.stdout.startswith("frames 6") and "rtseg:" not in r.stdout, r.stdout


def _unreadable_by_this_user(cmd: list[str]) -> list[str]:
    """``cmd`` so that a file of mode 000 cannot be read: as is for a user, without root's permission
    override (setpriv drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH) for root."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a file of mode 000 stays readable")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]


@pytest.mark.parametrize("kind", ["video", "image"])
def test_a_file_this_user_may_not_read_says_permission_denied(kind, clip, tmp_path):
    """Was reported as a damaged file: 'it is not a video FFmpeg can decode, or damaged …' / 'not a readable
    image file' and 'check that the files are images OpenCV can decode'."""
    source = tmp_path / ("v.mp4" if kind == "video" else "b.png")
    if kind == "video":
        shutil.copy(clip, source)
    else:
        cv2.imwrite(str(source), np.zeros((8, 8, 3), np.uint8))
    source.chmod(0)
    r = subprocess.run(_unreadable_by_this_user(_slic(source, "--json", str(tmp_path / "o.jsonl"))),
                       capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    what = "video file" if kind == "video" else "image"
    assert r.stderr.strip().splitlines() == [
        f"rtseg: error: cannot read {what} {source}: permission denied; check the file's permissions"]


def test_a_single_unreadable_image_is_one_line(tmp_path):
    """Was two lines: a 'skipped …' warning, then 'cannot read any image of x.png (e.g. x.png)'."""
    image = tmp_path / "garbage.png"
    image.write_bytes(b"\x89PNG garbage" * 10)
    r = subprocess.run(_slic(image, "--json", str(tmp_path / "o.jsonl")), capture_output=True, text=True,
                       cwd=REPO, env=_env(), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"rtseg: error: cannot read image {image}: not a readable image file"]


def test_fifo_and_broken_link_in_a_folder_are_warned_of_once_and_never_block(tmp_path):
    """A FIFO and a symbolic link to nothing named like images were left out without a word; now each is one
    warning (no second summary line about the same file), and the FIFO, which has no writer, is never waited
    on. A FIFO given as the source is one line too."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "d.png"):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 90, np.uint8))
    (folder / "b.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(folder / "c.png")
    out = tmp_path / "o.jsonl"
    r = subprocess.run(_slic(folder, "--json", str(out)), capture_output=True, text=True, cwd=REPO, env=_env(),
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert [line for line in r.stderr.splitlines() if "b.png" in line or "c.png" in line] == [
        f"rtseg: warning: skipped {folder / 'b.png'}: file not found (or a symbolic link to nothing)",
        f"rtseg: warning: skipped {folder / 'c.png'}: not a regular file (a FIFO, socket, device or folder)"]
    assert len(out.read_text().splitlines()) == 2
    r = subprocess.run(_slic(folder / "c.png", "--json", str(out)), capture_output=True, text=True, cwd=REPO,
                       env=_env(), timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"rtseg: error: cannot read image {folder / 'c.png'}: not a regular file (a FIFO, socket, device or folder)"]
