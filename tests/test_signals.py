"""Ctrl-C, SIGTERM and SIGHUP at the moments the other signal tests do not reach: while a command checks its options,
while `rtseg eval` reads its data, loads its engine, evaluates or writes its metrics, between the option checks and
the trainer's own handler and after it, during a training step of each trainer, a second Ctrl-C while a trainer saves
the checkpoint the first one asked for, a second one while the interpreter shuts down after a run the first one
stopped, a SIGTERM to the process group of a training run with DataLoader workers, and a hang-up (SIGHUP) whose
terminal is gone, or one that ``nohup`` ignores.

Every run is a real `python -m ...` process (tests/signal_harness.py) and every signal is sent at a moment the
process announces (a file it creates and waits beside), not after a guessed sleep."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import av
import pytest
import torch

from servers.helpers import make_clip

if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:  # a suite started under nohup: as tests/conftest.py does for
    # SIGINT, handle it (doing nothing) instead, so that the commands started here get SIGHUP's default (an ignored
    # signal stays ignored in every child, a handled one is reset when a child starts), as from a terminal
    signal.signal(signal.SIGHUP, lambda _signum, _frame: None)

HARNESS = Path(__file__).with_name("signal_harness.py")
TRAIN = ["train", "--data", "synthetic", "--train-images", "2", "--val-images", "1", "--input-size", "64",
         "--fpn-channels", "16", "--num-prototypes", "4", "--batch-size", "1", "--workers", "0", "--threads", "1",
         "--ckpt-every", "0"]
"""A tiny `rtseg train` (add --iters and --out)."""


def _run(folder: Path, command: Sequence[str], holds: Sequence[tuple[str, int | None]],
         entry: str = "rtseg", group: bool = False, release: bool = True, terminal: bool = False,
         log: str | None = None, nohup: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m entry command`` in ``folder`` through the harness with the moments ``holds`` (harness specs,
    in the order the run meets them), sending each one's signal (None: none) once a process waits there: to the
    process, or with ``group`` to its process group (its own, with its children: ``kill -- -PGID``, ``timeout``,
    and then no process of the group may outlive the run). ``release`` False leaves the processes at the last
    moment there (a hung DataLoader worker).

    ``terminal``: stderr, and stdout unless ``log`` takes it, go to a pseudo-terminal that nobody reads and that is
    closed before the last moment's signal, as a dropped ssh session's is (a write there fails then: EIO); the
    result's stdout or stderr is "" then. ``log``: stdout goes to that file of ``folder`` (``> train.log``).
    ``nohup``: the run starts under ``nohup`` (SIGHUP ignored)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RTSEG_TEST_DIR": str(folder),
           "RTSEG_TEST_HOLD": ",".join(spec for spec, _ in holds)}
    with contextlib.ExitStack() as streams:
        tty, far_end = os.openpty() if terminal else (None, subprocess.PIPE)
        if tty is not None:
            streams.callback(os.close, far_end)
        stdout = streams.enter_context(open(folder / log, "w")) if log else far_end
        proc = subprocess.Popen([*(["nohup"] if nohup else []), sys.executable, str(HARNESS), entry, *command],
                                cwd=folder, env=env, text=True, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=far_end, start_new_session=group)
    try:
        for i, (spec, signum) in enumerate(holds):
            held, deadline = folder / f"held{i}", time.monotonic() + 120
            while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if not held.exists():
                proc.kill()
                pytest.fail(f"the run ended (exit {proc.wait()}) before {spec}: {proc.communicate()[1]}")
            if tty is not None and i == len(holds) - 1:
                os.close(tty)
                tty = None
            if signum is not None and group:
                os.killpg(proc.pid, signum)
            elif signum is not None:
                proc.send_signal(signum)
            if release or i < len(holds) - 1:
                (folder / f"go{i}").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if tty is not None:
            os.close(tty)
        left = _group(proc.pid) if group else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the run left running: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out or "", err or "")


def _group(pgid: int) -> list[int]:
    """The processes (/proc) of the process group ``pgid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # (ended meanwhile)
            if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(int(entry))
    return found


