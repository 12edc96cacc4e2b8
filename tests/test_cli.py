"""The command line, run as a user runs it: ``python run.py ...`` in a subprocess."""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from servers.helpers import TINY_CLASSES, RtspServer, free_port, make_clip, rtsp_server_available, tiny_weights

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "run.py")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    weights = tiny_weights(d / "tiny.safetensors")
    clip = make_clip(d / "clip.mp4", frames=12, width=96, height=64)
    photo = d / "photo.jpg"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    garbage = d / "garbage.mp4"
    garbage.write_bytes(b"\x00garbage" * 500)
    return {"weights": str(weights), "clip": str(clip), "photo": str(photo), "garbage": str(garbage), "dir": d}


def _run(args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(RUN + args, capture_output=True, text=True, timeout=timeout, cwd=kw.get("cwd", REPO), env=env)


def _assert_user_error(r: subprocess.CompletedProcess, match: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith(("rtseg: error: ", "rtseg demo: error: ")), r.stderr
    assert match in lines[0], lines[0]


BAD = {
    "unknown option": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad int": (["--source", "{clip}", "--max-frames", "abc"], "invalid int value"),
    "no source": (["--weights", "{weights}"], "--source is required"),
    "missing file": (["--source", "{dir}/nope.mp4", "--weights", "{weights}"], "source not found"),
    "garbage file": (["--source", "{garbage}", "--weights", "{weights}"], "cannot read video file"),
    "bad scheme": (["--source", "ftp://bob:hunter2@x/y", "--weights", "{weights}"], "unsupported URL scheme"),
    "unreachable": (["--source", "rtsp://bob:hunter2@127.0.0.1:9/x", "--weights", "{weights}"], "cannot open stream"),
    "camera absent": (["--source", "5", "--weights", "{weights}"], "camera 5 not present"),
    "missing weights": (["--source", "{clip}", "--weights", "{dir}/none.safetensors"], "none.safetensors not found; give the weights file"),
    "no weights, not yolact": (["--source", "{clip}", "--engine", "msrcnn"], "--engine msrcnn needs --weights"),
    "unwritable": (["--source", "{clip}", "--weights", "{weights}", "--output", "/nonexistent/dir/o.mp4"],
                   "does not exist"),
    "bad output type": (["--source", "{clip}", "--weights", "{weights}", "--output", "{dir}/o.avi"],
                        "unknown type .avi; use .m4v/.mov/.mp4 for video or .bmp/.jpeg/.jpg/.png/.tif/.tiff/.webp for "
                        "images"),  # (named .mp4 and .png/.jpg only)
    "video named per frame": (["--source", "{clip}", "--weights", "{weights}", "--output", "{dir}/v/{{seq:05d}}.mp4"],
                              "{{seq}} names one image per frame, but a video is one file"),  # (wrote '{seq:05d}.mp4')
    "bad json type": (["--source", "{clip}", "--weights", "{weights}", "--json", "{dir}/o.txt"], ".jsonl"),
    "partial output name": (["--source", "{clip}", "--weights", "{weights}", "--output", "{dir}/o.partial.mp4"],
                            "--output {dir}/o.partial.mp4: a .partial name is rtseg's for o.mp4 while that is "
                            "written (an interrupted run leaves it); choose another name"),
    "partial json name": (["--source", "{clip}", "--weights", "{weights}", "--json", "{dir}/o.partial.json"],
                          "JSON output {dir}/o.partial.json: a .partial name is rtseg's for o.json while that is "
                          "written (an interrupted run leaves it); choose another name"),
    "bad stride": (["--source", "{clip}", "--weights", "{weights}", "--vid-stride", "0"],
                   "--vid-stride 0: must be an integer >= 1"),
    "negative start": (["--source", "{clip}", "--weights", "{weights}", "--start", "-1"],
                       "--start -1: must be a finite number >= 0 seconds"),
    "nan end": (["--source", "{clip}", "--weights", "{weights}", "--end", "nan"],
                "--end nan: must be a finite number >= 0 seconds"),
    "bad serve": (["--source", "{clip}", "--weights", "{weights}", "--serve", "localhost"], "use HOST:PORT"),
    "bad push": (["--source", "{clip}", "--weights", "{weights}", "--push", "ftp://bob:hunter2@h/x"],
                 "unsupported scheme"),
    "end before start": (["--source", "{clip}", "--weights", "{weights}", "--start", "0.1", "--end", "0.05"],
                         "--end 0.05: must be after --start (0.1 seconds)"),
    "json twice": (["--source", "{clip}", "--weights", "{weights}", "--json", "{dir}/o.json", "--json",
                    "{dir}/o.jsonl"], "--json given twice ({dir}/o.json, {dir}/o.jsonl); give it once"),
    "output twice": (["--source", "{clip}", "--weights", "{weights}", "--output", "{dir}/o.mp4", "--output",
                      "{dir}/o2.mp4"], "--output given twice ({dir}/o.mp4, {dir}/o2.mp4); give it once"),
    "serve twice": (["--source", "{clip}", "--serve", "127.0.0.1:1", "--serve=127.0.0.1:2"],
                    "--serve given twice (127.0.0.1:1, 127.0.0.1:2); give it once"),
    "push twice": (["--source", "{clip}", "--push", "rtsp://h/a", "--push", "rtsp://h/b"],
                   "--push given twice (rtsp://h/a, rtsp://h/b); give it once"),
    "demo weights": (["demo", "--weights", "{dir}/none.safetensors"], "not found; pass the path of an existing weights"),
    "demo weights a folder": (["demo", "--weights", "{dir}"], "is a folder; pass the path of an existing weights"),
    "demo out is a file": (["demo", "--out", "{clip}"], "is a file, not a folder"),
    "demo out under a file": (["demo", "--out", "{clip}/out"], "cannot create the folder"),
}


SUBPROCESS_CASES = {"unknown option", "garbage file", "unwritable", "demo out is a file"}
"""BAD cases run as a user runs them (``python run.py``: exit status, stderr, no traceback); the others call
``rtseg.cli.main`` in this process (3-5 s less each: no interpreter and torch import), with the same checks."""


@pytest.mark.parametrize("case", list(BAD))
def test_user_errors_are_one_line_exit_2(files, case, capsys):
    args, match = BAD[case]
    args, match = [a.format(**files) for a in args], match.format(**files)
    if case in SUBPROCESS_CASES:
        r = _run(args)
    else:
        from rtseg.cli import main

        code = main(args)
        out, err = capsys.readouterr()
        r = subprocess.CompletedProcess(args, code, out, err)
    _assert_user_error(r, match)
    assert "hunter2" not in r.stderr + r.stdout  # credentials are never printed
    assert not any(p.name.startswith("o.") for p in files["dir"].iterdir()), "nothing may be written on error"


def test_bad_image_mid_folder_is_skipped_with_a_warning(files, tmp_path):
    """The frames after it keep their files' names in the JSON Lines output (seq alone no longer tells which)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.png", "d.png"):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 90, np.uint8))
    (folder / "c.png").write_bytes(b"not a png")
    out, lines = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    r = _run(["--source", str(folder), "--weights", files["weights"], "--output", str(out), "--json", str(lines),
              "--no-progress"])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"rtseg: warning: skipped {folder / 'c.png'}: not a readable image file" in r.stderr
    with av.open(str(out)) as c:
        assert len(list(c.decode(video=0))) == 3
    records = [json.loads(line) for line in lines.read_text().splitlines()]  # each names its image: seq skips none
    assert [(r["seq"], r["file"]) for r in records] == [(0, str(folder / "a.png")), (1, str(folder / "b.png")),
                                                        (2, str(folder / "d.png"))]


@pytest.mark.skipif(rtsp_server_available() is not None, reason=str(rtsp_server_available()))
def test_stream_lost_for_good_mid_run_keeps_what_was_recorded(files, tmp_path):
    """A real RTSP server on loopback is killed mid-run: with --reconnect-timeout 1 the run ends with one
    error line (exit 2) that names the finished recording, which holds every frame written before."""
    server = RtspServer(free_port(), width=96, height=64).start()
    out = tmp_path / "o.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(RUN + ["--source", server.url, "--weights", files["weights"], "--output", str(out),
                                   "--reconnect-timeout", "1", "--no-hud"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        partial = tmp_path / "o.partial.mp4"
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 2000) and proc.poll() is None:
            assert time.monotonic() < deadline, "no frames recorded within 60 s"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        server.stop()
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.strip().splitlines() if not line.startswith("rtseg: warning: ")]
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "not back after 1s" in lines[0] and f"kept in {out}" in lines[0], err
    kept = int(lines[0].split("; the ")[1].split(" frames")[0])
    assert not partial.exists()
    with av.open(str(out)) as c:
        assert len(list(c.decode(video=0))) == kept > 0


def test_truncated_file_finishes_with_a_warning(files, tmp_path):
    data = make_clip(tmp_path / "whole.mp4", frames=30, width=96, height=64, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:(data.find(b"mdat") + len(data)) // 2])
    out = tmp_path / "o.mp4"
    r = _run(["--source", str(cut), "--weights", files["weights"], "--output", str(out)])
    assert r.returncode == 0 and out.exists(), r.stderr
    assert f"rtseg: warning: {cut} ended at" in r.stderr and "may be truncated" in r.stderr


def test_port_in_use(files):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run(["--source", files["clip"], "--weights", files["weights"], "--serve", f"127.0.0.1:{port}"])
    _assert_user_error(r, "port in use")


def test_single_image_writes_png_and_coco_json(files, tmp_path):
    out_png, out_json = tmp_path / "out.png", tmp_path / "out.json"
    r = _run(["--source", files["photo"], "--weights", files["weights"], "--output", str(out_png),
              "--json", str(out_json), "--score-threshold", "0", "--top-k", "4"])
    assert r.returncode == 0, r.stderr
    image = cv2.imread(str(out_png))
    assert image.shape == (60, 80, 3)
    assert not np.array_equal(image, cv2.imread(files["photo"]))  # something was drawn
    results = json.loads(out_json.read_text())
    assert 1 <= len(results) <= 4
    for det in results:
        assert det["image_id"] == 1 and len(det["bbox"]) == 4
        assert det["category_id"] == TINY_CLASSES.index(det["category_name"]) + 1  # 1-based, as COCO files are
        mask = mask_utils.decode({"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode()})
        assert mask.shape == (60, 80)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.png"]  # no temporary files left


def test_yolact_without_weights_runs_the_demo_model(files, tmp_path):
    out_jsonl = tmp_path / "out.jsonl"
    r = _run(["--source", "synthetic:3", "--max-frames", "2", "--json", str(out_jsonl)])
    assert r.returncode == 0, r.stderr
    assert "using the demo model yolact_demo.safetensors" in r.stderr
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    labels = {d["class_name"] for rec in records for d in rec["detections"]}
    assert len(records) == 2 and labels and labels <= {"circle", "square", "triangle", "star", "ring", "cross"}


def test_class_names_name_the_classes_of_an_official_pth_that_carries_none(files, tmp_path, capsys):
    """An official-layout .pth of 3 classes was named class0, class1, class2 with no way to name them on the command
    line; --class-names FILE (one per line) names them, a file of another count is one line."""
    import torch

    from rtseg.cli import main
    from rtseg.models.yolact import Yolact
    from servers.helpers import tiny_config

    torch.manual_seed(0)
    pth = tmp_path / "custom.pth"
    torch.save(Yolact(tiny_config()).state_dict(), pth)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    out = tmp_path / "o.jsonl"
    args = ["--source", files["photo"], "--weights", str(pth), "--score-threshold", "0", "--json", str(out)]
    assert main([*args, "--class-names", str(names)]) == 0
    found = {d["class_name"] for line in out.read_text().splitlines() for d in json.loads(line)["detections"]}
    assert found and found <= {"cat", "dog", "bird"}
    names.write_text("cat\ndog\n")
    capsys.readouterr()
    assert main([*args, "--class-names", str(names)]) == 2
    assert capsys.readouterr().err == (f"rtseg: error: --class-names {names}: lists 2 class names, the model of {pth} "
                                       "has 3 classes; list one name per class, in the model's class order\n")
    assert main(["--source", files["photo"], "--engine", "slic", "--class-names", str(names)]) == 2
    assert "--class-names applies to the yolact, msrcnn and fcn engines, not slic" in capsys.readouterr().err


def test_video_file_to_mp4_and_jsonl(files, tmp_path):
    out_mp4, out_jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = _run(["--source", files["clip"], "--weights", files["weights"], "--output", str(out_mp4),
              "--json", str(out_jsonl), "--vid-stride", "2"])
    assert r.returncode == 0, r.stderr
    assert "frames 6  dropped 0" in r.stdout and "inference" in r.stdout
    with av.open(str(out_mp4)) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (64, 96, 3)
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [rec["seq"] for rec in records] == list(range(6))
    assert [rec["index"] for rec in records] == [0, 2, 4, 6, 8, 10]  # the frames' numbers in the file
    assert [rec["pts"] for rec in records] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_sigterm_finishes_the_frame_and_closes_outputs(files, tmp_path):
    out_mp4, out_jsonl = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    proc = subprocess.Popen(RUN + ["--source", "synthetic", "--realtime", "--weights", files["weights"],
                                   "--output", str(out_mp4), "--json", str(out_jsonl)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out_jsonl.exists() or out_jsonl.stat().st_size < 1000):
            time.sleep(0.2)
        assert out_jsonl.exists(), "no frame was written within 60 s"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stderr and "Traceback" not in stderr
    lines = out_jsonl.read_text().splitlines()
    assert all(json.loads(line)["source_id"] == "synthetic:3" for line in lines)  # every line complete
    with av.open(str(out_mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(lines)  # the recording was finalised with every frame
    assert f"frames {len(lines)} " in stdout


def test_subcommand_dispatch_and_module_entry():
    r = _run(["eval", "--help"])
    assert r.returncode == 0 and "usage" in r.stdout.lower()
    r = subprocess.run([sys.executable, "-m", "rtseg", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and "--source" in r.stdout and "--serve-token" in r.stdout


def test_demo_runs_the_full_pipeline_and_reports_ap(tmp_path):
    """The demo with a random-weight model of the synthetic classes (the shipped weights are trained)."""
    import torch

    from rtseg.data.synthetic import CLASSES
    from rtseg.models.yolact import Yolact, YolactConfig
    from rtseg.weights import save_yolact

    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=len(CLASSES), input_size=128, fpn_channels=32, num_prototypes=8)
    weights = save_yolact(tmp_path / "demo.safetensors", Yolact(cfg), CLASSES)
    r = _run(["demo", "--weights", str(weights), "--frames", "6", "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr
    assert "frames 6  dropped 0" in r.stdout and "mask_AP" in r.stdout and "box_AP50" in r.stdout
    with av.open(str(tmp_path / "out" / "demo.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    assert len((tmp_path / "out" / "demo.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("order", ["reversed", "other"])
def test_demo_with_weights_of_other_classes_says_which(tmp_path, order):
    """Weights given with --weights whose classes are not the synthetic ones in their order: the line said they were
    not trained on the synthetic classes and pointed to the shipped demo model's checkout, whatever they held."""
    import torch

    from rtseg.data.synthetic import CLASSES
    from rtseg.models.yolact import Yolact, YolactConfig
    from rtseg.weights import save_yolact

    names = list(CLASSES)[::-1] if order == "reversed" else ["cat", "dog"]
    torch.manual_seed(0)
    cfg = YolactConfig(backbone="resnet18", num_classes=len(names), input_size=128, fpn_channels=32, num_prototypes=8)
    weights = save_yolact(tmp_path / "w.safetensors", Yolact(cfg), names)
    r = _run(["demo", "--weights", str(weights), "--frames", "2", "--out", str(tmp_path / "out")])
    which = "the synthetic classes in another order" if order == "reversed" else "cat, dog"
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"rtseg demo: error: {weights} has the classes {which}; the demo scores the synthetic classes "
        f"{', '.join(CLASSES)} in this order: pass weights trained with rtseg train --data synthetic"], r.stderr


def test_serve_shows_live_stats_with_token(files):
    """--serve wires the pipeline metrics into the web page's /stats.json (token required)."""
    import urllib.error
    import urllib.request

    from servers.helpers import free_port

    port = free_port()
    proc = subprocess.Popen(RUN + ["--source", "synthetic", "--realtime", "--weights", files["weights"],
                                   "--serve", f"127.0.0.1:{port}", "--serve-token", "tok3n", "--max-frames", "300"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json?token=tok3n", timeout=2) as r:
                    stats = json.loads(r.read())
                if stats["frames"] >= 8:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.3)
        assert stats is not None and stats["frames"] >= 8 and "end_to_end" in stats["latency_ms"]
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=2)
        assert denied.value.code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in stderr


def test_audio_is_passed_through_to_the_recording(files, tmp_path) -> None:
    """--audio: the source's sound ends up in the MP4 beside the annotated video, about as long."""
    from fractions import Fraction

    src = tmp_path / "with_sound.mp4"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        for i in range(25):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 9, np.uint8), format="bgr24")):
                c.mux(p)
        for start in range(0, 48000, 1024):
            t = np.arange(start, min(start + 1024, 48000)) / 48000.0
            frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
            for p in a.encode(frame):
                c.mux(p)
        for s in (v, a):
            for p in s.encode():
                c.mux(p)
    out = tmp_path / "out.mp4"
    r = _run(["--source", str(src), "--weights", files["weights"], "--output", str(out), "--audio", "--no-progress"])
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        audio = sum(f.samples for f in c.decode(audio=0)) / 48000.0
    assert 0.8 <= audio <= 1.1, audio  # one second of sound, cut at the last video frame
    _assert_user_error(_run(["--source", "synthetic", "--weights", files["weights"], "--output", str(tmp_path / "s.mp4"),
                             "--audio"]), "--audio")
    _assert_user_error(_run(["--source", str(src), "--weights", files["weights"], "--output", str(tmp_path / "x.png"),
                             "--audio"]), "--audio")


