"""Benchmark scripts' options: a bad one is argparse's usage and one error line (exit 2, no traceback), said before
anything heavy is imported or measured, and nothing is written to benchmarks/results (whose files are the committed
measurements).

Every check here either calls a script's ``parse_args`` (which runs nothing) or runs a script in a subprocess whose
``benchmarks.common.RESULTS`` points into a temporary folder, so that a script that got past its checks would write
there, never over a committed result."""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common"))

#: A script run by ``python -c RUN RESULTS SCRIPT ARGS...`` as ``python -m benchmarks.SCRIPT ARGS...`` would run it,
#: its results folder RESULTS; stdout: the heavy modules it imported (in a ``finally``: printed however it ends).
RUN = """
import json, runpy, sys
from pathlib import Path

import benchmarks.common

benchmarks.common.RESULTS = Path(sys.argv[1])
script, sys.argv = sys.argv[2], [sys.argv[2] + ".py", *sys.argv[3:]]
try:
    runpy.run_module("benchmarks." + script, run_name="__main__", alter_sys=True)
finally:
    print(json.dumps([m for m in ("torch", "torchvision", "onnxruntime") if m in sys.modules]))
"""

# (script, options, the line after "<script>.py: error: ")
BAD: list[tuple[str, list[str], str]] = [
    # the explorer's findings: tracebacks, minutes of work, a committed result overwritten
    ("live_latency", ["--frames", "0"], "--frames 0: must be an integer >= 1"),
    ("live_latency", ["--warmup", "10", "--frames", "3"],
     "--frames 3: must be more than --warmup 10 (the first --warmup frames written are not counted)"),
    ("live_latency", ["--engine-ms", "-5"], "--engine-ms -5: must be a finite number >= 0"),
    ("pipeline_efficiency", ["--frames", "0"],
     "--frames 0: must be an integer >= 7 (the first 5 are not timed; the FPS needs 2 more)"),
    ("pipeline_efficiency", ["--size", "abc"],
     "argument --size: 'abc': give WxH, each side an integer in [32, 4096] pixels (e.g. 640x480)"),
    ("pipeline_efficiency", ["--preset", "nonsense"], "argument --preset: invalid choice: 'nonsense' (choose from "
     "'yolact_base', 'yolact_resnet50', 'yolact_darknet53', 'yolact_im700')"),
    ("slic_cpu", ["--frames", "0"], "--frames 0: must be an integer >= 1"),
    ("encode_bench", ["--frames", "0"], "--frames 0: must be an integer >= 6 (the first 5 are not timed)"),
    ("msrcnn_paste", ["--threads", "abc"], "argument --threads: 'abc': give integers separated by commas, e.g. 1,2"),
    ("msrcnn_paste", ["--threads", "0"], "--threads 0: must be an integer in [1, 1024]"),
    ("yolact_cpu_stages", ["--presets", "nonsense"], "argument --presets: invalid choice: 'nonsense' (choose from "
     "'yolact_base', 'yolact_resnet50', 'yolact_darknet53', 'yolact_im700')"),
    ("overlay_bench", ["--repeats", "0"], "--repeats 0: must be an integer >= 1"),
    ("mask_assembly_cpu", ["--iters", "0"], "--iters 0: must be an integer >= 1"),
    ("demo_accuracy", ["--images", "0"], "--images 0: must be an integer >= 1"),
    ("coco_open", ["--images", "0"], "--images 0: must be an integer >= 1"),
    ("train_step", ["--iters", "0"], "--iters 0: must be an integer in [1, 1000000000]"),
    ("onnx_vs_eager_cpu", ["--iters", "0"], "--iters 0: must be an integer >= 1"),
    ("jpeg_scan", ["--mb", "0", "--rounds", "1"], "--mb 0: must be a number in [0.01, 256] (less times the call, "
     "not the scan; the five runs are held in memory)"),
    # and the like in every script
    ("pipeline_efficiency", ["--size", "641x480"],
     "--size 641x480: libx264 encodes 4:2:0 frames of even sides only; give e.g. 640x480"),
    ("pipeline_efficiency", ["--size", "16x16"],
     "argument --size: '16x16': give WxH, each side an integer in [32, 4096] pixels (e.g. 640x480)"),
    ("pipeline_efficiency", ["--device", "mps"], "argument --device: 'mps': use cpu, cuda or cuda:N"),
    ("pipeline_efficiency", ["--backend", "fast"], "argument --backend: invalid choice: 'fast' (choose from 'eager', "
     "'compile', 'tensorrt', 'onnx', 'auto')"),
    ("pipeline_efficiency", ["--switch-ms", "0"],
     "--switch-ms 0: must be a finite number >= 0.001 (the interpreter counts microseconds)"),
    ("pipeline_efficiency", ["--score-threshold", "2"], "--score-threshold 2: must be a number in [0, 1]"),
    ("live_latency", ["--engine", "gpu"], "argument --engine: invalid choice: 'gpu' (choose from 'simulated', "
     "'yolact')"),
    ("slic_cpu", ["--sizes", "640x480", "0x0"],
     "argument --sizes: '0x0': give WxH, each side an integer in [32, 4096] pixels (e.g. 640x480)"),
    ("slic_cpu", ["--baseline", "0000000"], "--baseline 0000000: this repository's git history has no "
     "rtseg/engines/slic.py at that revision; give a commit that has it"),
    ("slic_cpu", ["--threads", "0"], "--threads 0: must be an integer in [1, 1024]"),
    ("jpeg_scan", ["--rounds", "0"], "--rounds 0: must be an integer >= 1"),
    ("coco_open", ["--per-image", "0"], "--per-image 0: must be an integer >= 1"),
    ("coco_open", ["--baseline", "no-such-rev"], "--baseline no-such-rev: this repository's git history has no "
     "rtseg/data/coco.py at that revision; give a commit that has it"),
    ("demo_accuracy", ["--score-threshold", "-1"], "--score-threshold -1: must be a number in [0, 1]"),
    ("demo_cpu_fps", ["--frames", "6"],
     "--frames 6: must be an integer >= 7 (the first 5 are not timed; the FPS needs 2 more)"),
    ("demo_cpu_fps", ["--threads", "-1"], "--threads -1: must be an integer in [1, 1024]"),
    ("cpu_channels_last", ["--engines", "demo", "sam"], "argument --engines: invalid choice: 'sam' (choose from "
     "'demo', 'yolact_r50', 'fcn', 'msrcnn')"),
    ("cpu_channels_last", ["--frames", "0"], "--frames 0: must be an integer >= 1"),
    ("engines_compare", ["--frames", "1"], "--frames 1: must be an integer >= 2 (the FPS needs 2)"),
    ("engines_compare", ["--size", "160", "8"], "--size 8: must be an integer in [32, 4096] pixels"),
    ("train_step", ["--batch-size", "0"], "--batch-size 0: must be an integer in [1, 1024]"),
    ("train_step", ["--device", "gpu"], "argument --device: 'gpu': use cpu, cuda or cuda:N"),
    ("onnx_vs_eager_cpu", ["--threads", "0"], "--threads 0: must be an integer in [1, 1024]"),
    ("host_copy_cost", ["--iters", "0"], "--iters 0: must be an integer >= 1"),
    ("host_copy_cost", ["--gap-ms", "-1"], "--gap-ms -1: must be a finite number >= 0"),
    ("soak", ["--minutes", "0"],
     "--minutes 0: must be a finite number >= 1 (a sample every 10 s; the RSS slopes need several)"),
    ("gpu_fastpath", ["--iters", "10"], "--iters 10: must be an integer >= 200 (for a p99)"),
    ("gpu_fastpath", ["--batches", "1", "0"], "--batches 0: must be an integer in [1, 1024]"),
    ("gpu_fastpath", ["--frame", "1920"],
     "argument --frame: '1920': give HxW, each side an integer in [32, 4096] pixels (e.g. 1080x1920)"),
    ("gpu_fastpath", ["--presets", "yolact_tiny"], "argument --presets: invalid choice: 'yolact_tiny' (choose from "
     "'yolact_base', 'yolact_resnet50', 'yolact_darknet53', 'yolact_im700')"),
    ("gpu_fastpath", ["--budget-s", "0"], "--budget-s 0: must be a finite number >= 1"),
    ("engine_profile", ["--out", "x.json", "--iters", "0"], "--iters 0: must be an integer >= 1"),
    ("engine_profile", ["--out", "x.json", "--profile-iters", "0"], "--profile-iters 0: must be an integer >= 1"),
    ("engine_profile", ["--out", "x.json", "--preset", "base"], "argument --preset: invalid choice: 'base' (choose "
     "from 'yolact_base', 'yolact_resnet50', 'yolact_darknet53', 'yolact_im700')"),
    ("official_side_by_side", ["--official", ".", "--iters", "0"], "--iters 0: must be an integer >= 1"),
    ("official_side_by_side", ["--official", "."],
     "--official .: no yolact.py there; give a checkout of github.com/dbolya/yolact"),
    ("official_side_by_side", ["--official", ".", "--device", "tpu"],
     "argument --device: 'tpu': use cpu, cuda or cuda:N"),
]


