"""Weights files that are damaged, not regular files, or not fit to export: one WeightsError line each, in the
right order (integrity before contents), never a wait on a FIFO, and nothing written for a model that is unfit."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rtseg.errors import WeightsError
from rtseg.models.yolact import Yolact, YolactConfig
from rtseg.weights import MANIFEST_FORMAT, load_model, load_yolact, read_checkpoint, save_model, save_yolact

TINY = YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=16, num_prototypes=4)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny rtseg YOLACT .safetensors + .json pair (copied by the tests that change it)."""
    torch.manual_seed(4)
    return save_yolact(tmp_path_factory.mktemp("pair") / "m.safetensors", Yolact(TINY), ["a", "b", "c"])


def _copy_pair(pair: Path, folder: Path) -> Path:
    """A copy of the weights + manifest ``pair`` in ``folder``; returns the weights' path."""
    path = folder / pair.name
    path.write_bytes(pair.read_bytes())
    path.with_suffix(".json").write_bytes(pair.with_suffix(".json").read_bytes())
    return path


def _set_first_value(path: Path, key: str, value: float) -> None:
    """Overwrite, in place, the first float32 value of tensor ``key`` in the safetensors file ``path``."""
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    entry = json.loads(data[8:8 + size])[key]
    assert entry["dtype"] == "F32"
    start = 8 + size + entry["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def test_a_damaged_weights_file_is_reported_as_damaged_not_as_nan_weights(tiny_pair, tmp_path):
    """Bytes of a tensor's data changed after export so that a weight is NaN: the manifest's sha256 says the file is
    damaged (was '1 of its … weights are NaN or infinite', a diverged run's message, which sends the user to
    re-train rather than re-download)."""
    path = _copy_pair(tiny_pair, tmp_path)
    _set_first_value(path, "fpn.lat_layers.0.weight", float("nan"))
    with pytest.raises(WeightsError) as info:
        load_yolact(path)
    message = str(info.value)
    assert message.startswith(f"{path}: sha256 ") and message.endswith(
        "does not match its manifest; the file is corrupt or was replaced"), message
    with pytest.raises(WeightsError, match="does not match its manifest"):
        read_checkpoint(path)


def test_a_training_checkpoint_keeps_its_own_messages(tiny_pair, tmp_path):
    """A .pth has no manifest: a NaN in a training checkpoint is still the non-finite line, and a training checkpoint
    given where rtseg weights of another engine belong still says how to finish the run."""
    from safetensors.torch import load_file

    state = load_file(str(tiny_pair))
    state["proto_net.0.bias"][0] = float("nan")
    path = tmp_path / "checkpoint.pth"
    torch.save({"step": 3, "model": state}, path)
    with pytest.raises(WeightsError, match=r"checkpoint.pth: 1 of its \d+ weights are NaN or infinite \(first in "
                                           r"proto_net.0.bias\)"):
        load_yolact(path)
    state["proto_net.0.bias"][0] = 0.0
    torch.save({"step": 3, "model": state}, path)
    with pytest.raises(WeightsError, match="checkpoint.pth is a training checkpoint of an unfinished run"):
        load_model(path, "rtseg-fcn/1", YolactConfig)
    torch.save(state, path)  # a plain state dict: no rtseg weights of any engine
    with pytest.raises(WeightsError, match=r"checkpoint.pth: not rtseg fcn weights \(those are a .safetensors file "
                                           r"with a .json manifest beside it\); give the .safetensors"):
        load_model(path, "rtseg-fcn/1", YolactConfig)


_LOAD_EACH = """
import sys
from rtseg.errors import WeightsError
from rtseg.weights import load_torch_file, load_yolact
for path in sys.argv[1:]:
    try:
        load_yolact(path) if not path.endswith('.cache.pth') else load_torch_file(path, advice='delete it')
    except WeightsError as exc:
        print(exc)
"""


def test_a_weights_or_manifest_path_that_is_no_regular_file_is_refused_unread(tiny_pair, tmp_path):
    """A FIFO (as weights, .pth or .safetensors, as a manifest, or as a file in the torch cache), a device or a
    folder: one line each, without reading it. Was a wait for a writer that never comes (torch.load, safetensors'
    permission probe, the manifest's read), or 'not found' of a file that is there."""
    fifo_pth, fifo_st, fifo_cache = tmp_path / "f.pth", tmp_path / "f.safetensors", tmp_path / "resnet.cache.pth"
    for fifo in (fifo_pth, fifo_st, fifo_cache):
        os.mkfifo(fifo)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_pair.read_bytes())
    os.mkfifo(weights.with_suffix(".json"))
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    paths = [fifo_pth, fifo_st, fifo_cache, weights, "/dev/null", folder]
    run = subprocess.run([sys.executable, "-c", _LOAD_EACH, *map(str, paths)], capture_output=True, text=True,
                         timeout=120)  # a regression waits forever: fail instead
    assert run.returncode == 0 and run.stderr == "", run.stderr
    not_regular = "is not a regular file (a FIFO, socket or device), so it was not read"
    advice = "give an official YOLACT .pth or an rtseg .safetensors"
    assert run.stdout.splitlines() == [
        f"{fifo_pth} {not_regular}; {advice}",
        f"{fifo_st} {not_regular}; {advice}",
        f"{fifo_cache} {not_regular}; delete it",
        f"{weights.with_suffix('.json')} {not_regular}; re-export the weights",
        f"/dev/null {not_regular}; {advice}",
        f"{folder} is a folder; {advice}",
    ]


