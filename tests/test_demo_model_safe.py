"""The shipped demo model (``engines/yolact_demo.safetensors`` + its ``.json`` manifest, what ``python run.py`` runs)
is never an output: not of ``rtseg`` nor ``rtseg eval`` whatever ``--weights`` is, not of ``rtseg train`` nor the
FCN / MS R-CNN trainers. Each is refused with one line before torch is imported. The commands run as a user runs
them, from a copy of the package whose ``engines/`` holds stand-in files, so that the checkout's own model is never
at risk; the unit tests point :data:`rtseg.outputs.DEMO_WEIGHTS` into ``tmp_path``."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rtseg.outputs
from rtseg.errors import ConfigError
from rtseg.outputs import check_not_the_demo_model, check_outputs_are_not_inputs
from rtseg.train.recipe import weights_out

REPO = Path(__file__).resolve().parents[1]
MODEL = "the shipped demo model (python run.py runs it); choose another output path"
MANIFEST = "the shipped demo model's manifest (python run.py runs it); choose another output path"
DEMO = {"yolact_demo.safetensors": b"stand-in for the shipped weights", "yolact_demo.json": b'{"stand-in": 1}'}
OTHER = ["--weights", "other.safetensors"]
TRAIN = ["train", "--data", "synthetic", "--iters", "1", "--batch-size", "1", "--val-images", "1"]
COMMANDS = {
    # name: (the command after ``python``, the one stderr line)
    "rtseg json, other weights": (["run.py", "--source", "synthetic", "--max-frames", "1", *OTHER, "--json",
                                   "engines/yolact_demo.json"],
                                  f"rtseg: error: --json engines/yolact_demo.json would overwrite {MANIFEST}"),
    "rtseg output, other weights": (["run.py", "--source", "synthetic", "--max-frames", "1", *OTHER, "--output",
                                     "engines/yolact_demo.safetensors"],
                                    f"rtseg: error: --output engines/yolact_demo.safetensors would overwrite {MODEL}"),
    "rtseg json, no weights": (["run.py", "--source", "synthetic", "--max-frames", "1", "--json",
                                "engines/yolact_demo.json"],
                               f"rtseg: error: --json engines/yolact_demo.json would overwrite {MANIFEST}"),
    "rtseg json, a hard link": (["run.py", "--source", "synthetic", "--max-frames", "1", *OTHER, "--json",
                                 "link.jsonl"], f"rtseg: error: --json link.jsonl would overwrite {MANIFEST}"),
    "eval json, other weights": (["run.py", "eval", *OTHER, "--data", "synthetic:test", "--max-images", "1",
                                  "--json", "engines/yolact_demo.json"],
                                 f"rtseg eval: error: --json engines/yolact_demo.json would overwrite {MANIFEST}"),
    "train out": (["run.py", *TRAIN, "--out", "engines/yolact_demo.safetensors"],
                  f"rtseg train: error: --out engines/yolact_demo.safetensors would overwrite {MODEL}"),
    # the README's recipe as it was: refused as an --init overwritten, now as the demo model
    "train out over its init": (["run.py", *TRAIN, "--init", "engines/yolact_demo.safetensors", "--out",
                                 "engines/yolact_demo.safetensors"],
                                f"rtseg train: error: --out engines/yolact_demo.safetensors would overwrite {MODEL}"),
    "train manifest, a symbolic link": (["run.py", *TRAIN, "--out", "mine.safetensors"],
                                        f"rtseg train: error: --out mine.safetensors: its manifest mine.json would "
                                        f"overwrite {MANIFEST}"),
    "fcn trainer out": (["-m", "rtseg.train.fcn_trainer", "--steps", "1", "--images", "1", "--out",
                         "engines/yolact_demo.safetensors"],
                        f"fcn_trainer: error: --out engines/yolact_demo.safetensors would overwrite {MODEL}"),
    "msrcnn trainer out": (["-m", "rtseg.train.msrcnn_trainer", "--steps", "1", "--images", "1", "--out",
                            "engines/yolact_demo.safetensors"],
                           f"msrcnn_trainer: error: --out engines/yolact_demo.safetensors would overwrite {MODEL}"),
}


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small YOLACT weights of the synthetic classes (with their manifest): a run with them goes through."""
    import dataclasses

    from rtseg.data.synthetic import CLASSES
    from rtseg.models.yolact import Yolact
    from rtseg.weights import save_yolact
    from servers.helpers import tiny_config

    return save_yolact(tmp_path_factory.mktemp("other") / "other.safetensors",
                       Yolact(dataclasses.replace(tiny_config(), num_classes=len(CLASSES))), CLASSES)


