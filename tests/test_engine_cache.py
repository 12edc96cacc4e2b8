"""The engine cache and the exported backends when something is wrong: a full disk, a name taken by a folder, network
code changed under a cached export, a broken onnxruntime, INT8 calibration frames (their digest, undecodable ones);
what a build says, and which entries storing one removes.

ONNX exports here are of :class:`TinyNet` (one 1x1 convolution with InferenceNet's four outputs: about a second
each, against ~11 s for the tiny YOLACT); the cache does not care what the network is."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtseg.engines import backends
from rtseg.engines.backends import BackendUnavailable, cached_artifact, entry_path, make_backend
from rtseg.engines.calibration import calibration_digest, calibration_files
from rtseg.errors import ConfigError, RtsegWarning

TESTS = Path(__file__).resolve().parent
CPU = torch.device("cpu")
#: TinyNet's input side S (outputs: A = S*S anchors, 3 classes + background, 1 coefficient, S x S prototypes).
SIZE = 8


class TinyNet(nn.Module):
    """(B, 3, S, S) float32 -> loc (B, A, 4), conf (B, A, 3) softmax, coef (B, A, 1), proto (B, S, S, 2): the
    interface of :class:`rtseg.engines.yolact.InferenceNet` around one 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.conv(x)
        rows = y.flatten(2).transpose(1, 2)
        return rows[..., :4], rows[..., 4:7].softmax(-1), rows[..., 7:], y[:, :2].permute(0, 2, 3, 1)


class ChangedNet(TinyNet):
    """TinyNet with other network code (its boxes doubled) and the same weights: what an rtseg upgrade does."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loc, conf, coef, proto = super().forward(x)
        return loc * 2, conf, coef, proto


def _onnx(net: nn.Module, cache: Path, name: str = "onnx"):
    return make_backend(net, name=name, device=CPU, input_size=SIZE, cache_dir=cache)


def _store_text(path: Path) -> None:
    path.write_text("artefact")


# -- the cache cannot take the entry --------------------------------------------------------------------------------
@pytest.mark.parametrize("taken", ["artefact", "sidecar"])
def test_an_entry_name_taken_by_a_folder_is_one_line_and_leaves_no_temporary_file(tmp_path: Path, taken: str) -> None:
    """Was an IsADirectoryError traceback (and, for the sidecar, its 474-byte .tmp file left for good)."""
    key = {"weights": "abc"}
    path = entry_path(tmp_path, "m", "txt", key)
    folder = path if taken == "artefact" else path.with_name(path.name + ".json")
    folder.mkdir()
    with pytest.raises(BackendUnavailable) as err:
        cached_artifact(tmp_path, "m", "txt", key, _store_text, lambda p: p.read_text(), building="building it")
    assert str(err.value) == (f"engine cache {tmp_path}: cannot write {folder.name} (Is a directory); remove "
                              f"{folder.name} or set RTSEG_ENGINE_CACHE to another folder; or use backend='eager' "
                              "(--backend eager)")
    assert not list(tmp_path.glob("*.tmp")) and folder.is_dir()


#: Run in a process whose files may grow to 4 kB (argv[1]: the cache): TinyNet's export (8.5 kB: its graph and
#: the ONNX format's overhead) fails at the write, as on a full disk (EFBIG rather than ENOSPC; same path).
FULL_DISK = f"""
import resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY))
sys.path.insert(0, {str(TESTS)!r})
from test_engine_cache import SIZE, TinyNet
from rtseg.engines.backends import BackendUnavailable, make_backend
try:
    make_backend(TinyNet(), name="onnx", device="cpu", input_size=SIZE, cache_dir=sys.argv[1])
except BackendUnavailable as exc:
    print(exc)
