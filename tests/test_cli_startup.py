"""``rtseg --help``, the ``--help`` of its subcommands (``demo``, ``eval``, ``train``) and plain option mistakes
(a missing source or file, an engine its weights' manifest contradicts) answer without importing torch (seconds),
from every entry point: ``python run.py``, ``python -m rtseg`` and the ``rtseg`` console script. Run as a user runs
them, in a subprocess; ``PYTHONPROFILEIMPORTTIME`` lists every module the process imported (no timings are
asserted)."""
from __future__ import annotations

import json
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
                        "rtseg: error: --weights none.safetensors not found; give the weights file"),
    # rtseg.engines.trt (torch) held the check of the calibration folder
    "missing calib": (["--source", "x.mp4", "--backend", "tensorrt", "--precision", "int8", "--calib", "nosuch"], 2,
                      "rtseg: error: INT8 calibration folder 'nosuch' does not exist; pass a folder of frames"),
    "calib without frames": (["--source", "x.mp4", "--backend", "tensorrt", "--precision", "int8", "--calib", "."], 2,
                             "rtseg: error: INT8 calibration folder '.' holds no .jpg/.jpeg/.png/.bmp images"),
    "demo out of range": (["demo", "--frames", "1"], 2, "rtseg demo: error: --frames 1: must be an integer >= 2"),
    # read the manifest of the demo weights (rtseg.weights.manifest_path: torch) before the source was opened
    "missing source": (["--source", "nosuch.mp4"], 2, "rtseg: error: source not found: nosuch.mp4 (expected a video "
                       "file, image, folder, glob, URL, camera index or - for standard input)"),
    # rtseg.eval imported its COCO evaluation (torch) at its top
    "eval help": (["eval", "--help"], 0, "usage: rtseg eval [-h]"),
    "eval unknown option": (["eval", "--bogus"], 2, "rtseg eval: error: unrecognized arguments: --bogus (see rtseg "
                            "eval --help)"),
    "eval out of range": (["eval", "--max-images", "0"], 2, "rtseg eval: error: --max-images 0: must be an integer "
                          ">= 1"),
    "eval bad size": (["eval", "--resize", "10x10"], 2, "rtseg eval: error: --resize 10: must be an integer in [32, "
                      "11585] pixels (the width of 10x10; at most 11585 a side keeps an image within the 134,217,728 "
                      "pixels rtseg reads)"),
    "eval missing weights": (["eval", "--weights", "none.pth"], 2, "rtseg eval: error: --weights none.pth not found; "
                             "give the weights file"),
    # rtseg.train.cli imported torch and the trainer at its top (for BACKBONES, LIMITS, AMP_MODES, INT_LIMITS)
    "train help": (["train", "--help"], 0, "usage: rtseg train [-h]"),
    "train required": (["train", "--out", "m.safetensors"], 2, "rtseg train: error: the following arguments are "
                       "required: --data, --iters (see rtseg train --help)"),
    "train bad choice": (["train", "--data", "synthetic", "--iters", "1", "--out", "m.safetensors", "--backbone",
                          "vgg"], 2, "rtseg train: error: argument --backbone: invalid choice: 'vgg' (choose from "
                         "'resnet101', 'resnet50', 'resnet18', 'darknet53') (see rtseg train --help)"),
    "train out of range": (["train", "--data", "synthetic", "--iters", "0", "--out", "m.safetensors"], 2,
                           "rtseg train: error: --iters 0: must be an integer in [1, 1000000000]"),
    "train no safetensors": (["train", "--data", "synthetic", "--iters", "1", "--out", "m.pth"], 2,
                             "rtseg train: error: --out m.pth: must end in .safetensors (the .json manifest is "
                             "written beside it)"),
    # refused only once torch, the data and the model were ready (11 s), and m.train/ was left behind
    "train missing resume": (["train", "--data", "synthetic", "--iters", "1", "--out", "m.safetensors", "--resume",
                              "none.pth"], 2, "rtseg train: error: --resume none.pth not found; give the "
                             "checkpoint.pth an earlier run wrote (in its --work-dir, default <its --out without "
                             "suffix>.train)"),
    "train resume folder": (["train", "--data", "synthetic", "--iters", "1", "--out", "m.safetensors", "--resume",
                             "."], 2, "rtseg train: error: --resume . is a folder; give the checkpoint.pth an earlier "
                            "run wrote (in its --work-dir, default <its --out without suffix>.train)"),
    "train missing init": (["train", "--data", "synthetic", "--iters", "1", "--out", "m.safetensors", "--init",
                            "none.safetensors"], 2, "rtseg train: error: --init none.safetensors not found; give an "
                           "official YOLACT .pth or an rtseg .safetensors"),
}
WEIGHTS_CASES = {
    # name: (arguments, the one stderr line; exit status 2), beside weights fcn.safetensors and msrcnn.safetensors
    # whose manifests name their engines: reading them imported torch, and torchvision for the engines' formats
    "source after the manifest": (["--source", "nosuch.mp4", "--weights", "fcn.safetensors"],
                                  "rtseg: error: source not found: nosuch.mp4 (expected a video file, image, folder, "
                                  "glob, URL, camera index or - for standard input)"),
    "engine of other weights": (["--source", "x.mp4", "--engine", "yolact", "--weights", "fcn.safetensors"],
                                "rtseg: error: --engine yolact: fcn.safetensors holds fcn weights (manifest format "
                                "'rtseg-fcn/1'); use --engine fcn or leave --engine out"),
    "semantic of other weights": (["--source", "x.mp4", "--engine", "panoptic", "--semantic", "msrcnn.safetensors"],
                                  "rtseg: error: --semantic msrcnn.safetensors holds msrcnn weights (manifest format "
                                  "'rtseg-msrcnn/1'); give the weights of an fcn (the stuff classes)"),
    "output over a manifest": (["--source", "x.mp4", "--weights", "fcn.safetensors", "--json", "fcn.json"],
                               "rtseg: error: --json fcn.json would overwrite the input fcn.json; choose another "
                               "output path"),
    "eval engine of other weights": (["eval", "--engine", "msrcnn", "--weights", "fcn.safetensors"],
                                     "rtseg eval: error: --engine msrcnn: fcn.safetensors holds fcn weights (manifest "
                                     "format 'rtseg-fcn/1'); use --engine fcn or leave --engine out"),
    "eval output over a manifest": (["eval", "--weights", "fcn.safetensors", "--json", "fcn.json"],
                                    "rtseg eval: error: --json fcn.json would overwrite the input fcn.json; choose "
                                    "another output path"),
    "train out over its init": (["train", "--data", "synthetic", "--iters", "1", "--init", "fcn.safetensors", "--out",
                                 "fcn.safetensors"], "rtseg train: error: --out fcn.safetensors: the weights "
                                "fcn.safetensors would overwrite the --init file fcn.safetensors; choose another "
                                "--out"),
}