@pytest.fixture(scope="module")
def fcn_weights(tmp_path_factory):
    """Small real FCN weights (the classes of ``tiny_weights`` + background) and their manifest."""
    import torch

    from rtseg.engines.fcn import save_fcn
    from rtseg.models.fcn import FCN, FcnConfig

    torch.manual_seed(0)
    names = ["background", *TINY_CLASSES]
    return str(save_fcn(tmp_path_factory.mktemp("fcn") / "f.safetensors",
                        FCN(FcnConfig(num_classes=len(names), width=0.0625)), names))


ENGINE_OPTION_ERRORS = {
    "unknown engine": (["--engine", "nope"], "invalid choice: 'nope'"),
    "score threshold for fcn": (["--weights", "{fcn}", "--score-threshold", "0.5"],
                                "--score-threshold applies to yolact, msrcnn and panoptic only, not fcn"),
    "top-k for slic": (["--engine", "slic", "--top-k", "3"], "--top-k applies to yolact and msrcnn only, not slic"),
    "segments for yolact": (["--segments", "50"], "--segments / --compactness apply to --engine slic only, not yolact"),
    "bad segment count": (["--engine", "slic", "--segments", "0"], "--segments 0: must be an integer >= 1"),
    "COCO json for fcn": (["--weights", "{fcn}", "--json", "{dir}/o.json"], "use a .jsonl file"),
    "COCO json for slic": (["--engine", "slic", "--json", "{dir}/o.json"], "which slic does not make"),
    "backend for fcn": (["--weights", "{fcn}", "--backend", "onnx"],
                        "applies to the yolact engine and to panoptic with yolact --weights only"),
    "panoptic without semantic": (["--engine", "panoptic"], "needs --semantic FCN_WEIGHTS"),
    "panoptic things from fcn": (["--engine", "panoptic", "--weights", "{fcn}", "--semantic", "{fcn}"],
                                 "holds fcn weights; give the weights of an instance engine"),
    "semantic without panoptic": (["--semantic", "{fcn}"], "--semantic applies to --engine panoptic only"),
    "precision without tensorrt": (["--backend", "onnx", "--precision", "fp16"], "apply to --backend tensorrt only"),
    "calib without int8": (["--backend", "tensorrt", "--calib", "{dir}"], "add --precision int8"),
    "int8 without calib": (["--backend", "tensorrt", "--precision", "int8"], "needs --calib DIR"),
    "int8 empty calib": (["--backend", "tensorrt", "--precision", "int8", "--calib", "{empty}"], "holds no"),
    "weights folder": (["--weights", "{dir}"], "is a folder"),
    "semantic folder": (["--engine", "panoptic", "--semantic", "{dir}"], "is a folder; give the weights file"),
    "semantic from yolact": (["--engine", "panoptic", "--semantic", "{weights}"],
                             "weights (manifest format 'rtseg-yolact/1'); give the weights of an fcn"),
    "semantic from torchvision": (["--engine", "panoptic", "--semantic", "torchvision:fcn_resnet50"],
                                  "--semantic torchvision:fcn_resnet50: torchvision's models are taken by --weights "
                                  "(--engine fcn) only"),  # (was "not found; give the weights file")
    "json over the manifest": (["--weights", "{weights}", "--json", "{manifest}"], "would overwrite the input"),
    "output over the source": (["--weights", "{weights}", "--output", "{clip}"], "would overwrite the input"),
    "images per frame into the calib folder": (["--backend", "tensorrt", "--precision", "int8", "--calib", "{empty}",
                                                "--output", "{empty}/{{seq}}.png"], "into the input folder"),
    # (said "--reconnect-timeout must be >= 0 seconds, got -1.0", unlike every other range error)
    "negative reconnect timeout": (["--reconnect-timeout", "-1"],
                                   "--reconnect-timeout -1: must be a finite number >= 0 seconds"),
    "nan reconnect timeout": (["--reconnect-timeout", "nan"],
                              "--reconnect-timeout nan: must be a finite number >= 0 seconds"),
}