@pytest.fixture
def checkout(tmp_path: Path, other_weights: Path) -> Path:
    """A copy of run.py and the package with stand-in demo files in its ``engines/`` (only their paths matter:
    every refusal comes before a file is read), :func:`other_weights` beside them, ``link.jsonl`` a hard link to
    the demo manifest and ``mine.json`` a symbolic link to it."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "rtseg", copy / "rtseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "run.py", copy)
    (copy / "engines").mkdir()
    for name, data in DEMO.items():
        (copy / "engines" / name).write_bytes(data)
    for f in (other_weights, other_weights.with_suffix(".json")):
        shutil.copy(f, copy)
    os.link(copy / "engines" / "yolact_demo.json", copy / "link.jsonl")
    (copy / "mine.json").symlink_to(copy / "engines" / "yolact_demo.json")
    return copy


@pytest.mark.parametrize("case", list(COMMANDS))
def test_no_command_writes_the_shipped_demo_model(case: str, checkout: Path) -> None:
    """Was: with --weights (any other file), ``--json engines/yolact_demo.json`` replaced the demo manifest with
    JSON Lines (exit 0; every later run without --weights then failed on "manifest format is None"), and ``rtseg
    train --out engines/yolact_demo.safetensors`` trained over the demo model and its manifest (exit 0). Now one
    line and exit 2, said before torch is imported, the demo files as they were."""
    args, line = COMMANDS[case]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=checkout, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {s.rsplit("|", 1)[1].strip() for s in r.stderr.splitlines() if s.startswith("import time:")}
    said = [s for s in r.stderr.splitlines() if not s.startswith("import time:")]
    assert (r.returncode, said) == (2, [line]), r.stderr[-3000:]
    assert "torch" not in imported
    assert {p.name: p.read_bytes() for p in (checkout / "engines").iterdir()} == DEMO
    assert not (checkout / "engines" / "yolact_demo.train").exists()


def test_the_demo_model_of_the_checks_is_the_one_the_demo_and_rtseg_run() -> None:
    """One constant, the checkout's engines/yolact_demo.safetensors, for the demo, the default weights and the
    checks (defined without numpy, for the trainers' checks before torch)."""
    import rtseg.demo

    assert rtseg.demo.DEMO_WEIGHTS is rtseg.outputs.DEMO_WEIGHTS == REPO / "engines" / "yolact_demo.safetensors"


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:data:`rtseg.outputs.DEMO_WEIGHTS` pointed at ``tmp_path/engines/yolact_demo.safetensors`` (not created)."""
    weights = tmp_path / "engines" / "yolact_demo.safetensors"
    monkeypatch.setattr(rtseg.outputs, "DEMO_WEIGHTS", weights)
    return weights


def test_the_demo_files_are_refused_as_spelt_linked_or_missing(demo: Path, tmp_path: Path) -> None:
    """Another spelling, a hard or symbolic link: refused as the files themselves; missing (a package installed
    without engines/), still refused by name; other files in the folder pass."""
    manifest = demo.with_suffix(".json")
    as_spelt = [("--output", demo), ("--json", tmp_path / "engines" / ".." / "engines" / "yolact_demo.json")]
    for option, path in as_spelt:  # missing
        with pytest.raises(ConfigError, match=f"^{re.escape(f'{option} {path} would overwrite the shipped demo')}"):
            check_not_the_demo_model([(option, path)])
    demo.parent.mkdir()
    demo.write_bytes(b"w")
    manifest.write_text("{}")
    os.link(demo, tmp_path / "hard.mp4")
    (tmp_path / "soft.jsonl").symlink_to(manifest)
    for path, what in ((tmp_path / "hard.mp4", MODEL), (tmp_path / "soft.jsonl", MANIFEST)):
        with pytest.raises(ConfigError, match=f"^{re.escape(f'--json {path} would overwrite {what}')}$"):
            check_outputs_are_not_inputs([("--json", path)], [])
    check_not_the_demo_model([("--json", demo.parent / "results.jsonl"), ("--output", None),
                              ("--output", tmp_path / "yolact_demo.json")])


def test_the_trainers_out_is_never_the_demo_model(demo: Path, tmp_path: Path) -> None:
    """:func:`rtseg.train.recipe.weights_out` (``rtseg train``, the FCN and MS R-CNN trainers): the demo weights,
    or an --out whose manifest is the demo's (a link), are refused; another file in engines/ is not."""
    with pytest.raises(ConfigError, match=f"^{re.escape(f'--out {demo} would overwrite {MODEL}')}$"):
        weights_out(demo)
    demo.parent.mkdir()
    demo.with_suffix(".json").write_text("{}")
    (tmp_path / "m.json").symlink_to(demo.with_suffix(".json"))
    line = f"--out {tmp_path / 'm.safetensors'}: its manifest {tmp_path / 'm.json'} would overwrite {MANIFEST}"
    with pytest.raises(ConfigError, match=f"^{re.escape(line)}$"):
        weights_out(tmp_path / "m.safetensors")
    assert weights_out(demo.with_name("mine.safetensors")) == demo.with_name("mine.safetensors")