def _run_light(entry: str, args: list[str], folder: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``args`` run from ``entry`` in ``folder``, asserted not to import torch (nor torchvision); the process and
    the lines it said on stderr."""
    if entry == "rtseg script" and not SCRIPT.exists():
        pytest.skip(f"no console script {SCRIPT} (pip install -e . installs it)")
    r = subprocess.run(ENTRIES[entry] + args, capture_output=True, text=True, cwd=folder, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said_lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert "rtseg.cliargs" in imported and not {"torch", "torchvision"} & imported, (
        sorted(m for m in imported if "rtseg" in m), said_lines)
    return r, said_lines


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_help_and_option_mistakes_answer_before_torch_is_imported(entry, case, tmp_path):
    """Each imported torch first (rtseg.cli -> rtseg.engines -> rtseg.engines.base -> torch: 2-2.5 s here, most of
    the command's time); now only the command line's own light modules load, and the answer is the same."""
    args, code, said = CASES[case]
    r, said_lines = _run_light(entry, args, tmp_path)
    assert r.returncode == code, (r.returncode, said_lines)
    if code == 0:
        assert r.stdout.startswith(said) and said_lines == [], (r.stdout[:200], said_lines)
    else:
        assert said_lines == [said] and r.stdout == ""
    assert not any(tmp_path.iterdir()), "nothing may be written"


@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_options_checked_against_a_weights_manifest_answer_before_torch_is_imported(entry, case, tmp_path):
    """The engine a manifest names (``format``) and the files a run reads (weights and manifests) were found through
    rtseg.weights (torch) and the engines' modules (torchvision: ~4 s more); now through the light rtseg.manifest.
    The manifests are read, never written."""
    for name, fmt in (("fcn", "rtseg-fcn/1"), ("msrcnn", "rtseg-msrcnn/1")):
        (tmp_path / f"{name}.safetensors").write_bytes(b"not read before torch")
        (tmp_path / f"{name}.json").write_text(json.dumps({"format": fmt}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args, said = WEIGHTS_CASES[case]
    r, said_lines = _run_light(entry, args, tmp_path)
    assert r.returncode == 2 and said_lines == [said] and r.stdout == "", (r.returncode, said_lines)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing may be written"


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_demo_out_that_is_a_file_is_refused_before_torch_is_imported(entry, tmp_path):
    """Was refused once torch had loaded (still before the weights)."""
    (tmp_path / "clip.mp4").write_bytes(b"x")
    r, said_lines = _run_light(entry, ["demo", "--out", "clip.mp4"], tmp_path)
    assert r.returncode == 2 and said_lines == [f"rtseg demo: error: --out clip.mp4 ({tmp_path / 'clip.mp4'}): is a "
                                                "file, not a folder; choose another path"], said_lines
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_demo_makes_no_out_folder_when_its_weights_fail_to_load(tmp_path):
    """The --out folder was made before the weights loaded: weights that failed left it behind, empty."""
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    r = subprocess.run([sys.executable, "-m", "rtseg", "demo", "--weights", "bad.safetensors", "--out", "out"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ,
                                                                                      "OMP_NUM_THREADS": "1"})
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("rtseg demo: error: "), r.stderr
    assert "bad.safetensors" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["bad.safetensors"]


def test_the_options_offered_are_importable_without_torch():
    """The names the command line offers (engines, backends) and the modules it checks options with load without
    torch."""
    code = ("import sys; import rtseg.cli, rtseg.demo, rtseg.engines.choose, rtseg.outputs, rtseg.eval, "
            "rtseg.eval.cli, rtseg.train.cli; from rtseg.engines import BACKENDS, ENGINE_NAMES, INSTANCE_ENGINES; "
            "from rtseg.manifest import ENGINE_FORMATS, manifest_path, peek_manifest; "
            "from rtseg.yolact_spec import BACKBONES, LIMITS; from rtseg.train.recipe import AMP_MODES, "
            "INT_LIMITS; from rtseg.engines.calibration import calibration_files; "
            "print(sorted({'torch', 'torchvision'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_the_light_constants_are_the_ones_the_models_and_trainers_use():
    """Each constant the command lines read without torch is defined once: the torch modules use the same objects
    (their former names still import)."""
    from rtseg import manifest
    from rtseg.engines.fcn import FCN_FORMAT
    from rtseg.engines.msrcnn import MSRCNN_FORMAT
    from rtseg import yolact_spec
    from rtseg.models import backbones, yolact
    from rtseg.train import recipe, trainer
    from rtseg.weights import MANIFEST_FORMAT, WEIGHTS_ADVICE, manifest_path

    assert manifest.ENGINE_FORMATS == {MANIFEST_FORMAT: "yolact", FCN_FORMAT: "fcn", MSRCNN_FORMAT: "msrcnn"}
    assert manifest_path is manifest.manifest_path
    assert WEIGHTS_ADVICE is manifest.WEIGHTS_ADVICE
    assert backbones.BACKBONES is yolact.BACKBONES is yolact_spec.BACKBONES
    assert yolact.LIMITS is yolact_spec.LIMITS
    assert trainer.AMP_MODES is recipe.AMP_MODES and trainer.INT_LIMITS is recipe.INT_LIMITS


def test_the_file_checks_before_torch_import_neither_numpy_nor_opencv():
    """The modules that check a user's files and options before torch (the non-blocking open of
    :mod:`rtseg.userfiles`, the manifests, the trainers' recipe, YOLACT's limits, the calibration folder) load
    without numpy and OpenCV too: rtseg.manifest read its manifests through rtseg.imageio (numpy, cv2)."""
    code = ("import sys; import rtseg.userfiles, rtseg.manifest, rtseg.train.recipe, rtseg.yolact_spec, "
            "rtseg.engines.calibration; print(sorted({'numpy', 'cv2', 'torch'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
