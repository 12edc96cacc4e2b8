"""Checkpoint loading: official layouts, our safetensors + manifest, and every bad-weights error."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import rtseg
from rtseg.errors import ConfigError, WeightsError
from rtseg.models.yolact import LIMITS, PRESETS, Yolact, YolactConfig
from rtseg.weights import infer_config, load_into, load_yolact, read_state_dict, read_yolact, save_yolact

TINY = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32, num_prototypes=8)
DEMO = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.manual_seed(0)
    torch.save(Yolact(TINY).state_dict(), path)
    return path


@pytest.mark.parametrize("name", ["yolact_resnet50", "yolact_darknet53", "yolact_base"])
def test_backbone_classes_and_width_are_inferred_from_official_layouts(name):
    cfg = PRESETS[name]
    state = Yolact(cfg).state_dict()
    assert infer_config(state, input_size=550, source="x") == cfg


def test_im700_file_name_selects_700_and_rescaled_anchors(tmp_path):
    state = Yolact(replace(PRESETS["yolact_resnet50"])).state_dict()
    path = tmp_path / "yolact_im700_54_800000.pth"
    torch.save(state, path)
    _, cfg, names, _ = load_yolact(path)
    assert cfg.input_size == 700 and cfg.scales == (30, 61, 122, 244, 488) and names is None
    _, cfg, _, _ = load_yolact(path, input_size=550)
    assert cfg.input_size == 550 and cfg.scales == (24, 48, 96, 192, 384)


def test_official_legacy_keys_are_dropped_like_the_official_loader(tmp_path, tiny_pth):
    state = torch.load(tiny_pth, weights_only=True)
    state["backbone.layer1.0.conv1.weight"] = torch.zeros(1)  # pre-v1.0 name
    state["fpn.downsample_layers.2.weight"] = torch.zeros(1)  # surplus downsample layer
    path = tmp_path / "legacy.pth"
    torch.save(state, path)
    model, cfg, _, _ = load_yolact(path, input_size=128)
    assert cfg.backbone == "resnet18" and cfg.num_classes == 3


def test_a_model_saved_from_data_parallel_loads_and_a_wrapped_state_dict_is_pointed_to(tmp_path, tiny_pth):
    """Every key 'module.'-prefixed (``nn.DataParallel``'s state dict) was "not a YOLACT checkpoint (missing …)";
    a training script's ``{"state_dict": …, "epoch": 3}`` was "not a state dict of tensors (found dict)" without
    saying where the tensors are."""
    state = torch.load(tiny_pth, weights_only=True)
    parallel = tmp_path / "parallel.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, parallel)
    model, cfg, _, _ = load_yolact(parallel, input_size=128)
    assert cfg.backbone == "resnet18" and cfg.num_classes == 3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    with pytest.raises(WeightsError) as info:
        read_state_dict(wrapped)
    assert str(info.value) == (f"{wrapped}: not a state dict of tensors (found dict); its tensors are under its "
                               f"'state_dict' key: save that alone (torch.save(ckpt['state_dict'], path))")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        rtseg.load("yolact", weights=str(tmp_path / "nope.pth"))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint|truncated or corrupt"):
        read_state_dict(path)
    # torch.load raises KeyError('101') and IndexError('pop from empty list'): the unpickler's internals stay out
    for text in ("hello world\n", "a\nb\n"):
        path.write_text(text)
        with pytest.raises(WeightsError, match=r"garbage.pth: not a PyTorch checkpoint; give an official YOLACT .pth"):
            read_state_dict(path)


def test_truncated_checkpoint(tmp_path, tiny_pth):
    path = tmp_path / "trunc.pth"
    path.write_bytes(tiny_pth.read_bytes()[: tiny_pth.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_state_dict(path)


class Evil:
    def __reduce__(self):
        return (print, ("code executed",))


def test_checkpoint_needing_code_execution_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="execute code"):
        read_state_dict(path)
    assert "code executed" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(path)


def test_other_architecture_names_missing_and_misshaped_keys(tmp_path, tiny_pth):
    state = torch.load(tiny_pth, weights_only=True)
    del state["proto_net.0.weight"]
    state["fpn.pred_layers.0.weight"] = torch.zeros(32, 32, 1, 1)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        load_yolact(path, input_size=128)
    msg = str(e.value)
    assert "missing keys proto_net.0.weight" in msg and "mis-shaped fpn.pred_layers.0.weight" in msg
    assert "\n" not in msg


def test_non_yolact_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="not a YOLACT checkpoint"):
        load_yolact(path)


def test_yolact_plus_plus_is_reported_unsupported(tmp_path, tiny_pth):
    state = torch.load(tiny_pth, weights_only=True)
    state["backbone.layers.1.0.conv2.conv_offset_mask.weight"] = torch.zeros(27, 64, 3, 3)
    path = tmp_path / "yolact_plus_base_54_800000.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"YOLACT\+\+.*not supported yet"):
        load_yolact(path)


def test_safetensors_round_trip_and_manifest_checks(tmp_path):
    torch.manual_seed(1)
    model = Yolact(TINY)
    path = save_yolact(tmp_path / "m.safetensors", model, ["a", "b", "c"], meta={"note": "test"})
    loaded, cfg, names, _ = load_yolact(path)
    assert cfg == TINY and names == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    seg = rtseg.load("yolact", weights=str(path), score_threshold=0.0)
    assert seg.class_names == ("a", "b", "c")
    man = json.loads(path.with_suffix(".json").read_text())
    man["sha256"] = man["sha256"].upper()  # (was "does not match": the file is corrupt or was replaced)
    path.with_suffix(".json").write_text(json.dumps(man))
    assert load_yolact(path)[2] == ["a", "b", "c"]
    man["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match="does not match its manifest"):
        load_yolact(path)
    del man["sha256"]
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match="the manifest has no sha256 of the weights"):
        load_yolact(path)
    man["format"] = "rtseg-fcn/1"
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match="manifest format is 'rtseg-fcn/1', expected 'rtseg-yolact/1'; load it "
                                           "with the engine it was trained for"):
        load_yolact(path)
    man["format"] = "rtseg-yolact/2"  # (was told to load it with another engine)
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match="manifest format is 'rtseg-yolact/2', expected 'rtseg-yolact/1'; another "
                                           "version of rtseg wrote it"):
        load_yolact(path)
    del man["format"]  # (was "manifest format is None")
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match=r"the manifest has no format \(expected 'rtseg-yolact/1'\)"):
        load_yolact(path)
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="manifest is a JSON list, not an object; re-export the weights"):
        load_yolact(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="manifest"):
        load_yolact(path)


def test_unknown_engine_and_missing_weights():
    with pytest.raises(rtseg.ConfigError, match="unknown engine"):
        rtseg.load("yolo9000", weights="x")
    with pytest.raises(WeightsError, match="needs weights"):
        rtseg.load("yolact")


def test_save_is_atomic_an_interrupted_export_keeps_the_old_pair(tmp_path, monkeypatch):
    """Weights and manifest are written to .tmp files and renamed once both are complete: an export
    interrupted before that (here: while the new file is hashed) leaves the earlier pair loadable."""
    from rtseg import weights

    cfg = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=16, num_prototypes=4)
    path = save_yolact(tmp_path / "m.safetensors", Yolact(cfg), ["a", "b", "c"])
    before = path.read_bytes()

    def interrupted(p):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "sha256_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_yolact(path, Yolact(cfg), ["a", "b", "c"])
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert load_yolact(str(path)).class_names == ["a", "b", "c"]


def test_a_training_checkpoint_loads_with_its_saved_config_and_class_names(tmp_path):
    """``checkpoint.pth`` of a run (mid-training) is usable as weights: its input size and class names
    are the run's, not the 550 / unnamed classes assumed for official .pth files."""
    from dataclasses import asdict

    from rtseg.train.checkpoint import save_checkpoint

    torch.manual_seed(2)
    model = Yolact(TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "checkpoint.pth", step=7, parts={"model": model, "optimizer": optimizer},
                           config=asdict(TINY), class_names=["a", "b", "c"])
    loaded, cfg, names, _ = load_yolact(path)
    assert cfg == TINY and names == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert rtseg.load("yolact", weights=str(path)).class_names == ("a", "b", "c")
    torch.save({"step": 1, "model": model.state_dict(), "config": {"arch": "fcn8s", "num_classes": 3}}, path)
    with pytest.raises(WeightsError, match=r"checkpoint.pth: its config is invalid \(unknown key\(s\) arch\); re-export"):
        load_yolact(path)


def test_manifests_are_read_as_utf8_whatever_the_locale() -> None:
    """Under an ASCII locale (LANG=C without Python's UTF-8 mode; Windows code pages alike) the shipped demo
    manifest, which holds non-ASCII text, was 'not valid JSON': the demo could not start."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert any(ord(c) > 127 for c in (root / "engines" / "yolact_demo.json").read_text(encoding="utf-8"))
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    code = "import rtseg; print(len(rtseg.load('yolact', weights='engines/yolact_demo.safetensors').class_names))"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny rtseg .safetensors + .json pair (copied by the tests that edit it)."""
    torch.manual_seed(3)
    return save_yolact(tmp_path_factory.mktemp("pair") / "m.safetensors", Yolact(TINY), ["a", "b", "c"])


def _copy_pair(pair, folder, **config):
    """A copy of ``pair`` in ``folder`` whose manifest's config has ``config`` set (the sha256 still matches)."""
    path = folder / pair.name
    path.write_bytes(pair.read_bytes())
    man = json.loads(pair.with_suffix(".json").read_text())
    man["config"].update(config)
    path.with_suffix(".json").write_text(json.dumps(man))
    return path


@pytest.mark.parametrize("field, value, expected", [
    ("input_size", 100000, "input_size must be an integer in [32, 2048], got 100000"),  # was: killed for memory
    ("input_size", -5, "input_size must be an integer in [32, 2048], got -5"),
    ("backbone", "vgg", "unknown backbone 'vgg'; use one of resnet101, resnet50, resnet18, darknet53"),
    ("aspect_ratios", [-1, 0.5, 2], "aspect_ratios must be 1 to 16 positive numbers, got (-1, 0.5, 2)"),
    ("aspect_ratios", [0, 0.5, 2], "aspect_ratios must be 1 to 16 positive numbers, got (0, 0.5, 2)"),
    ("aspect_ratios", [], "aspect_ratios must be 1 to 16 positive numbers, got ()"),
    ("scales", [-16, 33, 67, 134, 268], "scales must be 3 to 8 positive anchor sizes in pixels"),
    ("scales", [16, 33], "scales must be 3 to 8 positive anchor sizes in pixels"),
    ("num_prototypes", 0, "num_prototypes must be an integer in [1, 256], got 0"),
    ("num_classes", 0, "num_classes must be an integer in [1, 5000], got 0"),
    ("fpn_channels", 100000, "fpn_channels must be an integer in [1, 1024], got 100000"),
])
def test_manifest_fields_out_of_range_are_one_line_naming_the_manifest_and_field(tiny_pair, tmp_path, field, value,
                                                                                  expected):
    """Were a traceback (unknown backbone, math domain error), an OOM kill (input_size 100000), a silently broken
    model (negative scales, aspect ratio 0), torch's zero-element warning before the error, or a line without the
    manifest's name (input_size -5). Now the config checks its ranges before any layer is built."""
    path = _copy_pair(tiny_pair, tmp_path, **{field: value})
    with warnings.catch_warnings(record=True) as caught, pytest.raises(WeightsError) as info:
        warnings.simplefilter("always")
        load_yolact(path)
    assert [str(w.message) for w in caught] == []  # no library warning on the way
    message = str(info.value)
    assert message.startswith(f"{path.with_suffix('.json')}: its config is invalid (YolactConfig: {expected}"), message
    assert message.endswith("); re-export the weights") and "\n" not in message


@pytest.mark.parametrize("missing", [("scales",), ("input_size",), ("scales", "square_anchors")])
def test_a_manifest_config_without_a_field_is_refused_naming_it(tiny_pair, tmp_path, missing):
    """Missing fields took their defaults: without ``scales`` the model ran 550-pixel anchors at its own input size
    (boxes 43 % too large on the demo model), without ``input_size`` at 550 — other detections, exit 0."""
    path = _copy_pair(tiny_pair, tmp_path)
    man = json.loads(path.with_suffix(".json").read_text())
    for field in missing:
        del man["config"][field]
    path.with_suffix(".json").write_text(json.dumps(man))
    with pytest.raises(WeightsError) as info:
        load_yolact(path)
    assert str(info.value) == (f"{path.with_suffix('.json')}: its config is invalid (missing key(s) "
                               f"{', '.join(missing)}); re-export the weights")


@pytest.mark.parametrize("ids, error", [([10, 20, 30], None), (None, None), ([10, 20], True), ([10, 10, 30], True),
                                        (["10", 20, 30], True), ([1.0, 2, 3], True), ([True, 2, 3], True), (7, True),
                                        ([[1], [2], [3]], True), ([{}, {}, {}], True)])  # (unhashable: no TypeError)
def test_manifest_category_ids_are_one_distinct_integer_per_class(tiny_pair, tmp_path, ids, error):
    """A list of another length was ignored without a word; repeated ids were taken (every class of a model came
    out as category_id 1 in COCO results); now one line. Three distinct ints, or none, load."""
    path = _copy_pair(tiny_pair, tmp_path)
    man = json.loads(path.with_suffix(".json").read_text())
    man["meta"] = {**man.get("meta", {}), "category_ids": ids}
    path.with_suffix(".json").write_text(json.dumps(man))
    if error is None:
        assert read_yolact(path).category_ids == (None if ids is None else tuple(ids))
        return
    with pytest.raises(WeightsError) as info:
        read_yolact(path)
    assert str(info.value).startswith(f"{path.with_suffix('.json')}: its meta.category_ids must be 3 distinct "
                                      f"integers, one per class, got {ids!r}; re-export the weights")


def test_the_config_checks_its_ranges_for_the_python_api_too():
    assert LIMITS["input_size"] == (32, 2048)  # the one place the bound lives (the train CLI reads it too)
    with pytest.raises(ConfigError, match=r"YolactConfig: input_size must be an integer in \[32, 2048\], got 4096"):
        TINY.with_input_size(4096)
    with pytest.raises(ConfigError, match="YolactConfig: aspect_ratios must be"):
        YolactConfig(aspect_ratios=(float("nan"),))
    with pytest.raises(ConfigError, match="YolactConfig: square_anchors must be true or false, got 'yes'"):
        YolactConfig(square_anchors="yes")
    with pytest.raises(ConfigError, match=r"yolact: input_size must be an integer in \[32, 2048\], got 4096"):
        rtseg.load("yolact", weights=DEMO, input_size=4096)
    assert YolactConfig().with_input_size(32).input_size == 32 and TINY.with_input_size(2048).input_size == 2048


def test_an_official_file_with_an_impossible_head_is_a_weights_error(tmp_path, tiny_pth):
    state = torch.load(tiny_pth, weights_only=True)
    state["prediction_layers.0.conf_layer.weight"] = torch.zeros(3, 32, 3, 3)  # one output per anchor: 0 classes
    path = tmp_path / "zero.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"zero.pth: not a usable YOLACT checkpoint \(YolactConfig: num_classes "
                                           r"must be an integer in \[1, 5000\], got 0\)"):
        load_yolact(path)


def test_weights_that_are_not_finite_are_refused_naming_how_many(tiny_pair, tiny_pth, tmp_path):
    """Were loaded without a word: the model then finds nothing (or nonsense) in every frame."""
    from safetensors.torch import load_file, save_file

    from rtseg.weights import manifest_path, sha256_file

    state = load_file(str(tiny_pair))
    state["fpn.lat_layers.0.weight"].view(-1)[:2] = float("nan")
    state["proto_net.0.bias"][0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    man = json.loads(manifest_path(tiny_pair).read_text())
    manifest_path(path).write_text(json.dumps({**man, "sha256": sha256_file(path)}))
    total = sum(t.numel() for t in state.values() if t.is_floating_point())
    with pytest.raises(WeightsError) as info:
        load_yolact(path)
    assert str(info.value) == (f"{path}: 3 of its {total} weights are NaN or infinite (first in "
                               "fpn.lat_layers.0.weight); the file is damaged or its training diverged: use an "
                               "earlier checkpoint or re-export the weights")
    official = torch.load(tiny_pth, weights_only=True)
    official["backbone.bn1.running_var"][0] = float("-inf")
    torch.save(official, tmp_path / "inf.pth")
    with pytest.raises(WeightsError, match=r"inf.pth: 1 of its \d+ weights are NaN or infinite \(first in "
                                           r"backbone.bn1.running_var\)"):
        read_state_dict(tmp_path / "inf.pth")


def test_a_legacy_pickle_file_is_our_line_only(tmp_path):
    """torch warned 'Detected pickle protocol 4 in the checkpoint …' before our line."""
    path = tmp_path / "plain.pickle.pth"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(WeightsError) as info:
        warnings.simplefilter("always")
        read_state_dict(path)
    assert [str(w.message) for w in caught] == []
    assert str(info.value) == (f"{path}: not a PyTorch checkpoint (its contents do not unpickle to tensors); give an "
                               "official YOLACT .pth or an rtseg .safetensors")


def test_bad_manifests_and_pickles_are_one_line_in_the_cli(tiny_pair, tmp_path, capsys):
    """In process, through the command line: exit 2 and exactly one line on stderr, no warning before it."""
    from rtseg.cli import main

    (tmp_path / "p.pth").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    bad_manifest = _copy_pair(tiny_pair, tmp_path, num_prototypes=0)
    # manifests nested 100 000 deep or holding a 5001-digit number were a traceback (RecursionError, ValueError)
    deep, long = tmp_path / "deep.safetensors", tmp_path / "long.safetensors"
    for path, text in ((deep, "[" * 100_000 + "]" * 100_000), (long, '{"format": 1' + "0" * 5000 + "}")):
        path.write_bytes(tiny_pair.read_bytes())
        path.with_suffix(".json").write_text(text)
    for weights, start in ((bad_manifest, f"{bad_manifest.with_suffix('.json')}: its config is invalid"),
                           (tmp_path / "p.pth", f"{tmp_path / 'p.pth'}: not a PyTorch checkpoint"),
                           (deep, f"{deep.with_suffix('.json')}: manifest is JSON nested too deeply to read"),
                           (long, f"{long.with_suffix('.json')}: manifest is not readable JSON: a number has more "
                                  "than 4300 digits; re-export the weights")):
        assert main(["--source", "synthetic", "--max-frames", "1", "--weights", str(weights)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"rtseg: error: {start}"), err


def _as_user_without_override(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` so that a file of mode 000 cannot be read: as is for a user; for root without its
    permission override (setpriv drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), as tests/test_entry.py does."""
    cmd = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a file of mode 000 stays readable")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("which", ["pth", "safetensors", "manifest"])
def test_a_weights_file_this_user_may_not_read_says_permission_denied(tmp_path, tiny_pth, which):
    """Was 'not a PyTorch checkpoint ([Errno 13] Permission denied …)', 'not a readable safetensors file (No such
    file or directory …)' and, for the manifest, a PermissionError traceback."""
    if which == "pth":
        weights = locked = tmp_path / "tiny.pth"
        shutil.copy(tiny_pth, weights)
    else:
        weights = save_yolact(tmp_path / "tiny.safetensors", Yolact(TINY), ["a", "b", "c"])
        locked = weights if which == "safetensors" else weights.with_suffix(".json")
    locked.chmod(0)
    code = ("import sys\nfrom rtseg.errors import WeightsError\nfrom rtseg.weights import load_yolact\n"
            "try:\n    load_yolact(sys.argv[1])\nexcept WeightsError as exc:\n    print(exc)\n")
    r = _as_user_without_override(code, str(weights))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == [f"{locked}: permission denied; check the file's permissions"]


@pytest.mark.parametrize("names", [["a", "a", "c"], ["a", " ", "c"], ["a", "b\nc", "d"]])
def test_manifest_class_names_that_are_ambiguous_are_one_line(tmp_path, names):
    """Outputs name detections by these names: a name given twice, an empty one or one of two lines loaded before."""
    path = save_yolact(tmp_path / "m.safetensors", Yolact(TINY), ["a", "b", "c"])
    manifest = path.with_suffix(".json")
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**saved, "class_names": names}))
    with pytest.raises(WeightsError, match=r"m\.json: its class_names must be distinct, non-empty names of one line "
                                           r"each, got .*; re-export the weights$"):
        load_yolact(str(path))


def test_weights_of_another_architecture_say_what_to_give(tmp_path):
    path = save_yolact(tmp_path / "m.safetensors", Yolact(TINY), ["a", "b", "c"])
    other = Yolact(YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=16, num_prototypes=8))
    with pytest.raises(WeightsError, match=r"does not match the expected architecture: mis-shaped .*; they were made "
                                           r"for another model; give weights of this one$"):
        load_into(other, load_yolact(str(path)).model.state_dict(), str(path))


def test_a_manifest_saved_with_a_byte_order_mark_loads(tmp_path):
    """An editor that saves UTF-8 with a BOM: read like the data sets' JSON (it was 'not valid JSON')."""
    from rtseg.engines.choose import resolve_engine

    path = save_yolact(tmp_path / "m.safetensors", Yolact(TINY), ["a", "b", "c"])
    manifest = path.with_suffix(".json")
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert load_yolact(str(path)).class_names == ["a", "b", "c"] and resolve_engine(str(path), None) == "yolact"


def _trainer_checkpoint(model: torch.nn.Module, folder: Path) -> Path:
    """``folder/m.train/checkpoint.pth`` as the FCN / MS R-CNN trainers write it (step and model, no config)."""
    from rtseg.train.checkpoint import save_checkpoint

    return save_checkpoint(folder / "m.train" / "checkpoint.pth", step=1, parts={"model": model})


def _not_yolact(checkpoint: Path, engine: str) -> str:
    return (f"{checkpoint}: not a YOLACT checkpoint (missing prediction_layers.0.conf_layer.weight, "
            f"prediction_layers.0.mask_layer.weight, fpn.lat_layers.0.weight); it holds an rtseg {engine} network "
            "(a training checkpoint?): give ")


def test_an_fcn_trainer_checkpoint_given_as_weights_names_the_weights_its_run_wrote(tmp_path):
    """An FCN trainer's ``M.train/checkpoint.pth`` (no config: no weights) as YOLACT weights, rtseg's engine for a
    .pth, said only "not a YOLACT checkpoint (missing …)"; as FCN weights it said "a training checkpoint of an
    unfinished run" also once the run had written ``M.safetensors``."""
    from rtseg.data.synthetic import CLASSES
    from rtseg.engines.fcn import save_fcn
    from rtseg.models.fcn import FCN, FcnConfig

    torch.manual_seed(0)
    model, names = FCN(FcnConfig(arch="fcn8s", num_classes=7, width=0.0625)), ["background", *CLASSES]
    checkpoint = _trainer_checkpoint(model, tmp_path)
    with pytest.raises(WeightsError) as e:
        rtseg.load("yolact", str(checkpoint))
    assert str(e.value) == _not_yolact(checkpoint, "fcn") + (
        "the .safetensors that run writes when it finishes (--resume it if it was stopped), whose manifest names the "
        "engine")
    exported = save_fcn(tmp_path / "m.safetensors", model, names)  # the run finished: its --out is written
    with pytest.raises(WeightsError) as e:
        rtseg.load("yolact", str(checkpoint))
    assert str(e.value) == _not_yolact(checkpoint, "fcn") + (
        f"the weights that run wrote, {exported}, whose manifest names the engine")
    with pytest.raises(WeightsError) as e:
        rtseg.load("fcn", str(checkpoint))
    assert str(e.value) == (f"{checkpoint} is a training checkpoint (no config/class names in it), not weights: pass "
                            f"the .safetensors the run wrote, {exported}")
    assert list(rtseg.load("fcn", str(exported)).class_names) == names


def test_an_msrcnn_network_taken_for_yolact_says_whose_it_is():
    """(The tensors of an MS R-CNN trainer's checkpoint.pth, read as an official YOLACT .pth's.)"""
    from rtseg.models.msrcnn import MaskScoringRCNN, MsrcnnConfig

    state = MaskScoringRCNN(MsrcnnConfig(num_classes=2, backbone="resnet18")).state_dict()
    with pytest.raises(WeightsError) as e:
        infer_config(state, input_size=550, source="m.train/checkpoint.pth")
    assert str(e.value) == _not_yolact(Path("m.train/checkpoint.pth"), "msrcnn") + (
        "the .safetensors that run writes when it finishes (--resume it if it was stopped), whose manifest names the "
        "engine")
