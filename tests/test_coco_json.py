"""COCO results files (``--json x.json``) scored with pycocotools against rtseg's own COCO export of a clip."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtseg.cli import main
from rtseg.data.exporters import export_coco, export_mp4
from rtseg.data.synthetic import SyntheticScene


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A synthetic clip as MP4 (6 frames at 30 fps) and its ground truth as COCO (every frame: frame i is image
    i + 1)."""
    folder = tmp_path_factory.mktemp("exported")
    scene = SyntheticScene(5, num_frames=6, width=160, height=120)
    with contextlib.redirect_stdout(io.StringIO()):  # (pycocotools prints as it indexes)
        truth = COCO(str(export_coco(scene, folder / "coco")))
    return export_mp4(scene, folder / "clip.mp4"), truth


def _run(clip, results, options: list[str]):
    """Results of the shipped demo model on ``clip`` (``rtseg --source clip --json results`` with ``options``)."""
    assert main(["--source", str(clip), "--json", str(results), "--no-progress", *options]) == 0
    return results


def _mask_ap(truth: COCO, results, frames: list[int]) -> float:
    """pycocotools' mask AP of ``results`` over the clip's ``frames`` only (images ``frame + 1``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(truth, truth.loadRes(str(results)), "segm")
        evaluation.params.imgIds = [f + 1 for f in frames]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


@pytest.fixture(scope="module")
def whole(exported, tmp_path_factory):
    """Results of a run over every frame of the clip."""
    return _run(exported[0], tmp_path_factory.mktemp("whole") / "all.json", [])


@pytest.mark.parametrize("options, frames", [(["--vid-stride", "2"], [0, 2, 4]), (["--start", "0.09"], [3, 4, 5]),
                                             (["--start", "0.03", "--vid-stride", "3"], [1, 4])])
def test_a_strided_or_cut_run_scores_as_the_whole_run_on_the_same_frames(exported, whole, tmp_path, options, frames):
    """image_id is the frame's number in the file + 1, as the export numbers it: was the number of the frame in the
    run's output (frames 0, 2, 4 of a --vid-stride 2 run were images 1, 2, 3: mask AP 0.30 instead of 0.49 here)."""
    clip, truth = exported
    part = _run(clip, tmp_path / "part.json", options)
    assert {e["image_id"] for e in json.loads(part.read_text())} <= {f + 1 for f in frames}
    expected = _mask_ap(truth, whole, frames)
    assert expected > 0.3  # (the demo model finds the shapes: a score that a wrong numbering lowers)
    assert _mask_ap(truth, part, frames) == pytest.approx(expected, abs=1e-9)