"""


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A real export written past the process's file size limit (was OSError's traceback from onnx's save)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(cache)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert list(cache.iterdir()) == []
    assert r.stdout.startswith(f"engine cache {cache}: cannot write yolact-"), r.stdout
    assert r.stdout.rstrip().endswith(".onnx (File too large); free space or set RTSEG_ENGINE_CACHE to another "
                                      "folder; or use backend='eager' (--backend eager)"), r.stdout


#: As FULL_DISK, an artefact written by torch's zip writer (torch.export.save: what torch_tensorrt.save calls): through
#: memory (built_in_memory, as trt.py saves now) into the cache argv[1], then to the path (as trt.py saved) into argv[2]
#: (whose writer then aborts the process as it is destroyed: SIGABRT, "terminate called after throwing c10::Error").
FULL_DISK_ZIP = f"""
import resource, signal, sys
import torch
sys.path.insert(0, {str(TESTS)!r})
from test_engine_cache import SIZE, TinyNet
from rtseg.engines.backends import BackendUnavailable, built_in_memory, cached_artifact
program = torch.export.export(TinyNet().eval(), (torch.zeros(1, 3, SIZE, SIZE),))  # 16 kB saved
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY))
for cache, build in ((sys.argv[1], built_in_memory(lambda f: torch.export.save(program, f))),
                     (sys.argv[2], lambda path: torch.export.save(program, str(path)))):
    try:
        cached_artifact(cache, "yolact", "ep", {{"k": 1}}, build, lambda p: p, building="building it")
    except BackendUnavailable as exc:
        print(exc, flush=True)
    except RuntimeError:
        print("RuntimeError", flush=True)
"""


def test_an_artefact_of_torchs_zip_writer_saved_through_memory_meets_a_full_disk_in_one_line(tmp_path: Path) -> None:
    """TensorRT engines are saved by torch's zip writer, which reports a full disk as a RuntimeError ("basic_ios::
    clear: iostream error"), not an OSError: trt.py's save to the path was a traceback. Through memory
    (built_in_memory) the write is Python's, and the cache's one line. (torch.export.save stands in for
    torch_tensorrt.save, which cannot be installed here.)"""
    cache = tmp_path / "memory"
    r = subprocess.run([sys.executable, "-c", FULL_DISK_ZIP, str(cache), str(tmp_path / "path")], capture_output=True,
                       text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    through_memory, to_the_path = r.stdout.splitlines()
    assert to_the_path == "RuntimeError"
    assert list(cache.iterdir()) == []
    assert through_memory.startswith(f"engine cache {cache}: cannot write yolact-"), r.stdout
    assert through_memory.endswith(".ep (File too large); free space or set RTSEG_ENGINE_CACHE to another folder; or "
                                   "use backend='eager' (--backend eager)"), r.stdout


def test_an_export_says_so_on_stderr_and_a_cache_hit_says_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The first onnx run exported for a minute (DarkNet-53) without a word: it looked hung. Now one line before
    each export, naming where it is kept; loading it again says nothing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = TinyNet().eval()
    backend = _onnx(net, tmp_path)
    line = (f"rtseg: exporting the network to ONNX for 3x{SIZE}x{SIZE} inputs, batch 1-16 (once: it is cached for "
            f"later runs as {backend.path})\n")
    assert capsys.readouterr().err == line
    assert _onnx(net, tmp_path).path == backend.path
    assert capsys.readouterr().err == ""
    backend.path.write_bytes(b"stale")  # rebuilt: said again
    _onnx(net, tmp_path)
    assert capsys.readouterr().err == line


def test_auto_runs_eager_saying_why_when_the_cache_cannot_be_written(tmp_path: Path) -> None:
    """auto promises the best backend available here: an export the cache cannot keep is not available (was: the
    cache's error, exit 2, where eager would have run)."""
    if backends.resolve("auto", CPU) != "onnx":
        pytest.skip(f"auto picks {backends.resolve('auto', CPU)} on this CPU")
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache"
    net = TinyNet().eval()
    with pytest.warns(RtsegWarning) as caught:
        backend = _onnx(net, cache, name="auto")
    assert backend.name == "eager"
    assert [str(w.message) for w in caught] == [
        f"backend auto: onnx cannot be used (engine cache {cache}: cannot write there (Not a directory); set "
        "RTSEG_ENGINE_CACHE to a writable folder); running eager instead"]
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(net(x), backend(x)))