def _files(folder: Path) -> list[str]:
    """The files a run left in ``folder``, the harness's own marks left out."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(("held", "go")))


@pytest.mark.parametrize("entry,command,prog,signum", [
    ("rtseg", ["eval", "--engine", "slic", "--json", "m.json"], "rtseg eval", signal.SIGTERM),
    ("rtseg", [*TRAIN, "--iters", "1", "--out", "m.safetensors"], "rtseg train", signal.SIGTERM),
    ("rtseg.train.fcn_trainer", ["--out", "f.safetensors"], "fcn_trainer", signal.SIGTERM),
    ("rtseg", ["eval", "--engine", "slic", "--json", "m.json"], "rtseg eval", signal.SIGHUP)],
    ids=["eval", "train", "fcn_trainer", "eval SIGHUP"])
def test_sigterm_while_the_options_are_read_is_one_line(entry, command, prog, signum, tmp_path):
    """SIGTERM while argparse reads the options (before torch is imported): the process ended without a word (-15):
    the guard of the start-up covered the imports only. SIGHUP (a closed terminal) ended it so at any moment (-1);
    now it is ``hung up`` and 129 (128 + SIGHUP, as a shell reports it) wherever SIGTERM is ``terminated``, 143."""
    said, status = ("terminated", 143) if signum == signal.SIGTERM else ("hung up", 129)
    r = _run(tmp_path, command, [("argparse:ArgumentParser.parse_args", signum)], entry)
    assert (r.returncode, r.stderr.splitlines()) == (status, [f"{prog}: {said}"]), (r.returncode, r.stderr)
    assert r.stdout == "" and _files(tmp_path) == []


@pytest.mark.parametrize("moment", ["rtseg.eval.cli:open_dataset", "rtseg.eval.cli:load_engine",
                                    "rtseg.eval.runners:evaluate_superpixel_engine", "pathlib:Path.write_bytes:after"],
                         ids=["data set", "engine", "evaluation", "metrics written"])
def test_sigterm_during_eval_is_one_line_and_leaves_no_file(moment, tmp_path):
    """SIGTERM while `rtseg eval` opens its data set, loads its engine, evaluates or writes the --json metrics (the
    temporary file written, not yet renamed): the process ended without a word (-15), in the last case leaving
    the temporary file. Now one line and 143, and no file (the metrics are written whole or not at all)."""
    r = _run(tmp_path, ["eval", "--engine", "slic", "--segments", "20", "--max-images", "2", "--resize", "64x48",
                        "--json", "m.json"], [(moment, signal.SIGTERM)])
    assert (r.returncode, r.stderr.splitlines()[-1:]) == (143, ["rtseg eval: terminated"]), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and _files(tmp_path) == []
    assert ("2 images, slic" in r.stdout) == moment.endswith(":after")  # printed before they are written


@pytest.mark.parametrize("moment", ["rtseg.train.cli:run", "rtseg.train.cli:run:after"],
                         ids=["before training", "after training"])
def test_sigterm_around_the_trainers_own_handler_is_one_line(moment, tmp_path):
    """SIGTERM once the trainer is imported but before training installs its handler (which saves the steps done),
    and once training has written the weights and put the handler back: the process ended without a word (-15)."""
    r = _run(tmp_path, [*TRAIN, "--iters", "1", "--out", "m.safetensors"], [(moment, signal.SIGTERM)])
    assert r.returncode == 143 and r.stderr.splitlines()[-1:] == ["rtseg train: terminated"], (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    if moment.endswith(":after"):  # the trained weights stay
        assert "wrote m.safetensors" in r.stdout and (tmp_path / "m.safetensors").is_file()
    else:
        assert r.stdout == "" and _files(tmp_path) == []


def test_a_second_ctrl_c_while_the_checkpoint_is_saved_does_not_cut_it_short(tmp_path):
    """Ctrl-C after step 1, a second one while the checkpoint of that step is written, a third while the interpreter
    shuts down. The second raised KeyboardInterrupt in the middle of torch.save: the half-written file was removed,
    so the step was lost and the line saying where the checkpoint is and how to continue never came; the third
    ended the process by the signal (-2). Now the checkpoint is whole, said, and the status is the first Ctrl-C's."""
    r = _run(tmp_path, [*TRAIN, "--iters", "5", "--out", "m.safetensors"],
             [("rtseg.train.trainer:Trainer.train_step:after", signal.SIGINT), ("torch:save", signal.SIGINT),
              ("exit", signal.SIGINT)])
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    checkpoint = tmp_path / "m.train" / "checkpoint.pth"
    assert f"interrupted at step 1: checkpoint {checkpoint.relative_to(tmp_path)}; continue with" in r.stdout
    assert r.stderr.splitlines() == ["rtseg train: interrupted"]
    assert torch.load(checkpoint, weights_only=True)["step"] == 1
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("entry,command,moment,log,signum", [
    ("rtseg", [*TRAIN, "--iters", "5", "--out", "m.safetensors"],
     "rtseg.engines.yolact:YolactEngine.preprocess_batch:after", "stdout", signal.SIGTERM),
    ("rtseg.train.fcn_trainer", ["--out", "m.safetensors", "--steps", "5", "--images", "2", "--size", "32", "32",
                                 "--width", "0.01"], "rtseg.engines.fcn:FcnEngine.preprocess:after", "stderr",
     signal.SIGTERM),
    ("rtseg.train.msrcnn_trainer", ["--out", "m.safetensors", "--steps", "5", "--images", "2", "--size", "64", "48"],
     "rtseg.engines.msrcnn:MsrcnnEngine.preprocess:after", "stderr", signal.SIGTERM),
    ("rtseg.train.fcn_trainer", ["--out", "m.safetensors", "--steps", "5", "--images", "2", "--size", "32", "32",
                                 "--width", "0.01"], "rtseg.engines.fcn:FcnEngine.preprocess:after", "stderr",
     signal.SIGINT)], ids=["rtseg train", "fcn_trainer", "msrcnn_trainer", "fcn_trainer Ctrl-C"])
