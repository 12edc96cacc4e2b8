"""FCN-8s/16s/32s: paper structure, any input size, bilinear upsampling, training, mIoU, weights I/O."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rtseg
from rtseg.data.synthetic import CLASSES, SyntheticDataset
from rtseg.engines.fcn import FcnEngine, save_fcn
from rtseg.errors import ConfigError, WeightsError
from rtseg.eval.semantic import SemanticEvaluator, evaluate_semantic, semantic_target
from rtseg.models.fcn import FCN, FcnConfig, bilinear_kernel
from rtseg.train.fcn_trainer import FcnTrainConfig, train_fcn

NAMES = ["background", *CLASSES]


@pytest.mark.parametrize("arch", ["fcn8s", "fcn16s", "fcn32s"])
def test_output_has_input_size_for_odd_sizes(arch):
    torch.manual_seed(0)
    model = FCN(FcnConfig(arch=arch, num_classes=3, width=0.0625)).eval()
    for m in model.modules():  # non-zero score layers so the crop offsets matter
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 3:
            torch.nn.init.normal_(m.weight, std=0.1)
    with torch.no_grad():
        for h, w in [(1, 1), (17, 33), (61, 47), (100, 129)]:
            assert model(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)


def test_paper_structure_full_width():
    model = FCN(FcnConfig(arch="fcn8s", num_classes=21))
    conv1_1 = model.stages[0][0]
    assert conv1_1.padding == (100, 100) and conv1_1.out_channels == 64
    fc6, fc7 = model.fc6[0], model.fc7[0]
    assert fc6.kernel_size == (7, 7) and fc6.out_channels == 4096 and fc7.kernel_size == (1, 1)
    assert all(isinstance(s[-1], torch.nn.MaxPool2d) and s[-1].ceil_mode for s in model.stages)
    ups = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    assert {n: (m.kernel_size[0], m.stride[0]) for n, m in ups.items()} == {
        "upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore": (16, 8)}
    assert not any(m.weight.requires_grad for m in ups.values())  # frozen bilinear by default
    learn = FCN(FcnConfig(arch="fcn8s", num_classes=21, width=0.0625, learn_upsampling=True))
    assert learn.upscore.weight.requires_grad


def test_bilinear_kernel_upsamples_like_interpolate():
    x = torch.randn(1, 3, 6, 7)
    up = F.conv_transpose2d(x, bilinear_kernel(3, 16), stride=8)
    ref = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    # away from the border the transposed conv equals bilinear interpolation, offset by (k - s) / 2 = 4 px
    np.testing.assert_allclose(up[..., 4 + 8:4 + 40, 4 + 8:4 + 40], ref[..., 8:40, 8:40], atol=1e-5)


def test_semantic_metrics_by_hand():
    t = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    p = np.array([[0, 0, 1, 0], [0, 0, 1, 2]])
    m = evaluate_semantic([p], [t], 3, ["bg", "a", "b"])
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)
    assert m["IoU/bg"] == pytest.approx(4 / 5) and m["IoU/a"] == pytest.approx(2 / 4) and m["IoU/b"] == 0.0
    assert m["mIoU"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    ev = SemanticEvaluator(3)
    with pytest.raises(ValueError, match="differ"):
        ev.add(p, t[:1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ev.add(p + 5, t)


def _tiny_engine() -> FcnEngine:
    torch.manual_seed(0)
    return FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=len(NAMES), width=0.0625), class_names=NAMES)


def test_resumed_training_equals_the_uninterrupted_run(tmp_path):
    data = SyntheticDataset.split("train", 4, width=40, height=32, max_objects=3)
    cfg = FcnTrainConfig(steps=6, batch_size=2, lr=3e-3, ckpt_every=3)
    engine = _tiny_engine
    whole = engine()
    whole_losses = train_fcn(whole, data, cfg, log=False)
    interrupted = engine()
    train_fcn(interrupted, data, FcnTrainConfig(**{**cfg.__dict__, "steps": 3}), log=False,
              checkpoint=tmp_path / "ckpt.pth")
    torch.manual_seed(123)  # the checkpoint's random state must win (FCN has dropout)
    resumed = engine()
    losses = train_fcn(resumed, data, cfg, log=False, checkpoint=tmp_path / "ckpt.pth", resume=True)
    assert losses == pytest.approx(whole_losses[3:], rel=1e-5)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(WeightsError, match="not found"):
        train_fcn(engine(), data, cfg, checkpoint=tmp_path / "none.pth", resume=True)
    with pytest.raises(ConfigError, match="resume=True needs checkpoint="):  # was: silently from step 0
        train_fcn(engine(), data, cfg, resume=True)


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, capsys, sigint_at_call):
    """A real SIGINT during step 3 (checkpoints otherwise only at the end): the two steps done are saved, the
    line says how to continue, and the resumed run trains exactly like the uninterrupted one."""
    data = SyntheticDataset.split("train", 4, width=40, height=32, max_objects=3)
    cfg, ckpt = FcnTrainConfig(steps=5, batch_size=2, lr=3e-3, ckpt_every=0), tmp_path / "ckpt.pth"
    whole_losses = train_fcn(_tiny_engine(), data, cfg, log=False)
    interrupted = _tiny_engine()
    sigint_at_call(interrupted, "preprocess", 3)
    with pytest.raises(KeyboardInterrupt):
        train_fcn(interrupted, data, cfg, log=False, checkpoint=ckpt)
    assert f"interrupted at step 2: checkpoint {ckpt}; continue with --resume" in capsys.readouterr().err
    losses = train_fcn(_tiny_engine(), data, cfg, log=False, checkpoint=ckpt, resume=True)
    assert losses == pytest.approx(whole_losses[2:], rel=1e-5)


def test_training_reduces_loss_and_weights_roundtrip(tmp_path):
    # Tiny and short (the CPU is shared): the loss must fall; accuracy is measured by the benchmark.
    torch.manual_seed(0)
    data = SyntheticDataset.split("train", 4, width=40, height=32, max_objects=3)
    engine = FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=len(NAMES), width=0.0625), class_names=NAMES)
    images = [data[i].image for i in range(len(data))]
    targets = torch.from_numpy(np.stack([semantic_target(data[i]) for i in range(len(data))]))

    def loss_on_all() -> float:  # eval mode: no dropout, so before/after compare the same function
        with torch.no_grad():
            return float(F.cross_entropy(engine.model.eval()(engine.preprocess(images)), targets))

    before = loss_on_all()
    losses = train_fcn(engine, data, FcnTrainConfig(steps=12, batch_size=2, lr=3e-3), log=False)
    assert len(losses) == 12 and loss_on_all() < 0.6 * before
    path = save_fcn(tmp_path / "fcn.safetensors", engine.model, NAMES, meta={"steps": 12})
    loaded = rtseg.load("fcn", weights=str(path))
    img = data[3].image
    a, b = engine(img), loaded(img)
    assert isinstance(b, rtseg.SemanticMap) and loaded.class_names == tuple(NAMES)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert b.labels.shape == img.shape[:2] and b.scores.dtype == np.float32
    # corrupt the file: the manifest's sha256 catches it
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        rtseg.load("fcn", weights=str(path))


def test_semantic_target_from_instances():
    s = SyntheticDataset.split("val", 1, width=64, height=48)[0]
    t = semantic_target(s)
    assert t.shape == (48, 64) and t.dtype == np.int64
    for m, c in zip(s.masks, s.class_ids):
        assert (t[m] == c + 1).all()
    assert (t[~s.masks.any(0)] == 0).all()


def test_engine_batches_mixed_sizes_and_draws():
    engine = FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=3, width=0.0625))
    engine.warmup()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(31, 45, 3), (20, 20, 3), (31, 45, 3)]]
    out = engine(imgs)
    assert [o.labels.shape for o in out] == [(31, 45), (20, 20), (31, 45)]
    np.testing.assert_array_equal(out[0].labels, engine(imgs[0]).labels)
    sem = rtseg.SemanticMap(labels=(out[1].labels + np.eye(20, dtype=np.int64)), class_names=engine.class_names)
    drawn = rtseg.annotate(imgs[1], sem)
    assert drawn.shape == (20, 20, 3) and (drawn != imgs[1]).any()


def test_torchvision_fcn_without_download_and_errors():
    with pytest.warns(UserWarning, match="RANDOM weights"):  # no torchvision file in the cache here
        eng = rtseg.load("fcn", arch="fcn_resnet50", num_classes=4)
    assert not eng.pretrained and len(eng.class_names) == 4
    out = eng(np.zeros((33, 47, 3), np.uint8))
    assert out.labels.shape == (33, 47)
    with pytest.raises(WeightsError, match="needs weights"):
        rtseg.load("fcn")
    with pytest.raises(ConfigError, match="unknown arch"):
        FcnConfig(arch="fcn4s")


@pytest.mark.parametrize("field, value, expected", [
    *[("num_classes", v, "an integer >= 2") for v in (1, 0, -3, True, 3.0, 2.5, math.nan, "3", None)],
    *[("width", v, "a number in (0, 1]") for v in (0, 0.0, -0.5, 1.5, math.nan, math.inf, True, "0.5", None)],
])
def test_config_field_out_of_range_is_one_line_naming_it(field, value, expected):
    """Was one line naming both fields for either ("need num_classes >= 2 and 0 < width <= 1; got …"), a
    TypeError traceback ("3", None), or accepted (a True width; 3.0, 2.5 or NaN classes)."""
    with pytest.raises(ConfigError, match=rf"^FcnConfig: {field} must be {re.escape(expected)}, got "
                                          rf"{re.escape(repr(value))}$"):
        FcnConfig(**{field: value})


@pytest.mark.parametrize("value", [1, "yes", None])
def test_config_learn_upsampling_must_be_a_bool(value):
    """Was a TypeError traceback from requires_grad_ when the model was built."""
    with pytest.raises(ConfigError, match=rf"^FcnConfig: learn_upsampling must be true or false, got "
                                          rf"{re.escape(repr(value))}$"):
        FcnConfig(learn_upsampling=value)


def test_config_takes_numpy_numbers():
    cfg = FcnConfig(arch="fcn32s", num_classes=np.int64(3), width=np.float32(0.0625))
    assert FCN(cfg).score_fr.out_channels == 3 and FcnConfig(width=1).width == 1


@pytest.mark.gpu
def test_fcn_engine_on_cuda_matches_cpu():
    torch.manual_seed(0)
    cpu = FcnEngine.from_config(FcnConfig(arch="fcn8s", num_classes=3, width=0.0625))
    for m in cpu.model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 3:
            torch.nn.init.normal_(m.weight, std=0.1)
    gpu = FcnEngine(model=FCN(cpu.model.cfg), class_names=cpu.class_names, device="cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    img = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    a, b = cpu(img), gpu(img)
    assert (a.labels == b.labels).mean() > 0.99
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


@pytest.fixture
def tiny_weights(tmp_path):
    """A tiny saved FCN-32s (3 classes) and its manifest as a dict."""
    engine = FcnEngine.from_config(FcnConfig(arch="fcn32s", num_classes=3, width=0.0625))
    path = save_fcn(tmp_path / "fcn.safetensors", engine.model, engine.class_names)
    return path, json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("change, detail", [
    ({"config": {"arch": "fcn32s", "num_classes": 3, "width": 0.0625, "dilation": 2}}, r"unknown key\(s\) dilation"),
    ({"config": None}, "no config object"),
    ({"config": {"arch": "fcn32s", "num_classes": "3", "width": 0.0625}}, "num_classes must be int, got '3'"),
    ({"config": {"arch": "fcn32s", "num_classes": 3, "width": True}}, "width must be float, got True"),
    ({"config": {"arch": "fcn4s", "num_classes": 3, "width": 0.0625, "learn_upsampling": False}},
     "unknown arch 'fcn4s'"),
    ({"config": {"arch": "fcn32s", "num_classes": 3, "width": 0.0, "learn_upsampling": False}},
     re.escape("FcnConfig: width must be a number in (0, 1], got 0.0")),
    ({"config": {"arch": "fcn32s", "num_classes": 3, "width": 1.5, "learn_upsampling": False}},
     re.escape("FcnConfig: width must be a number in (0, 1], got 1.5")),
    ({"config": {"arch": "fcn32s", "num_classes": 1, "width": 0.0625, "learn_upsampling": False}},
     "FcnConfig: num_classes must be an integer >= 2, got 1"),
    ({"config": {"arch": "fcn32s", "num_classes": 3}}, r"missing key\(s\) width, learn_upsampling"),
])
def test_invalid_manifest_config_is_one_weights_error(tiny_weights, change, detail):
    """Was a TypeError / KeyError traceback from FcnConfig(**config)."""
    path, manifest = tiny_weights
    path.with_suffix(".json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(WeightsError, match=rf"fcn\.json: its config is invalid \(.*{detail}.*\); re-export the weights") as e:
        rtseg.load("fcn", weights=str(path))
    assert "\n" not in str(e.value)


def test_manifest_class_names_must_fit_the_model(tiny_weights):
    """Two names for a 3-class model were accepted (labels 2 had no name)."""
    path, manifest = tiny_weights
    path.with_suffix(".json").write_text(json.dumps({**manifest, "class_names": ["background", "a"]}))
    with pytest.raises(WeightsError, match="2 class names for a model with 3 classes"):
        FcnEngine.from_weights(str(path))


def test_options_the_weights_fix_are_refused_and_class_names_rename(tiny_weights):
    path, _ = tiny_weights
    with pytest.raises(ConfigError, match="num_classes comes from the weights' manifest"):  # was silently ignored
        rtseg.load("fcn", path, num_classes=5)
    with pytest.raises(ConfigError, match="unknown option\\(s\\) pretrained"):  # was a TypeError
        rtseg.load("fcn", path, pretrained=True)
    renamed = rtseg.load("fcn", path, class_names=["bg", "x", "y"])  # was a TypeError (class_names twice)
    assert renamed.class_names == ("bg", "x", "y")
    with pytest.raises(ConfigError, match="1 class names for a model with 3 classes"):
        rtseg.load("fcn", path, class_names=["bg"])
    with pytest.raises(WeightsError, match="weights must be a file path .* got int 123"):  # was a TypeError
        rtseg.load("fcn", 123)


def test_training_checkpoint_as_weights_says_how_to_finish(tmp_path):
    data = SyntheticDataset.split("train", 2, width=32, height=32, max_objects=1)
    ckpt = tmp_path / "fcn.train" / "checkpoint.pth"
    train_fcn(_tiny_engine(), data, FcnTrainConfig(steps=1, batch_size=2), log=False, checkpoint=ckpt)
    with pytest.raises(WeightsError, match="is a training checkpoint of an unfinished run .* finish the run with "
                                           "--resume to export the .safetensors, or pass the .safetensors it wrote"):
        rtseg.load("fcn", str(ckpt))


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--steps", "-5"], ["--images", "0"], ["--images", "10000000"],
                                 ["--size", "8", "32"], ["--size", "32", "100000"], ["--threads", "0"],
                                 ["--width", "nan"], ["--width", "0"], ["--width", "2"]])
def test_trainer_command_line_range_checks_every_number(tmp_path, capsys, bad):
    """Each numeric option of `python -m rtseg.train.fcn_trainer` out of range is one line naming it, exit 2,
    nothing written (was: --steps 0 / -5 wrote an untrained model, --images 0 and --threads 0 a traceback, a huge
    --images or --size exhausted the memory, --width nan the config's error naming no option)."""
    from rtseg.train.fcn_trainer import main

    assert main(["--out", str(tmp_path / "f.safetensors"), *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fcn_trainer: error: {bad[0]} ") and "must be" in err, err
    assert list(tmp_path.iterdir()) == []


def _train_until_terminated(command: list[str]) -> tuple[int, list[str], str]:
    """Run the trainer ``command``, SIGTERM it at its first progress line; (exit status, stdout lines, stderr)."""
    import signal
    import subprocess

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:  # the first progress line: 50 steps done
            lines.append(line)
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, lines, stderr


def test_sigterm_saves_a_checkpoint_that_the_printed_command_continues(tmp_path):
    """A real SIGTERM to a running `python -m rtseg.train.fcn_trainer`: as Ctrl-C, the steps done are saved and
    the way to continue is printed, without a traceback, no weights written; ``terminated`` and exit 143 (128 + 15).
    The command printed is the run's own with --resume (was: ``--resume (and the same --out)``, which refused the
    run's --images 4 or trained to the default --steps): run, it continues from the checkpoint's step."""
    import shlex
    import sys

    out = tmp_path / "f.safetensors"
    status, _, stderr = _train_until_terminated(
        [sys.executable, "-u", "-m", "rtseg.train.fcn_trainer", "--out", str(out), "--steps", "1000000",
         "--images", "4", "--size", "32", "32", "--width", "0.01"])
    assert status == 143 and "Traceback" not in stderr, stderr
    ckpt = tmp_path / "f.train" / "checkpoint.pth"
    found = re.search(r"terminated at step (\d+): checkpoint (.*); continue with (.*)", stderr)
    step = int(found.group(1))
    assert step >= 50 and torch.load(ckpt, weights_only=True)["step"] == step
    assert stderr.strip().splitlines()[-1] == "fcn_trainer: terminated" and not out.exists()
    words = shlex.split(found.group(3))
    assert words[:3] == ["python", "-m", "rtseg.train.fcn_trainer"] and words[-1] == "--resume", words
    status, lines, stderr = _train_until_terminated([sys.executable, "-u", *words[1:]])
    assert status == 143 and "Traceback" not in stderr, stderr
    done = int(re.match(r"step (\d+)/1000000 ", lines[-1]).group(1))  # the run's --steps, from its step
    assert done > step and done % 50 == 0
    again = re.search(r"terminated at step (\d+): checkpoint .*; continue with (.*)", stderr)
    assert int(again.group(1)) >= done and again.group(2) == found.group(3)  # --resume once, not twice


def test_an_out_whose_folders_cannot_be_made_is_refused_before_training(tmp_path, capsys):
    """--out under a file, or where its checkpoint folder cannot be made: one line, exit 2, before training (was: a
    NotADirectoryError / FileNotFoundError traceback at the first checkpoint, after training started)."""
    from rtseg.train.fcn_trainer import main

    (tmp_path / "file").write_text("x")
    for out, said in ((tmp_path / "file" / "f.safetensors", "is a file, not a folder"),
                      (tmp_path / "file" / "sub" / "f.safetensors", "cannot create the folder"),
                      ("/proc/x.safetensors", "its checkpoint folder /proc/x.train: cannot create the folder")):
        assert main(["--out", str(out), "--steps", "1", "--images", "1", "--size", "32", "32",
                     "--width", "0.01"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("fcn_trainer: error: --out ") and said in err, err