def error_line(err: str) -> str:
    """The error line of argparse's answer ``err`` (the usage, then that one line), checked to be no more."""
    lines = err.splitlines()
    assert lines[0].startswith("usage: ") and "Traceback" not in err, err
    assert all(line.startswith(" ") for line in lines[1:-1]), err  # the usage's own continued lines
    return lines[-1]


@pytest.mark.parametrize("script, options, line", BAD, ids=[f"{s} {' '.join(o)}" for s, o, _ in BAD])
def test_a_bad_option_is_argparses_usage_and_one_error_line(script, options, line, capsys):
    """Each was taken unchecked: a traceback after the seconds of importing torch (ConfigError, KeyError,
    ValueError, RuntimeError, IndexError, StatisticsError), minutes of measuring first (``train_step --iters 0``,
    ``onnx_vs_eager_cpu --iters 0``), or a committed result overwritten with numbers of nothing (``jpeg_scan --mb
    0``)."""
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as stop:
        module.parse_args(options)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    assert error_line(err) == f"{script}.py: error: {line}"


@pytest.mark.parametrize("script, options, line", [
    ("overlay_bench", ["--out", "{tmp}"],
     "argument --out: results file {tmp}: is a folder; give a file name such as {tmp}/out"),
    ("overlay_bench", ["--out", "{tmp}/none/o.json"],
     "argument --out: results file {tmp}/none/o.json: folder {tmp}/none does not exist; create it or choose another "
     "path"),
    ("engine_profile", ["--out", "{tmp}/none/e.json"],
     "argument --out: results file {tmp}/none/e.json: folder {tmp}/none does not exist; create it or choose another "
     "path"),
    ("engine_profile", ["--out", "{tmp}/a_file/e.json"],
     "argument --out: results file {tmp}/a_file/e.json: {tmp}/a_file is a file, not a folder; choose another path"),
    ("demo_accuracy", ["--weights", "{tmp}/w.safetensors"],
     "argument --weights: {tmp}/w.safetensors not found; give an existing file"),
    ("demo_cpu_fps", ["--weights", "{tmp}"], "argument --weights: {tmp} is a folder; give an existing file"),
    ("engines_compare", ["--msrcnn", "{tmp}/m.safetensors"],
     "argument --msrcnn: {tmp}/m.safetensors not found; give an existing file"),
])
def test_a_missing_input_or_output_folder_is_refused_before_the_work(script, options, line, tmp_path, capsys):
    """A weights file that is not there was found after torch's import (a traceback; engines_compare's docstring
    even promised a random network instead); an --out in a missing folder, or a folder, after all the measuring."""
    module = importlib.import_module(f"benchmarks.{script}")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as stop:
        module.parse_args([o.format(tmp=tmp_path) for o in options])
    assert stop.value.code == 2
    assert error_line(capsys.readouterr().err) == f"{script}.py: error: {line.format(tmp=tmp_path)}"