def test_a_stop_signal_during_training_saves_the_checkpoint_and_ends_with_its_status(entry, command, moment, log,
                                                                                     signum, tmp_path):
    """SIGTERM during the first training step of each trainer: the steps done are saved and the way to continue said,
    as on Ctrl-C, but the run ended as Ctrl-C does (``interrupted``, 130) where a SIGTERM is 143 (128 + 15, as a shell
    reports it and as rtseg reports a SIGTERM at any other moment). Now ``terminated`` and 143; Ctrl-C stays
    ``interrupted`` and 130."""
    said, status = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
    r = _run(tmp_path, command, [(moment, signum)], entry)
    prog = "rtseg train" if entry == "rtseg" else entry.rsplit(".", 1)[1]
    assert (r.returncode, r.stderr.splitlines()[-1:]) == (status, [f"{prog}: {said}"]), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    checkpoint = Path("m.train", "checkpoint.pth")
    assert f"{said} at step 0: checkpoint {checkpoint}; continue with " in getattr(r, log)
    assert torch.load(tmp_path / checkpoint, weights_only=True)["step"] == 0
    assert not (tmp_path / "m.safetensors").exists()


def _train(workers: int) -> list[str]:
    """The tiny `rtseg train` (:data:`TRAIN`) with ``workers`` DataLoader workers."""
    i = TRAIN.index("--workers") + 1
    return [*TRAIN[:i], str(workers), *TRAIN[i + 1:]]