# -- what the key holds ---------------------------------------------------------------------------------------------
def test_an_export_of_other_network_code_is_rebuilt_when_the_export_format_is_bumped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Network code changed under the same weights (an rtseg upgrade, an edit in a checkout) is invisible to the
    weights digest: the cached export computed the old code's outputs. EXPORT_FORMAT (bumped with such a change)
    and the rtseg version are in the key, so either gives a new entry."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    old = TinyNet().eval()
    new = ChangedNet().eval()
    new.load_state_dict(old.state_dict())
    first = _onnx(old, tmp_path)
    assert _onnx(new, tmp_path).path == first.path  # same key: the contract is to bump the constant
    monkeypatch.setattr(backends, "EXPORT_FORMAT", backends.EXPORT_FORMAT + 1)
    bumped = _onnx(new, tmp_path)
    assert bumped.path != first.path and not first.path.exists()  # superseded: removed (see the eviction tests)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        loc_old, loc_new = old(x)[0], new(x)[0]
        assert not torch.allclose(loc_old, loc_new)
        assert torch.allclose(bumped(x)[0], loc_new, atol=1e-5)
    version = backends.package_version
    monkeypatch.setattr(backends, "package_version", lambda dist: "99.0" if dist == "rtseg" else version(dist))
    upgraded = _onnx(new, tmp_path)
    assert upgraded.path not in (first.path, bumped.path)
    assert sorted(tmp_path.iterdir()) == sorted([upgraded.path, upgraded.path.with_name(upgraded.path.name + ".json")])


# -- which entries storing one removes -------------------------------------------------------------------------------
#: A key as artifact_key makes one (its versions: KEY_VERSIONS) with an exporter version, as OnnxBackend's.
NOW = {"kind": "onnx", "weights": "w1", "config": "cfg", "input_size": 550, "format": 3, "rtseg": "0.4.0",
       "torch": "2.14.1+cu130", "onnx": "1.23.2"}
VERSIONS = (*backends.KEY_VERSIONS, "onnx")
#: Entries of other keys, by name: True where storing NOW's entry removes them (the same artefact, older code).
OTHERS = {
    "older format": ({"format": 2}, True),
    "older rtseg": ({"rtseg": "0.3.9"}, True),
    "older torch": ({"torch": "2.13.0+cu130"}, True),
    "older exporter and format": ({"onnx": "1.22", "format": 1}, True),
    "older, zeros spelled out": ({"torch": "2.14.0.0+cu130"}, True),
    "newer torch (another installation)": ({"torch": "2.15.0+cu130"}, False),
    "newer format": ({"format": 4}, False),
    "older rtseg, newer torch": ({"rtseg": "0.3.0", "torch": "2.15.0+cu130"}, False),
    "another torch build": ({"torch": "2.13.0+cpu"}, False),
    "a pre-release": ({"torch": "2.13.0rc1+cu130"}, False),
    "exporter absent": ({"onnx": "absent"}, False),
    "other weights": ({"weights": "w2", "format": 2}, False),
    "other input size": ({"input_size": 320, "format": 2}, False),
    "other config": ({"config": "cfg2", "format": 2}, False),
    "other kind": ({"kind": "tensorrt", "format": 2}, False),
    "another layout": ({"opset": 18, "format": 2}, False),
}


def _text_entry(cache: Path, key: dict, text: str) -> Path:
    """A cache entry of ``key`` in ``cache`` holding ``text``, stored as cached_artifact stores one; its path."""
    def build(path: Path) -> None:
        path.write_text(text)

    return cached_artifact(cache, "yolact", "onnx", key, build, lambda p: p, building="building it",
                           versions=VERSIONS)


def test_storing_an_entry_removes_those_of_the_same_artefact_that_older_code_built(tmp_path: Path) -> None:
    """After an upgrade (rtseg, torch, the exporter, EXPORT_FORMAT) the entries of the same weights and shapes piled up
    for good. Now storing an entry removes those it supersedes (backends.superseded): the same artefact, older in
    every version that differs; an entry another installation may still use, or one that cannot be ordered, stays."""
    cache = tmp_path / "cache"
    cache.mkdir()
    paths = {}
    for i, (name, (change, _)) in enumerate(OTHERS.items()):  # each stored alone (storing removes), then gathered
        alone = _text_entry(tmp_path / str(i), {**NOW, **change}, name)
        for f in (alone, alone.with_name(alone.name + ".json")):
            shutil.move(f, cache / f.name)
        paths[name] = cache / alone.name
    unjudged = {"yolact-0123.onnx": "{not json", "yolact-4567.onnx": "[]",  # sidecars that hold no key
                "yolact-89ab.ep": json.dumps({"key": {**NOW, "format": 1}})}  # another kind of file (suffix)
    for name, sidecar in unjudged.items():
        (cache / name).write_text("x")
        (cache / f"{name}.json").write_text(sidecar)
    current = _text_entry(cache, NOW, "now")
    kept = {name for name, path in paths.items() if path.is_file() and path.with_name(path.name + ".json").is_file()}
    assert kept == {name for name, (_, stays) in OTHERS.items() if not stays}
    assert current.read_text() == "now"
    assert sorted(f.name for f in cache.iterdir()) == sorted(
        n + s for n in [current.name, *unjudged, *(paths[k].name for k in kept)] for s in ("", ".json"))