def run_script(script: str, options: list[str], results: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``script`` run with ``options`` from the repository's root (:data:`RUN`), writing its results to
    ``results``."""
    return subprocess.run([sys.executable, "-c", RUN, str(results), script, *options], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_checks_its_options_before_it_imports_torch(script, tmp_path):
    """Run as a user runs it (its first case of :data:`BAD`): the error line comes before torch's seconds of
    importing (all but the four scripts that checked their options at all imported torch first), and nothing is
    written."""
    options, line = next((o, e) for s, o, e in BAD if s == script)
    r = run_script(script, options, tmp_path)
    assert r.returncode == 2, r.stderr
    assert error_line(r.stderr) == f"{script}.py: error: {line}"
    assert json.loads(r.stdout) == [] and list(tmp_path.iterdir()) == []


def test_every_script_has_its_bad_options_checked_here():
    """:data:`BAD` covers every script (a new one gets its cases)."""
    assert {s for s, _, _ in BAD} == set(SCRIPTS)


def test_the_preset_names_offered_are_the_models_presets():
    from rtseg.models.yolact import PRESETS
    from rtseg.yolact_spec import PRESET_NAMES

    assert PRESET_NAMES == tuple(PRESETS)


@pytest.mark.slow  # imports torch: ~7 s on 2 cores
def test_weights_that_do_not_load_are_one_line_and_nothing_is_written(tmp_path):
    """A weights file that exists but is not rtseg's (found once the engine loads it) was a traceback."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not weights")
    results = tmp_path / "results"
    results.mkdir()
    r = run_script("demo_accuracy", ["--weights", str(weights), "--images", "1"], results)
    assert r.returncode == 2 and "torch" in json.loads(r.stdout)  # found once the work began
    assert r.stderr.splitlines() == [f"demo_accuracy.py: error: {weights}: manifest w.json not found beside it "
                                     "(rtseg weights come as .safetensors + .json)"]
    assert list(results.iterdir()) == []


@pytest.mark.slow  # imports torch, then 2 s of a simulated engine
def test_a_live_run_with_no_frame_after_the_warm_up_is_one_line_and_nothing_is_written(tmp_path):
    """Frames paced at 30 FPS into a 2-s engine: frame 0 is inferred while 1 and 2 arrive, and the pipeline keeps
    only the newest waiting frame, so at most 2 are written, all in the warm-up: was KeyError 'inference' (as
    ``--warmup 10 --frames 3``, now refused up front)."""
    r = run_script("live_latency", ["--frames", "3", "--warmup", "2", "--engine-ms", "2000"], tmp_path)
    assert r.returncode == 2 and "torch" in json.loads(r.stdout)  # found once the work began
    assert re.fullmatch(r"live_latency\.py: error: [12] frames written \([12] dropped\), none after the --warmup 2: "
                        r"nothing to measure; give more --frames or a smaller --engine-ms\n", r.stderr), r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--decode-threads", "--cv2-threads", "--mp4-slice-threads"])
def test_a_negative_thread_count_is_one_argparse_line_before_any_work(option, tmp_path):
    """Both were taken unchecked: a negative decoder thread count went to FFmpeg, a negative OpenCV one was
    OpenCV's default unsaid; the benchmark ran (a result written) either way."""
    result = tmp_path / "result"
    r = subprocess.run([sys.executable, "benchmarks/pipeline_efficiency.py", option, "-2", "--frames", "8",
                        "--size", "64x48", "--result", str(result)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert error_line(r.stderr) == f"pipeline_efficiency.py: error: {option} -2: must be an integer in [0, 1024]"
    assert not result.with_suffix(".json").exists()


def test_checked_float_options_reach_the_script_as_plain_floats():
    """Float options are quoted as typed in range errors (``rtseg.cliargs.TypedFloat``), then made plain floats once
    checked, also those of several values (``--switch-ms 0.5 2``: the list kept the typed ones)."""
    module = importlib.import_module("benchmarks.pipeline_efficiency")
    args = module.parse_args(["--score-threshold", "0.5", "--switch-ms", "0.5", "2"])
    assert [type(v) for v in (args.score_threshold, *args.switch_ms)] == [float] * 3
    assert args.switch_ms == [0.5, 2.0]