@pytest.mark.parametrize("moment", ["torch.utils.data._utils.worker:_worker_loop",
                                    "torch.utils.data.dataloader:_MultiProcessingDataLoaderIter._reset",
                                    "multiprocessing.connection:answer_challenge"],
                         ids=["workers starting", "starting workers", "receiving a batch"])
def test_a_sigterm_to_the_process_group_with_loader_workers_saves_the_checkpoint(moment, tmp_path):
    """SIGTERM to the whole process group (``timeout``, ``kill -- -PGID``, systemd) of `rtseg train --workers 2`
    while a worker starts (before torch's handlers), while the training process starts them, or while it receives
    a batch (it fetches each tensor's shared memory from a thread of the worker). The workers ended by the SIGTERM
    (torch's handler; a worker still starting by a KeyboardInterrupt traceback), so that the training process
    raised ``DataLoader worker … is killed by signal`` or ``exited unexpectedly`` (tracebacks, exit 1, often no
    checkpoint); a KeyboardInterrupt while it started them left a half-made loader that could not end them, and
    one mid-batch made the worker's thread print a ConnectionResetError traceback. Now the training process alone
    stops: it saves the checkpoint, says how to continue and ends the workers: one line, 143 (was 130, Ctrl-C's),
    no process left."""
    r = _run(tmp_path, [*_train(2), "--iters", "5", "--out", "m.safetensors"], [(moment, signal.SIGTERM)], group=True)
    assert (r.returncode, r.stderr.splitlines()) == (143, ["rtseg train: terminated"]), (r.returncode, r.stderr)
    assert "terminated at step 0: checkpoint " in r.stdout
    assert torch.load(tmp_path / "m.train" / "checkpoint.pth", weights_only=True)["step"] == 0


def test_a_sigterm_to_the_group_with_a_hung_loader_worker_still_ends_the_run(tmp_path):
    """SIGTERM to the process group while the DataLoader worker hangs on an item: the worker drops the group's
    SIGTERM, and when it does not end at the training process's request (torch waits 5 s) torch's ``terminate()``,
    the training process's own SIGTERM, ends it. The checkpoint of step 0 is saved and the run ends: one line, 143
    (was 130, Ctrl-C's), no process left (a worker that ignored every SIGTERM would keep the run waiting for it for
    ever)."""
    r = _run(tmp_path, [*_train(1), "--iters", "5", "--out", "m.safetensors"],
             [("rtseg.train.trainer:AugmentedSamples.__getitem__", signal.SIGTERM)], group=True, release=False)
    assert (r.returncode, r.stderr.splitlines()) == (143, ["rtseg train: terminated"]), (r.returncode, r.stderr)
    assert torch.load(tmp_path / "m.train" / "checkpoint.pth", weights_only=True)["step"] == 0


def test_a_hang_up_stops_a_training_run_as_sigterm_does_with_its_terminal_gone(tmp_path):
    """An ssh session that drops under `rtseg train --workers 1 > train.log`: its terminal, where stderr goes, gone
    (writes there fail, EIO), then SIGHUP to the process group. The processes ended at once, every step since the
    last checkpoint lost (all here: --ckpt-every 0). Now, as on a SIGTERM, the training process alone stops (the
    worker ignores the hang-up), saves the checkpoint of the step done and says so, ``hung up``, where the log goes;
    the status is the hang-up's, 129, and no process is left."""
    r = _run(tmp_path, [*_train(1), "--iters", "5", "--out", "m.safetensors"],
             [("rtseg.train.trainer:Trainer.train_step:after", signal.SIGHUP)], group=True, terminal=True,
             log="train.log")
    assert r.returncode == 129
    log = (tmp_path / "train.log").read_text()
    assert f"hung up at step 1: checkpoint {Path('m.train', 'checkpoint.pth')}; continue with rtseg train " in log
    assert torch.load(tmp_path / "m.train" / "checkpoint.pth", weights_only=True)["step"] == 1
    assert _files(tmp_path) == ["m.train", "train.log"]