def _linear(value: float) -> nn.Linear:
    """A 3→2 linear layer whose first weight is ``value`` (the others small)."""
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.weight[0, 0] = value
    return layer


def test_a_model_with_non_finite_weights_is_not_exported(tmp_path):
    """Was written without a word (then refused by every loader, or worse, over a good export)."""
    path = save_model(tmp_path / "m.safetensors", _linear(1.0), MANIFEST_FORMAT, {}, ["a"])
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(WeightsError) as info:
            save_model(path, _linear(bad), MANIFEST_FORMAT, {}, ["a"])
        assert str(info.value) == (f"{path} not written: the model has 1 NaN or infinite weights (first in weight), "
                                   "its training diverged; train again with a lower learning rate or export an "
                                   "earlier checkpoint")
        assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # the earlier pair as it was
    fresh = tmp_path / "new" / "m.safetensors"
    with pytest.raises(WeightsError, match="not written"):
        save_model(fresh, _linear(float("nan")), MANIFEST_FORMAT, {}, ["a"])
    assert not fresh.parent.exists()  # nothing at all written


def test_a_float16_export_refuses_weights_beyond_its_range(tmp_path):
    """float16's largest value is 65504: 1e5 became infinity in the file, which its loader then refused."""
    path = tmp_path / "m.safetensors"
    with pytest.raises(WeightsError) as info:
        save_model(path, _linear(1e5), MANIFEST_FORMAT, {}, ["a"], half=True)
    assert str(info.value) == (f"{path} not written: weight holds 100000, which overflows float16 (largest 65504); "
                               "export in float32 (without half / --half)")
    assert list(tmp_path.iterdir()) == []
    save_model(path, _linear(1e5), MANIFEST_FORMAT, {}, ["a"])  # float32: fine
    state, manifest = read_checkpoint(path)
    assert state["weight"].dtype == torch.float32 and state["weight"][0, 0] == 1e5
    assert manifest["format"] == MANIFEST_FORMAT
    save_model(path, _linear(6e4), MANIFEST_FORMAT, {}, ["a"], half=True)  # within float16's range
    state, _ = read_checkpoint(path)
    assert state["weight"].dtype == torch.float16 and state["weight"][0, 0] == 6e4


def test_a_float16_yolact_export_loads_back(tmp_path):
    torch.manual_seed(5)
    model = Yolact(TINY)
    path = save_yolact(tmp_path / "h.safetensors", model, ["a", "b", "c"], half=True)
    loaded = load_yolact(path)
    assert loaded.config == TINY and loaded.class_names == ["a", "b", "c"]
    for key, value in model.state_dict().items():
        got = loaded.model.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value.half().to(value.dtype) if value.is_floating_point()
                                                         else value)


def test_the_cli_refuses_weights_or_a_manifest_that_is_a_fifo(tiny_pair, tmp_path):
    """``rtseg --weights`` a FIFO, or weights whose manifest is one: one line, exit 2, nothing read (the engine choice
    read the manifest with read_text and waited forever for a writer; a FIFO as --weights was 'file not found')."""
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_pair.read_bytes())
    os.mkfifo(weights.with_suffix(".json"))
    for given, said in ((fifo, f"--weights {fifo} is not a regular file (a FIFO, socket or device); give the weights "
                               "file"),
                        (weights, f"{weights.with_suffix('.json')} is not a regular file (a FIFO, socket or device), "
                                  "so it was not read; re-export the weights")):
        run = subprocess.run([sys.executable, "-m", "rtseg", "--source", "synthetic", "--max-frames", "1",
                              "--weights", str(given)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.splitlines() == [f"rtseg: error: {said}"], run.stderr