@pytest.mark.parametrize("case", list(ENGINE_OPTION_ERRORS))
def test_engine_options_that_do_not_apply_are_refused_before_anything_loads(case, files, fcn_weights, tmp_path,
                                                                          capsys):
    """In process (no model is loaded: the checks come first); each is one line and exit 2."""
    from rtseg.cli import main

    (tmp_path / "empty").mkdir()
    names = {**files, "fcn": fcn_weights, "empty": tmp_path / "empty", "dir": tmp_path,
             "manifest": files["weights"].replace(".safetensors", ".json")}
    args, match = ENGINE_OPTION_ERRORS[case]
    before = {p: p.stat().st_mtime_ns for p in files["dir"].iterdir()}
    assert main(["--source", files["clip"], *[a.format(**names) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtseg: error: ") and match in err[0], err
    assert {p: p.stat().st_mtime_ns for p in files["dir"].iterdir()} == before  # no input overwritten
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


@pytest.mark.parametrize("precision", [[], ["--precision", "int8"]])
def test_calib_without_tensorrt_is_refused_as_such_not_as_an_input_overwritten(precision, tmp_path, capsys):
    """Was: ``--calib DIR --json DIR/d.jsonl`` (an existing file; no --backend tensorrt) was told it "would
    overwrite the input", every file of the calibration folder counting as one, though without TensorRT INT8 the
    folder is never read; now the line says what is wrong with the options, and the file is as it was."""
    from rtseg.cli import main

    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "d.jsonl").write_text("kept\n")
    args = ["--source", "x.mp4", *precision, "--calib", str(tmp_path / "frames"), "--json",
            str(tmp_path / "frames" / "d.jsonl")]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == ["rtseg: error: --precision / --calib apply to --backend tensorrt "
                                                    "only"]
    assert (tmp_path / "frames" / "d.jsonl").read_text() == "kept\n"


@pytest.mark.parametrize("option", ["--weights", "--semantic"])
@pytest.mark.parametrize("fmt", [["rtseg-fcn/1"], {"a": 1}])
def test_a_manifest_format_that_is_no_string_is_one_line(option, fmt, files, fcn_weights, tmp_path, capsys):
    """A list or object as the manifest's format was a TypeError's traceback (unhashable) when --engine was
    inferred from it; now the loader's line says what the format is and what was expected."""
    from rtseg.cli import main

    odd = tmp_path / "odd.safetensors"
    shutil.copy(files["weights"], odd)
    manifest = json.loads(Path(files["weights"]).with_suffix(".json").read_text())
    odd.with_suffix(".json").write_text(json.dumps({**manifest, "format": fmt}))
    args = ["--weights", str(odd)] if option == "--weights" else [
        "--engine", "panoptic", "--weights", files["weights"], "--semantic", str(odd)]
    assert main(["--source", files["clip"], "--max-frames", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtseg: error: ") and f"manifest format is {fmt!r}, expected" in err[0]


@pytest.mark.parametrize("command, args, option", [
    ("rtseg", ["--source", "synthetic", "--output", ""], "--output"),  # an output that would silently not be written
    ("rtseg", ["--source", "synthetic", "--outp", ""], "--output"),  # argparse's abbreviations too
    ("rtseg", ["--source", "synthetic", "--serve", "127.0.0.1:0", "--serve-token", " "], "--serve-token"),
    ("rtseg", ["--source", "synthetic", "--push", ""], "--push"),
    ("rtseg eval", ["eval", "--data", ""], "--data"),
    ("rtseg train", ["train", "--data", "x", "--iters", "1", "--out="], "--out"),
])
def test_an_empty_option_value_is_one_line_in_every_command(command, args, option, capsys):
    """``--output "$OUT"`` with OUT unset read as "no --output": the run went on without the output asked for."""
    from rtseg.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{command}: error: {option} is empty (an unset shell variable?); give it a value "
                   f"(see {command} --help)"], err


@pytest.mark.parametrize("option, given, said", [
    ("--resume", "{text}", "{text}: not a PyTorch checkpoint"),
    ("--init", "{text}", "{text}: not a PyTorch checkpoint"),
    ("--init", "{weights}", "--init {weights}: weights of --fpn-channels 32 --num-prototypes 8, this run has "),
])
def test_a_train_start_refused_for_its_resume_or_init_file_writes_nothing(files, option, given, said, tmp_path, capsys):
    """A --resume / --init file that is there but no checkpoint of the run, or weights of another architecture, is
    refused once it is read (after the data set and the model are made): the folders of --out and the checkpoint
    (<out without suffix>.train/) were made before it, and left behind empty; now they are made once every input is
    read. (A missing or unreadable file is refused before torch is imported: tests/test_cli_startup.py.)"""
    from rtseg.cli import main

    (tmp_path / "text.pth").write_text("hello")
    names = {"text": tmp_path / "text.pth", "weights": files["weights"]}
    before = sorted(tmp_path.rglob("*"))
    assert main(["train", "--data", "synthetic", "--train-images", "4", "--input-size", "64", "--fpn-channels", "16",
                 "--num-prototypes", "4", "--iters", "1", "--workers", "0", "--val-images", "1",
                 option, given.format(**names), "--out", str(tmp_path / "out" / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rtseg train: error: {said.format(**names)}"), err
    assert sorted(tmp_path.rglob("*")) == before, "nothing may be written"


@pytest.mark.parametrize("package, args", [("cv2", ["--help"]), ("av", ["--source", "{clip}"])])
def test_a_missing_dependency_is_one_line(files, package, args):
    """OpenCV missing (imported at start-up) or PyAV missing (imported when the video opens): one line, exit 2."""
    code = (f"import runpy, sys; sys.modules[{package!r}] = None; sys.argv = ['rtseg', *{args!r}]; "
            "runpy.run_module('rtseg', run_name='__main__')").replace("{clip}", files["clip"])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (f"rtseg: error: Python package '{package}' is missing; install "
                                                      "rtseg's dependencies (pip install -e . in the checkout)"), r.stderr


def test_a_run_that_fails_before_its_first_frame_leaves_existing_outputs_alone(files, tmp_path, capsys):
    """Outputs open before the engine loads; weights that fail to load used to leave the earlier results file as
    ``[]`` and the earlier JSON lines emptied (and new empty files behind)."""
    from rtseg.cli import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00 not a checkpoint" * 50)
    results, lines = tmp_path / "res.json", tmp_path / "keep.jsonl"
    results.write_text('[{"x": 1}]')
    lines.write_text('{"seq": 0}\n')
    for extra in (["--json", str(results)], ["--json", str(lines)], ["--json", str(tmp_path / "new.jsonl")]):
        assert main(["--source", files["clip"], "--weights", str(bad), *extra]) == 2
        assert "not a PyTorch checkpoint" in capsys.readouterr().err
    assert results.read_text() == '[{"x": 1}]' and lines.read_text() == '{"seq": 0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "keep.jsonl", "res.json"]


def test_engine_from_the_manifest_panoptic_and_slic_run_from_the_command_line(files, fcn_weights, tmp_path):
    fcn_out = tmp_path / "fcn.jsonl"
    r = _run(["--source", files["clip"], "--weights", fcn_weights, "--json", str(fcn_out), "--max-frames", "2"])
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["kind"] for line in fcn_out.read_text().splitlines()] == ["semantic"] * 2
    pan_out, video = tmp_path / "pan.jsonl", tmp_path / "pan.mp4"
    r = _run(["--source", files["clip"], "--engine", "panoptic", "--weights", files["weights"], "--semantic",
              fcn_weights, "--score-threshold", "0.0", "--json", str(pan_out), "--output", str(video),
              "--max-frames", "3"])
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in pan_out.read_text().splitlines()]
    assert [rec["kind"] for rec in records] == ["panoptic"] * 3
    assert all({"id", "class_id", "class_name", "isthing", "segmentation"} <= set(s)
               for rec in records for s in rec["segments"])
    with av.open(str(video)) as c:
        assert len(list(c.decode(video=0))) == 3
    counts = []
    for extra in ([], ["--segments", "20", "--compactness", "30"]):
        sp_out = tmp_path / "sp.jsonl"
        r = _run(["--source", files["clip"], "--engine", "slic", "--json", str(sp_out), "--max-frames", "1", *extra])
        assert r.returncode == 0, r.stderr
        (record,) = [json.loads(line) for line in sp_out.read_text().splitlines()]
        assert record["kind"] == "superpixels" and len(record["segments"]) == record["num_segments"] > 1
        counts.append(record["num_segments"])
    assert counts[1] <= 30 < 100 <= counts[0], counts  # --segments 20 vs the default 200


def test_json_lines_on_stdout_and_a_reader_that_goes_away_ends_the_run(files, tmp_path):
    r = _run(["--source", files["clip"], "--weights", files["weights"], "--json", "-"])
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]  # nothing else on stdout
    assert [rec["seq"] for rec in records] == list(range(12)) and "end_to_end" in r.stderr
    # `rtseg ... --json - | head -1`: once the reader has closed the pipe the run ends, exit 0, no traceback, and
    # one line says why (was: not a word, the MP4 a few frames of 300) and how many frames the outputs keep
    proc = subprocess.Popen(RUN + ["--source", "synthetic", "--json", "-", "--output", str(tmp_path / "o.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads(proc.stdout.readline())["seq"] == 0
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    stopped = re.fullmatch(r"rtseg: the reader of JSON Lines output stdout went away after (\d+) lines?: the run "
                           r"stopped after (\d+) frames; outputs are closed", err.decode().splitlines()[-1])
    assert stopped is not None, err.decode()
    lines, frames = map(int, stopped.groups())
    with av.open(str(tmp_path / "o.mp4")) as c:  # the other outputs are finished
        assert 1 <= lines <= frames == len(list(c.decode(video=0))) < 300


@pytest.fixture
def image_folder(tmp_path):
    """``tmp_path/mix`` with the images a.png and b.png (different bytes), and a snapshot of its contents."""
    folder = tmp_path / "mix"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 60 + 40 * i, np.uint8))
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


SOURCE_CLASHES = {  # --source, --output, the error line (MIX: the image folder)
    "folder, one of its images": ("MIX", "MIX/a.png", "--output MIX/a.png would overwrite the input MIX/a.png"),
    "glob, one of its matches": ("MIX/*.png", "MIX/b.png", "--output MIX/b.png would overwrite the input MIX/b.png"),
    "folder, images per frame into it": ("MIX", "MIX/{seq:05d}.png", "--output MIX/{seq:05d}.png would write its "
                                         "images beside the input MIX/a.png, where they could overwrite inputs"),
    "folder read with a stride, an image it skips": ("MIX --vid-stride 2", "MIX/b.png",
                                                     "--output MIX/b.png would overwrite the input MIX/b.png"),
    "glob, images per frame beside its matches": ("MIX/a*.png", "MIX/{seq}.png", "--output MIX/{seq}.png would "
                                                  "write its images beside the input MIX/a.png, where they could "
                                                  "overwrite inputs"),
}


@pytest.mark.parametrize("case", list(SOURCE_CLASHES))
def test_an_output_over_the_images_of_a_folder_or_glob_source_is_refused(case, files, image_folder, capsys):
    """Was: the run wrote its annotated frame over the input image (exit 0), or its per-frame images into the folder
    it was reading (where they could replace inputs)."""
    from rtseg.cli import main

    source, output, line = (s.replace("MIX", str(image_folder)) for s in SOURCE_CLASHES[case])
    before = _contents(image_folder)
    assert main(["--source", *source.split(), "--weights", files["weights"], "--output", output,
                 "--max-frames", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"rtseg: error: {line}; choose another "
                                                    f"{'folder' if '{seq' in output else 'output path'}"]
    assert _contents(image_folder) == before


def test_outputs_beside_a_folder_source_are_not_its_inputs(files, image_folder, capsys):
    """A recording and results written into the source folder are not images it reads: a second run writes them
    again (they were refused as "inputs" once they existed)."""
    from rtseg.cli import main

    outputs = ["--output", f"{image_folder}/run.mp4", "--json", f"{image_folder}/run.json"]
    for _ in range(2):
        assert main(["--source", str(image_folder), "--weights", files["weights"], *outputs]) == 0, \
            capsys.readouterr().err
    assert {"run.mp4", "run.json"} <= _contents(image_folder).keys()


def test_images_per_frame_that_cannot_name_an_input_may_go_beside_a_glob_source(files, image_folder, capsys):
    from rtseg.cli import main

    before = _contents(image_folder)
    assert main(["--source", f"{image_folder}/*.png", "--weights", files["weights"], "--no-hud",
                 "--output", f"{image_folder}/{{seq:05d}}.jpg"]) == 0
    assert _contents(image_folder).keys() == {"00000.jpg", "00001.jpg", *before}
    assert all(_contents(image_folder)[name] == data for name, data in before.items())


def test_outputs_never_overwrite_the_shipped_demo_model(tmp_path):
    """Without --weights the run reads the demo model: ``--json engines/yolact_demo.json`` replaced its manifest with
    the run's results (exit 0), in ``rtseg`` and in ``rtseg eval``. Run from a copy of the package whose
    engines/ holds small demo weights, so that the checkout's own model is never at risk."""
    import dataclasses
    import shutil

    from rtseg.data.synthetic import CLASSES
    from rtseg.models.yolact import Yolact
    from rtseg.weights import save_yolact
    from servers.helpers import tiny_config

    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "rtseg", copy / "rtseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "run.py", copy)
    (copy / "engines").mkdir()
    save_yolact(copy / "engines" / "yolact_demo.safetensors",
                Yolact(dataclasses.replace(tiny_config(), num_classes=len(CLASSES))), CLASSES)
    demo = {p.name: p.read_bytes() for p in (copy / "engines").iterdir()}
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((48, 64, 3), 90, np.uint8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["--source", str(photo), "--json", "engines/yolact_demo.json"],
                 ["eval", "--data", "synthetic:test", "--max-images", "1", "--json", "engines/yolact_demo.json"]):
        r = subprocess.run([sys.executable, "run.py", *args], capture_output=True, text=True, timeout=120, cwd=copy,
                           env=env)
        prog = "rtseg eval" if args[0] == "eval" else "rtseg"
        assert r.returncode == 2 and r.stderr.splitlines() == [
            f"{prog}: error: --json {args[-1]} would overwrite the shipped demo model's manifest (python run.py runs "
            "it); choose another output path"], r.stderr
        assert {p.name: p.read_bytes() for p in (copy / "engines").iterdir()} == demo


def test_an_output_that_is_a_hard_link_to_an_input_is_refused(files, tmp_path, capsys):
    """Was: the check compared paths only, so ``ln tiny.json out.jsonl`` then ``--json out.jsonl`` emptied the
    weights' manifest and wrote the run's results into it (exit 0); a hard link to the weights or to the source got
    through as well. Each is refused as the input itself is: one line, exit 2, every file as it was."""
    from rtseg.cli import main

    weights, photo = Path(files["weights"]), Path(files["photo"])
    cases = [("--json", tmp_path / "results.jsonl", weights.with_suffix(".json")),  # written in place
             ("--json", tmp_path / "results.json", weights), ("--output", tmp_path / "seen.jpg", photo)]
    for _, link, given in cases:
        os.link(given, link)
    before = {p: p.read_bytes() for p in (*files["dir"].iterdir(), *tmp_path.iterdir())}
    for option, link, given in cases:
        assert main(["--source", str(photo), "--weights", str(weights), "--no-progress", option, str(link)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"rtseg: error: {option} {link} would overwrite the input {given}; choose another output path"]
    assert {p: p.read_bytes() for p in (*files["dir"].iterdir(), *tmp_path.iterdir())} == before


def test_a_run_that_writes_no_frame_leaves_existing_outputs_as_they_were(files, tmp_path, capsys, sigint_at_call):
    """An unreadable image, a folder of them, Ctrl-C before the first frame: the COCO results file became ``[]``
    (the README promises existing outputs are left as they were; .jsonl, .mp4 and .png outputs were). A run with no
    frame creates no results file either."""
    from rtseg.cli import main
    from rtseg.engines.yolact import YolactEngine

    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.png", "b.png"):
        (junk / name).write_bytes(b"not a png")
    out = tmp_path / "out"
    out.mkdir()
    old = {"k.json": b'["keep"]', "k.jsonl": b'{"seq": 0}\n', "k.mp4": b"old video", "k.png": b"old image"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    runs = [(junk / "a.png", 2, "rtseg: error: "), (junk, 2, "rtseg: error: "),
            (files["clip"], 0, "rtseg: stopped by signal after 0 frames")]
    for source, status, message in runs:
        for outputs in (["k.json", "k.mp4"], ["k.jsonl", "k.png"], ["new.json", None]):
            if status == 0:
                sigint_at_call(YolactEngine, "warmup", 1)  # a real SIGINT once the run handles signals
            options = ["--json", str(out / outputs[0]), *(["--output", str(out / outputs[1])] if outputs[1] else [])]
            assert main(["--source", str(source), "--weights", files["weights"], *options]) == status, outputs
            assert message in capsys.readouterr().err
            assert {p.name: p.read_bytes() for p in out.iterdir()} == old, (source, outputs)


@pytest.mark.parametrize("source, output, extra, warned", [
    ("mix", "o.png", [], True), ("mix/a.png", "o.png", [], False), ("mix", "o.png", ["--max-frames", "1"], False),
    ("mix", "o_{seq:05d}.png", [], False)])
def test_a_single_image_output_of_several_frames_warns_that_it_keeps_the_last(image_folder, tmp_path, capsys,
                                                                               source, output, extra, warned):
    """A multi-frame source (here a folder of two images) written to one --output image keeps only the last frame:
    one warning line at the start says so and how to keep each; a single frame (an image, --max-frames 1) or a
    {seq} pattern is not warned about (was: silent)."""
    from rtseg.cli import main

    output = tmp_path / output
    assert main(["--source", str(tmp_path / source), "--engine", "slic", "--output", str(output), "--no-progress",
                 *extra]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    expected = [f"rtseg: warning: --output {output} is one image, so it keeps only the last frame of this source; to "
                "keep each, name one file per frame, e.g. --output 'out/{seq:05d}.png'"]
    assert warnings == (expected if warned else []), warnings
    assert len(list(tmp_path.glob("o*.png"))) == (2 if "{seq" in output.name else 1)


def test_a_seq_format_that_is_not_a_plain_width_is_one_line(image_folder, tmp_path):
    """--output 'o/{seq:-5d}.png' (or a space-padded {seq:5}) would name files with spaces or signs: one line, exit 2,
    nothing written (was: ' 0000.png'-like names, silently)."""
    out = tmp_path / "o"
    out.mkdir()
    for pattern in ("{seq:-5d}.png", "{seq:5}.png"):
        r = _run(["--source", str(image_folder), "--engine", "slic", "--output", str(out / pattern)])
        _assert_user_error(r, f"bad {{seq}} pattern ({pattern[:-4]}: only {{seq}}, {{seq:d}} or a zero-padded width")
    assert list(out.iterdir()) == []


def test_file_names_with_a_newline_or_non_utf8_bytes_stay_one_line(tmp_path, capsys):
    """A warning or error naming a file called 'b<newline>c.png' was two lines on stderr (the second one without
    'rtseg:'), and a Latin-1 name showed as 'd\\udce9.png': now control characters and non-UTF-8 bytes of names
    are written as escapes (b\\nc.png, d\\xe9.png)."""
    from rtseg.cli import main

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((48, 64, 3), 90, np.uint8))
    (folder / "b\nc.png").write_bytes(b"not a png")
    (folder / os.fsdecode(b"d\xe9.png")).write_bytes(b"not a png")
    assert main(["--source", str(folder), "--engine", "slic", "--json", str(tmp_path / "o.jsonl"),
                 "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(" ")][:2]
    assert warnings == [f"rtseg: warning: skipped {folder}/b\\nc.png: not a readable image file",
                        f"rtseg: warning: skipped {folder}/d\\xe9.png: not a readable image file"], warnings
    assert main(["--source", str(folder / "b\nc.png"), "--engine", "slic", "--json", str(tmp_path / "p.jsonl")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rtseg: error: cannot read image {folder}/b\\nc.png: not a readable image file"]


def test_a_run_that_fails_before_its_first_frame_creates_no_json_lines_file(files, tmp_path, capsys):
    """A start past the last frame, a folder of unreadable images: the error came from the pipeline, after the
    outputs opened, and a new empty .jsonl was left behind (an existing one stayed, and stays, as it was)."""
    from rtseg.cli import main

    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.png", "b.png"):
        (junk / name).write_bytes(b"not a png")
    old = tmp_path / "old.jsonl"
    old.write_text('{"seq": 0}\n')
    for source, extra, said in ((files["clip"], ["--start", "1.19"], "past the last frame"),
                                (junk, [], "cannot read any image")):
        for out in (tmp_path / "new.jsonl", old):
            assert main(["--source", str(source), "--weights", files["weights"], *extra, "--json", str(out)]) == 2
            assert said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk", "old.jsonl"]
    assert old.read_text() == '{"seq": 0}\n'


def test_json_lines_to_a_closed_stdout_says_so_before_the_run(files):
    """``--json -`` with stdout closed (``>&-``) or opened for reading: was "write failed (Bad file descriptor); free
    space or choose another path" at the first frame."""
    for redirect in (">&-", "1</dev/null"):
        r = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *RUN, "--source", files["clip"], "--weights",
                            files["weights"], "--json", "-"], capture_output=True, text=True, timeout=120, cwd=REPO)
        _assert_user_error(r, "JSON Lines output stdout: standard output is closed or not open for writing; run "
                              "with stdout open (e.g. > dets.jsonl or | a reader) or give --json a file")


def _jsonl_and_failed_coco_results(folder: Path, lines: int, results: int) -> tuple:
    """A closed JSON Lines sink ``folder/a.jsonl`` of ``lines`` frames and an aborted COCO results sink
    ``folder/a.json`` of its first ``results`` frames (kept in ``a.partial.json``), frames without detections."""
    from rtseg.types import Detections, Frame
    from rtseg.video.coco_json import CocoJsonSink
    from rtseg.video.sinks import JsonlSink

    jsonl, coco = JsonlSink(folder / "a.jsonl"), CocoJsonSink(folder / "a.json")
    image = np.zeros((8, 8, 3), np.uint8)
    empty = Detections.empty((8, 8), class_names=("thing",))
    for seq in range(lines):
        for sink in (jsonl, coco)[: 2 if seq < results else 1]:
            sink.write(Frame(image=image, seq=seq, pts=seq / 10, capture_time=0.0, source_id="t"), empty, image)
    jsonl.close()
    coco.abort()
    return jsonl, coco


def test_the_frames_kept_are_counted_per_output_when_they_differ(tmp_path):
    """The sinks take each frame concurrently, so a JSON Lines file may hold the frame at which the MP4 failed: the
    line said "the 45 frames written before it are kept in a2.jsonl" of 46 lines."""
    from rtseg.cli import _with_kept_recordings
    from rtseg.errors import SinkError

    lines, results = _jsonl_and_failed_coco_results(tmp_path, 3, 2)
    failed = SinkError(f"MP4 output {tmp_path / 'a.partial.mp4'}: write failed")
    assert str(_with_kept_recordings(failed, [lines, results], 2)) == (
        f"{failed}; the frames written before it are kept in {tmp_path / 'a.jsonl'} (3 frames), "
        f"{tmp_path / 'a.partial.json'} (2 frames)")
    assert str(_with_kept_recordings(failed, [results], 2)) == (
        f"{failed}; the 2 frames written before it are kept in {tmp_path / 'a.partial.json'}")


def test_one_frame_kept_is_said_in_the_singular(tmp_path):
    """A run that failed after one frame said "the 1 frames written before it are kept in ..."."""
    from rtseg.cli import _with_kept_recordings
    from rtseg.errors import SinkError

    lines, results = _jsonl_and_failed_coco_results(tmp_path, 2, 1)
    failed = SinkError(f"MP4 output {tmp_path / 'a.partial.mp4'}: write failed")
    assert str(_with_kept_recordings(failed, [results], 1)) == (
        f"{failed}; the frame written before it is kept in {tmp_path / 'a.partial.json'}")
    assert str(_with_kept_recordings(failed, [lines, results], 1)) == (
        f"{failed}; the frames written before it are kept in {tmp_path / 'a.jsonl'} (2 frames), "
        f"{tmp_path / 'a.partial.json'} (1 frame)")


def test_a_run_after_a_crash_moves_the_leftovers_aside_and_records(files, tmp_path, capsys):
    """A 24/7 service restarted after a crash on the same outputs failed at every restart ("o.partial.mp4 is left
    from an interrupted run; move or delete it first") until a person stepped in. Now the run moves each leftover
    aside with one warning line naming both files (the cut COCO results made valid JSON) and records as usual."""
    from rtseg.cli import main
    from rtseg.types import Frame
    from rtseg.video.sinks import Mp4Sink

    crashed = Mp4Sink(tmp_path / "o.mp4", fps_hint=10)  # a run that failed: its recording kept, its lock free
    image = np.zeros((16, 16, 3), np.uint8)
    for seq in range(3):
        crashed.write(Frame(image=image, seq=seq, pts=seq / 10), None, image)
    crashed.abort()
    cut = '[{"image_id":1,"category_id":1,"bbox":[0,0,2,2],"score":0.5,"segmentation":{"size":[4,4],"counts":"04"}}'
    (tmp_path / "o.partial.json").write_text(cut)  # a COCO results file as SIGKILL leaves it: no closing ]
    assert main(["--source", files["clip"], "--weights", files["weights"], "--output", str(tmp_path / "o.mp4"),
                 "--json", str(tmp_path / "o.json"), "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rtseg: warning: ")]
    assert warned == [
        f"rtseg: warning: MP4 output {tmp_path / 'o.mp4'}: {tmp_path / 'o.partial.mp4'} was left by an interrupted "
        f"run; moved it to {tmp_path / 'o.recovered-1.mp4'}",
        f"rtseg: warning: JSON output {tmp_path / 'o.json'}: {tmp_path / 'o.partial.json'} was left by an "
        f"interrupted run; moved it to {tmp_path / 'o.recovered-1.json'}; added the closing ] that it lacked"]
    with av.open(str(tmp_path / "o.recovered-1.mp4")) as c:
        assert len(list(c.decode(video=0))) == 3
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert len(list(c.decode(video=0))) == 12
    assert json.loads((tmp_path / "o.recovered-1.json").read_text()) == json.loads(cut + "]")
    assert isinstance(json.loads((tmp_path / "o.json").read_text()), list)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.mp4", "o.recovered-1.json",
                                                          "o.recovered-1.mp4"]


@pytest.mark.slow
@pytest.mark.skipif(rtsp_server_available() is not None, reason=str(rtsp_server_available()))
def test_served_stats_show_a_camera_outage(files):
    """A real RTSP camera killed while ``--serve`` is scraped: ``fps_recent`` stayed at its last value and nothing
    said that frames had stopped. Now ``fps_recent`` falls to 0 and ``last_frame_age_s`` counts the outage."""
    import urllib.request

    server = RtspServer(free_port(), width=96, height=64).start()
    port = free_port()
    proc = subprocess.Popen(RUN + ["--source", server.url, "--weights", files["weights"], "--serve",
                                   f"127.0.0.1:{port}", "--reconnect-timeout", "120", "--no-hud"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def stats_when(ok, seconds: float) -> dict:
        deadline, stats = time.monotonic() + seconds, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=2) as r:
                    stats = json.loads(r.read())
                if ok(stats):
                    return stats
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not within {seconds} s; last stats {stats}")

    try:
        live = stats_when(lambda s: s["frames"] >= 10 and s["fps_recent"], 60)
        assert live["last_frame_age_s"] < 5
        server.stop()
        down = stats_when(lambda s: s["fps_recent"] == 0, 30)
        assert down["last_frame_age_s"] >= 5 and down["fps"] > 0
        later = stats_when(lambda s: s["last_frame_age_s"] >= down["last_frame_age_s"] + 1, 10)
        assert later["frames"] == down["frames"]
    finally:
        server.stop()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr


def test_the_frames_kept_in_an_mp4_are_its_own_count(tmp_path):
    """An MP4 kept by a run whose JSON output failed was said to hold the frames every output took (28 of its 29)."""
    from rtseg.cli import _with_kept_recordings
    from rtseg.errors import SinkError
    from rtseg.types import Detections, Frame
    from rtseg.video.sinks import Mp4Sink

    video = Mp4Sink(tmp_path / "m.mp4", fps_hint=10)
    image = np.zeros((16, 16, 3), np.uint8)
    empty = Detections.empty((16, 16), class_names=("thing",))
    for seq in range(3):
        video.write(Frame(image=image, seq=seq, pts=seq / 10, capture_time=0.0, source_id="t"), empty, image)
    video.abort()
    failed = SinkError(f"JSON Lines output {tmp_path / 'd.jsonl'}: write failed")
    assert str(_with_kept_recordings(failed, [video], 2)) == (
        f"{failed}; the 3 frames written before it are kept in {tmp_path / 'm.partial.mp4'}")


def test_sigterm_while_the_engine_loads_is_one_line_and_leaves_no_file(tmp_path):
    """SIGTERM after the outputs opened, while the engine loaded, ended the process without a word (-15), leaving
    an empty o.partial.mp4 that made the next run aimed at it refuse to start."""
    code = ("import os, signal, sys\nimport rtseg.cli as cli\nload = cli._load_engine\n"
            "def terminated_while_loading(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    return load(*args, **kwargs)\n"
            "cli._load_engine = terminated_while_loading\nsys.exit(cli.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--source", "synthetic", "--engine", "slic", "--max-frames", "3",
                        "--output", str(tmp_path / "o.mp4"), "--json", str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr.splitlines()) == (143, ["rtseg: terminated"]), (r.returncode, r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_escaped_braces_are_no_seq_pattern_and_are_refused(files, image_folder, tmp_path, capsys):
    """``--output 'a{{seq}}.png'`` (str.format's escaped braces: no {seq} field) wrote every frame to one file
    named ``a{seq}.png``, exit 0, without the one-image warning; beside a folder source it was refused as
    per-frame images that could overwrite its inputs. Now one line says what the braces are and how to write it."""
    from rtseg.cli import main

    def line(output: Path) -> str:
        return (f"rtseg: error: image output {output}: bad {{seq}} pattern ({{{{ and }}}} are literal braces, so it "
                "has no {seq} field); write e.g. out_{seq:05d}.png")

    output = tmp_path / "a{{seq}}.png"
    r = _run(["--source", files["clip"], "--weights", files["weights"], "--output", str(output), "--max-frames", "3"])
    assert (r.returncode, r.stderr.splitlines()) == (2, [line(output)]), (r.returncode, r.stderr)
    assert list(tmp_path.iterdir()) == [image_folder]  # (no a{seq}.png)
    before = _contents(image_folder)
    beside = image_folder / "a{{seq}}.png"
    assert main(["--source", str(image_folder), "--weights", files["weights"], "--output", str(beside)]) == 2
    assert capsys.readouterr().err.splitlines() == [line(beside)] and _contents(image_folder) == before


@pytest.mark.parametrize("argv, line", [
    (["--source", "synthetic", "--top-k", "0"], "rtseg: error: --top-k 0: must be an integer >= 1"),
    (["eval", "--engine", "slic", "--compactness", "nan"], "rtseg eval: error: --compactness nan: must be a finite "
                                                           "number > 0")])
def test_engine_option_values_are_refused_before_torch_is_imported(argv, line):
    """Was refused by the engine, once torch had been imported and the engine began loading (4 s): 'rtseg: error:
    yolact: top_k must be an integer >= 1, got 0'; now as --vid-stride 0 is, naming the option."""
    code = ("import sys; from rtseg.cli import main; code = main(sys.argv[1:]); "
            "print(code, sorted({'torch', 'torchvision'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.stdout.splitlines() == ["2 []"] and r.stderr.splitlines() == [line], (r.stdout, r.stderr)


def test_the_demo_model_notice_is_not_printed_by_the_option_checks(fcn_weights, capsys):
    """``--engine panoptic --backend onnx`` without --weights: the check of the backend printed 'rtseg: no
    --weights: using the demo model …', and the engine's loading printed it again."""
    from rtseg.cli import main

    assert main(["--source", "synthetic", "--engine", "panoptic", "--semantic", fcn_weights, "--backend", "onnx",
                 "--precision", "fp16"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "rtseg: error: --precision / --calib apply to --backend tensorrt only"]


@pytest.mark.parametrize("name", ["{index}.png", "{}.png", "o_{foo}.png", "{seq[0]}.png", "{seq}_{0}.png"])
def test_an_output_name_with_a_field_other_than_seq_is_refused_like_seq_index(image_folder, tmp_path, capsys, name):
    """--output 'o/{index}.png', '{}' or '{foo}' were taken literally (one image file keeping the last frame, and
    the warning that says so) while '{seq[0]}' was refused: now each is the same one line, nothing written."""
    from rtseg.cli import main

    out = tmp_path / "o"
    out.mkdir()
    assert main(["--source", str(image_folder), "--engine", "slic", "--output", str(out / name), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"rtseg: error: image output {out / name}: bad {{seq}} pattern ({{seq}} is the "
                                       "only placeholder allowed); write e.g. out_{seq:05d}.png\n")
    assert list(out.iterdir()) == []
    assert main(["--source", str(image_folder / "a.png"), "--engine", "slic", "--output", str(out / "{{a}}.png"),
                 "--no-progress"]) == 0  # no field: a literal name
    assert [p.name for p in out.iterdir()] == ["{{a}}.png"]


@pytest.mark.parametrize("outputs, warned", [([], True), (["--json", "{dir}/o.jsonl"], False)])
def test_a_run_without_outputs_warns_that_it_keeps_nothing(files, tmp_path, capsys, outputs, warned):
    """No --output / --json / --show / --serve / --push: the run segmented the whole source and dropped every frame,
    exit 0 without a word. Now one warning line says so and which options keep something; a run with an output is
    not warned (an option or source error without outputs is its one line alone: BAD's "missing file")."""
    from rtseg.cli import main

    assert main(["--source", files["photo"], "--engine", "slic", "--segments", "20", "--no-progress",
                 *[o.format(dir=tmp_path) for o in outputs]]) == 0
    out, err = capsys.readouterr()
    assert "frames 1 " in out  # the summary
    assert [line for line in err.splitlines() if "warning" in line] == (
        ["rtseg: warning: no output: the frames are segmented and dropped; add --output, --json, --show, --serve or "
         "--push"] if warned else [])


NOT_A_FILE = {  # --output: what the name is, said (each was "unknown type (none); use .m4v/.mov/.mp4 …")
    "dash": ("-", "--output -: the annotated frames cannot go to standard output; give a file name such as out.mp4 "
                  "(--json - writes the detections to standard output)"),
    "stdout": ("/dev/stdout", "--output /dev/stdout: names an open descriptor, not a file; give a file name such as "
                              "out.mp4 (--json - writes the detections to standard output)"),
    "fifo": ("{dir}/pipe", "--output {dir}/pipe: is a FIFO, not a regular file (the output is written whole, by "
                           "replacing the file); give a file name such as out.mp4 (--json - writes the detections to "
                           "standard output)"),
    "folder": ("{dir}/out", "--output {dir}/out: is a folder; give a file name such as {dir}/out/run.mp4 or an "
                            "image pattern '{dir}/out/{{seq:05d}}.png'"),
    "folder with a slash": ("{dir}/out/", "--output {dir}/out/: is a folder; give a file name such as "
                                          "{dir}/out/run.mp4 or an image pattern '{dir}/out/{{seq:05d}}.png'"),
    "new folder": ("{dir}/new/", "--output {dir}/new/: names a folder (it ends with /); give a file name such as "
                                 "{dir}/new/run.mp4 or an image pattern '{dir}/new/{{seq:05d}}.png'"),
    "folder named as a video": ("{dir}/out.mp4", "--output {dir}/out.mp4: is a folder; give a file name such as "
                                                 "{dir}/out.mp4/run.mp4 or an image pattern "
                                                 "'{dir}/out.mp4/{{seq:05d}}.png'"),
}


@pytest.mark.parametrize("case", list(NOT_A_FILE))
def test_an_output_that_is_no_file_name_says_what_it_is(files, tmp_path, capsys, case):
    """README: /dev/stdout as --output "is refused before anything runs: use --json -"; it, '-', a FIFO and a folder
    were all "unknown type (none)" (a folder named .mp4: "MP4 output …: is a folder", once the source was open)."""
    from rtseg.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe")
    given, said = (s.format(dir=tmp_path) for s in NOT_A_FILE[case])
    assert main(["--source", files["photo"], "--engine", "slic", "--output", given]) == 2
    assert capsys.readouterr().err.splitlines() == [f"rtseg: error: {said}"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "out.mp4", "pipe"]  # nothing written


@pytest.mark.parametrize("word, line", [
    ("evl", "unknown command 'evl'; did you mean 'eval'?"), ("tran", "unknown command 'tran'; did you mean 'train'?"),
    ("dmeo", "unknown command 'dmeo'; did you mean 'demo'?"),
    ("clip.mp4", "unrecognized arguments: clip.mp4 --data synthetic:test")])  # (not close to any: argparse's line)
def test_a_mistyped_subcommand_is_named_with_the_closest_one(word, line, capsys):
    """``rtseg evl --data synthetic:test`` said "unrecognized arguments: evl --data synthetic:test"."""
    from rtseg.cli import main

    assert main([word, "--data", "synthetic:test"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"rtseg: error: {line} (see rtseg --help)"]