def test_a_hang_up_under_nohup_leaves_training_running(tmp_path):
    """`nohup rtseg train …` is how a run is kept going when its terminal closes: the hang-up, ignored, stays
    ignored by rtseg's own handlers (of the training, of its DataLoader workers' start), and the run ends normally."""
    r = _run(tmp_path, [*_train(1), "--iters", "1", "--out", "m.safetensors"],
             [("rtseg.train.trainer:Trainer.train_step:after", signal.SIGHUP)], group=True, nohup=True)
    assert (r.returncode, r.stderr) == (0, ""), (r.returncode, r.stderr)
    assert "wrote m.safetensors" in r.stdout and "hung up" not in r.stdout
    assert torch.load(tmp_path / "m.train" / "checkpoint.pth", weights_only=True)["step"] == 1


def test_a_hang_up_finishes_a_video_run_with_its_terminal_gone(tmp_path):
    """SIGHUP to a video run whose terminal is gone (stdout and stderr on a closed pseudo-terminal, where the progress
    bar and the summary go): it ended the process at once (-1), leaving o.partial.mp4, which the next run aimed at
    o.mp4 refused. Now it stops the run as SIGTERM does: the frames in flight are written, o.mp4 is finished under
    its name with every frame of o.jsonl, and the writes to the lost terminal end in no error (exit 0, as a SIGTERM's
    graceful stop; an unwritable stdout was exit 2)."""
    clip = make_clip(tmp_path / "clip.mp4", frames=200)
    r = _run(tmp_path, ["--source", "clip.mp4", "--engine", "slic", "--segments", "20", "--output", "o.mp4",
                        "--json", "o.jsonl"], [("rtseg.video.sink_mp4:Mp4Sink.write:after", signal.SIGHUP)],
             terminal=True)
    assert r.returncode == 0
    assert _files(tmp_path) == sorted([clip.name, "o.jsonl", "o.mp4"])
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    with av.open(str(tmp_path / "o.mp4")) as recording:
        assert 1 <= sum(1 for _ in recording.decode(video=0)) == len(lines) < 200


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_a_second_signal_while_the_interpreter_shuts_down_after_a_stopped_run(second, tmp_path):
    """Ctrl-C once the first frame is recorded stops the run gracefully (outputs complete, exit 0); a second signal
    while Python tears its modules down (over a second after a run with torch) ended the process by it (-2, -15,
    -1) although every output was complete. Now it changes nothing."""
    clip = make_clip(tmp_path / "clip.mp4", frames=200)
    r = _run(tmp_path, ["--source", "clip.mp4", "--engine", "slic", "--segments", "20", "--output", "o.mp4",
                        "--json", "o.jsonl", "--no-progress"],
             [("rtseg.video.sink_mp4:Mp4Sink.write:after", signal.SIGINT), ("exit", second)])
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert (r.returncode, r.stderr.splitlines()) == (
        0, [f"rtseg: stopped by signal after {len(lines)} frames; outputs are closed"]), (r.returncode, r.stderr)
    assert 1 <= len(lines) < 200 and f"frames {len(lines)} " in r.stdout
    with av.open(str(tmp_path / "o.mp4")) as recording:
        assert sum(1 for _ in recording.decode(video=0)) == len(lines)
    assert _files(tmp_path) == sorted([clip.name, "o.jsonl", "o.mp4"])