def test_a_cache_hit_removes_nothing(tmp_path: Path) -> None:
    """Only storing an entry removes others: an older installation that stored its entry again beside a newer one
    never takes turns with it (neither removes the other from then on)."""
    older = _text_entry(tmp_path, {**NOW, "format": 2}, "old")
    newer = _text_entry(tmp_path, NOW, "new")
    assert not older.exists()
    assert _text_entry(tmp_path, {**NOW, "format": 2}, "old") == older  # the older installation builds again
    assert newer.read_text() == "new"  # and keeps the newer one's entry
    assert _text_entry(tmp_path, NOW, "rebuilt?") == newer and newer.read_text() == "new"  # a hit: no build
    assert older.read_text() == "old"


# -- a broken onnxruntime -------------------------------------------------------------------------------------------
@pytest.fixture
def broken_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An onnxruntime found first on the path whose import fails as one with a missing shared library does."""
    fake = tmp_path / "fake" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(fake.parent))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)


def test_a_broken_onnxruntime_is_one_line_for_onnx_and_eager_for_auto(broken_onnxruntime: None,
                                                                       tmp_path: Path) -> None:
    """Was ImportError's traceback for both (available() sees the package installed)."""
    pytest.importorskip("onnxscript")
    why = ("backend 'onnx': onnxruntime is installed but cannot be imported (libonnxruntime.so.1: cannot open shared "
           "object file); reinstall it (pip install --force-reinstall onnxruntime)")
    with pytest.raises(BackendUnavailable) as err:
        _onnx(TinyNet(), tmp_path)
    assert str(err.value) == f"{why}; or use backend='eager' (--backend eager)"
    with pytest.warns(RtsegWarning) as caught:
        assert _onnx(TinyNet(), tmp_path, name="auto").name == "eager"
    assert [str(w.message) for w in caught] == [f"backend auto: onnx cannot be used ({why}); running eager instead"]
    assert list(tmp_path.iterdir()) == [tmp_path / "fake"]  # nothing exported


# -- INT8 calibration frames (testable without TensorRT) ------------------------------------------------------------
def _frames(folder: Path, seed: int) -> list[Path]:
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(3):
        assert cv2.imwrite(str(folder / f"f{i}.bmp"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return calibration_files(folder)


def test_calibration_digest_is_of_the_frames_bytes(tmp_path: Path) -> None:
    """Was a digest of names and sizes: other frames of the same names and sizes (BMPs of one shape) reused the
    INT8 engine calibrated on the first ones."""
    a, b = _frames(tmp_path / "a", 0), _frames(tmp_path / "b", 1)
    assert [(p.name, p.stat().st_size) for p in a] == [(p.name, p.stat().st_size) for p in b]
    assert calibration_digest(a) != calibration_digest(b)
    assert calibration_digest(a) == calibration_digest(_frames(tmp_path / "a2", 0))
    b[0].unlink()
    with pytest.raises(ConfigError, match=f"INT8 calibration frame '{b[0]}': cannot read it \\(No such file"):
        calibration_digest(b)


def test_calibration_frames_none_of_which_decodes_are_one_line(tmp_path: Path) -> None:
    """Was silence: no batch at all, a calibration on nothing."""
    from rtseg.engines.trt import calibration_batches

    good = _frames(tmp_path / "good", 0)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"f{i}.jpg").write_bytes(b"not a jpeg")
    options = {"input_size": 32, "mean": (0.0,) * 3, "std": (255.0,) * 3, "device": CPU}
    with pytest.raises(ConfigError) as err:
        list(calibration_batches(calibration_files(bad), **options))
    assert str(err.value) == (f"INT8 calibration: none of the 2 frames of {str(bad)!r} can be read (e.g. f0.jpg: not "
                              "a readable image file); pass a folder of readable images")
    (batch,) = list(calibration_batches([bad / "f0.jpg", *good], **options))  # an undecodable one among others
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32


def test_a_calibration_folder_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "frames.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="INT8 calibration folder '.*frames.jpg' is a file, not a folder; pass a"):
        calibration_files(tmp_path / "frames.jpg")
    with pytest.raises(ConfigError, match="INT8 calibration folder '.*nothing' does not exist; pass a"):
        calibration_files(tmp_path / "nothing")