@pytest.mark.parametrize("signum,status,said", [(signal.SIGINT, 130, "rtseg: interrupted"),
                                                (signal.SIGTERM, 143, "rtseg: terminated")], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_while_the_recording_is_finalised_leaves_it_whole_under_its_name(tmp_path, signum, status, said):
    """A signal once the run's frames are done, while the MP4 is remuxed with its index first (seconds for a long
    recording, when a user presses Ctrl-C): the remux's hidden temporary file was left behind and the recording
    stayed o.partial.mp4. Now the finished fragmented recording becomes o.mp4, whole; the status is the signal's."""
    clip = make_clip(tmp_path / "clip.mp4", frames=20)
    r = _run(tmp_path, ["--source", "clip.mp4", "--engine", "slic", "--segments", "20", "--output", "o.mp4",
                        "--json", "o.jsonl", "--no-progress"], [("rtseg.video.sink_mp4:_remux_faststart:after", signum)])
    assert (r.returncode, r.stderr.splitlines()) == (status, [said]), (r.returncode, r.stderr)
    assert _files(tmp_path) == sorted([clip.name, "o.jsonl", "o.mp4"])
    with av.open(str(tmp_path / "o.mp4")) as recording:
        assert sum(1 for _ in recording.decode(video=0)) == 20
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 20


@pytest.mark.parametrize("second,status,said", [(signal.SIGINT, 130, "rtseg: interrupted"),
                                                (signal.SIGTERM, 143, "rtseg: terminated"),
                                                (signal.SIGHUP, 129, "rtseg: hung up")],
                         ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_a_second_signal_while_a_stopped_run_drains_ends_it_with_that_signals_status(second, status, said, tmp_path):
    """Ctrl-C stops a run gracefully; a second signal while the frames in flight are still written aborts it. A second
    SIGTERM ended it as Ctrl-C does (``interrupted``, 130); now as a SIGTERM (``terminated``, 143, as every other
    SIGTERM rtseg handles); a SIGHUP (which ended the process at once, -1) likewise as ``hung up``, 129. The frames
    recorded stay, in the playable fragmented file (an aborted run does not finalise it)."""
    make_clip(tmp_path / "clip.mp4", frames=200)
    r = _run(tmp_path, ["--source", "clip.mp4", "--engine", "slic", "--segments", "20", "--output", "o.mp4",
                        "--no-progress"],
             [("rtseg.video.sink_mp4:Mp4Sink.write:after", signal.SIGINT),
              # once the first signal's handler has asked the run to stop (sent earlier, the two could be one
              # pending signal: a loaded machine ran the first handler late)
              ("rtseg.video.pipeline:Pipeline.stop:after", second)])
    assert (r.returncode, r.stderr.splitlines()[-1:]) == (status, [said]), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    with av.open(str(tmp_path / "o.partial.mp4")) as recording:
        assert sum(1 for _ in recording.decode(video=0)) >= 1


@pytest.mark.parametrize("entry, command, moment, header", [
    ("rtseg.train.fcn_trainer", ["--out", "m.safetensors", "--steps", "1", "--images", "1", "--size", "32", "32",
                                 "--width", "0.01"], "rtseg.train.fcn:evaluate_fcn",
     "validation (synthetic:val, 24 images, %):"),
    ("rtseg.train.msrcnn_trainer", ["--out", "m.safetensors", "--steps", "1", "--images", "1", "--size", "64", "48"],
     "rtseg.train.msrcnn:mask_quality", "validation (synthetic:val, 40 images):")], ids=["fcn", "msrcnn"])
def test_a_trainer_says_it_validates_before_the_validation_runs(entry, command, moment, header, tmp_path):
    """The synthetic-benchmark trainers' final validation (minutes for an untrained MS R-CNN: 100 detections per
    image) printed its header with the table, once it had run: the run looked hung. The header now comes first, and
    out at once (flushed, also into a pipe); a SIGTERM while it runs is the usual ``terminated``, 143."""
    r = _run(tmp_path, command, [(moment, signal.SIGTERM)], entry)
    assert r.stdout.splitlines()[-1:] == [header], r.stdout
    assert (r.returncode, r.stderr.splitlines()[-1:]) == (143, [f"{entry.rsplit('.', 1)[1]}: terminated"]), r.stderr
