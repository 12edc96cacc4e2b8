"""A bad engine option is refused in one line before any weights are read or any network is built.

``rtseg.load("msrcnn", weights, top_k=0)`` read the weights and built the network (seconds for a ResNet-50 MS
R-CNN) before its constructor checked the options; a bad weights file then hid the bad option behind its own error.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import rtseg
from rtseg.data.synthetic import CLASSES
from rtseg.engines.fcn import save_fcn
from rtseg.engines.limits import OPTION_LIMITS, OptionLimit
from rtseg.engines.msrcnn import save_msrcnn
from rtseg.errors import ConfigError, WeightsError
from rtseg.models.fcn import FCN, FcnConfig
from rtseg.models.msrcnn import MaskScoringRCNN, MsrcnnConfig
from rtseg.models.yolact import Yolact, YolactConfig

DEMO = str(Path(__file__).resolve().parents[1] / "engines" / "yolact_demo.safetensors")
BAD_DEVICE = ({"device": "xpu"}, "unknown device 'xpu'; use cpu, cuda or cuda:N")
MSRCNN_CASES = [
    ({"score_threshold": "a"}, "msrcnn: score_threshold must be a number in [0, 1], got 'a'"),
    ({"score_threshold": None}, "msrcnn: score_threshold must be a number in [0, 1], got None"),
    ({"score_threshold": float("nan")}, "msrcnn: score_threshold must be a number in [0, 1], got nan"),
    ({"top_k": 1.5}, "msrcnn: top_k must be an integer >= 1, got 1.5"),  # was: loads, then crashes on the first frame
    ({"top_k": True}, "msrcnn: top_k must be an integer >= 1, got True"),  # was: accepted as 1
    # was accepted: six classes named c, i, r, c, l, e
    ({"class_names": "circle"}, "msrcnn: class_names must be a list of class names (strings), got str 'circle'"),
    ({"class_names": ["a"]}, "msrcnn: 1 class names for a model with 6 classes"),
    # were accepted, as a manifest's are not: outputs could not tell the classes apart
    ({"class_names": [""] * 6}, "msrcnn: class_names must be distinct, non-empty names of one line each, got ''"),
    ({"class_names": ["a"] * 6}, "msrcnn: class_names must be distinct, non-empty names of one line each, got 'a'"),
    BAD_DEVICE,  # was accepted
]
FCN_CASES = [
    ({"max_side": 0}, "fcn: max_side must be an integer >= 1, got 0"),
    ({"max_side": 1.5}, "fcn: max_side must be an integer >= 1, got 1.5"),
    ({"class_names": ["bg"]}, "fcn: 1 class names for a model with 3 classes"),
    ({"class_names": ["bg", "a\nb", "c"]},
     "fcn: class_names must be distinct, non-empty names of one line each, got 'a\\nb'"),  # was accepted
    BAD_DEVICE,
]

YOLACT_CASES = [
    ({"nms": "soft"}, "unknown NMS 'soft'; choose one of fast, cross_class, traditional"),
    ({"score_threshold": "0.3"}, "yolact: score_threshold must be a number in [0, 1], got '0.3'"),
    ({"iou_threshold": 2.0}, "yolact: iou_threshold must be a number in [0, 1], got 2.0"),
    ({"conf_threshold": float("nan")}, "yolact: conf_threshold must be a number in [0, 1], got nan"),
    ({"top_k": 0}, "yolact: top_k must be an integer >= 1, got 0"),  # was refused after ~1 s of loading the demo
    ({"nms_top_k": 2.5}, "yolact: nms_top_k must be an integer >= 1, got 2.5"),
    ({"max_detections": True}, "yolact: max_detections must be an integer >= 1, got True"),
    ({"class_names": "square"}, "yolact: class_names must be a list of class names (strings), got str 'square'"),
    # was refused only once the weights had been loaded into a built network
    ({"class_names": ["a"]}, "yolact: 1 class names for a model with 6 classes"),
    ({"class_names": [" ", *"abcde"]},
     "yolact: class_names must be distinct, non-empty names of one line each, got ' '"),  # was accepted
    ({"precision": "int8"}, "precision='int8' / calibration frames apply to the tensorrt backend only (got backend "
                            "'eager'); add backend='tensorrt' (--backend tensorrt)"),
    ({"backend": "tensorrtx"}, "unknown backend 'tensorrtx'; choose one of eager, compile, tensorrt, onnx, auto"),
    ({"backend": "tensorrt"}, "backend 'tensorrt' is not available: needs a CUDA device (device='cuda', --device "
                              "cuda); or use backend='eager' (--backend eager)"),
    BAD_DEVICE,
]

#: Bad options of ``rtseg.load("panoptic", instances=("msrcnn", PATH), semantic=FCN_PATH, ...)`` (the FCN's classes:
#: background, a, b). Each was refused only once both engines had loaded (the bad engines: once one had).
PANOPTIC_CASES = [
    ({"score_threshold": 2}, "panoptic: score_threshold must be a number in [0, 1], got 2"),
    ({"overlap_threshold": "a"}, "panoptic: overlap_threshold must be a number in [0, 1], got 'a'"),
    ({"stuff_min_area": -1}, "panoptic: stuff_min_area must be an integer >= 0, got -1"),
    ({"stuff_classes": 5}, "panoptic: stuff_classes must be a class name or a list of class names, got 5"),
    ({"stuff_classes": "c"}, "panoptic: stuff classes ['c'] are not semantic classes; choose from "
                             "['background', 'a', 'b']"),  # against the classes the FCN's manifest lists
    ({"semantic": 3}, "panoptic: semantic= must be an FCN engine or an FCN weights path, got int"),
    ({"instances": 3}, "panoptic: instances= must be an engine producing Detections (yolact, msrcnn) or a "
                       "(name, weights) pair such as (\"yolact\", PATH), got int"),
    # the backend options are YOLACT's (were: unknown options, for YOLACT instances too)
    ({"backend": "onnx"}, "panoptic: backend='onnx' is for yolact instances only; msrcnn runs eager: leave it out or "
                          "give yolact weights"),
    ({"precision": "int8"}, "panoptic: precision='int8' is for yolact instances only; msrcnn runs eager: leave it out "
                            "or give yolact weights"),
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    """Engine name -> tiny weights: an MS R-CNN of the synthetic classes, a 3-class FCN-32s (rtseg files), a
    3-class YOLACT in the official .pth layout (a bare state dict: no class names, no config)."""
    folder = tmp_path_factory.mktemp("weights")
    ms = MaskScoringRCNN(MsrcnnConfig(num_classes=len(CLASSES), backbone="resnet18", min_size=64, max_size=80))
    fcn = FCN(FcnConfig(arch="fcn32s", num_classes=3, width=0.0625))
    yolact = Yolact(YolactConfig(backbone="resnet18", num_classes=3, input_size=128, fpn_channels=32,
                                 num_prototypes=8))
    torch.save(yolact.state_dict(), folder / "yolact.pth")
    return {"msrcnn": str(save_msrcnn(folder / "ms.safetensors", ms, list(CLASSES))),
            "fcn": str(save_fcn(folder / "fcn.safetensors", fcn, ["background", "a", "b"])),
            "yolact.pth": str(folder / "yolact.pth")}


@pytest.fixture
def no_network(monkeypatch):
    """From here on, building any torch module (a network) fails the test instead."""
    def built(module: torch.nn.Module, *args, **kwargs) -> None:
        raise AssertionError(f"{type(module).__name__} built before the options were checked")

    monkeypatch.setattr(torch.nn.Module, "__init__", built)


def _refused(message: str, name: str, weights: str | None, **options) -> None:
    """``rtseg.load(name, weights, **options)`` raises exactly the one-line ConfigError ``message``."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        rtseg.load(name, weights, **options)


@pytest.mark.parametrize("options, message", MSRCNN_CASES)
def test_msrcnn_refuses_a_bad_option_before_building_its_network(weights, no_network, options, message):
    _refused(message, "msrcnn", weights["msrcnn"], **options)


@pytest.mark.parametrize("options, message", FCN_CASES)
def test_fcn_refuses_a_bad_option_before_building_its_network(weights, no_network, options, message):
    _refused(message, "fcn", weights["fcn"], **options)


@pytest.mark.parametrize("options, message", YOLACT_CASES)
def test_yolact_refuses_a_bad_option_before_building_its_network(no_network, options, message):
    _refused(message, "yolact", DEMO, **options)


def test_yolact_pth_refuses_class_names_of_another_count_before_building_its_network(weights, no_network):
    """An official .pth names no classes: their number is its classification layer's (read from the state dict,
    no network built). Was refused only once the weights had been loaded into a built network."""
    _refused("yolact: 2 class names for a model with 3 classes", "yolact", weights["yolact.pth"], class_names=["a", "b"])


def test_yolact_pth_takes_class_names_of_its_count(weights):
    engine = rtseg.load("yolact", weights["yolact.pth"], class_names=["a", "b", "c"])
    assert engine.class_names == ("a", "b", "c") and engine.cfg.num_classes == 3


def test_yolact_options_checked_early_reach_the_engine():
    """The checked values go on to the constructor: a generator of class names (read by the early check) too."""
    engine = rtseg.load("yolact", DEMO, device="cpu:0", nms="traditional", top_k=5,
                        class_names=(f"c{i}" for i in range(6)))
    assert (engine.device, engine.nms, engine.top_k) == ("cpu:0", "traditional", 5)
    assert engine.class_names == tuple(f"c{i}" for i in range(6))


@pytest.mark.parametrize("options, message", [
    *[(o, m.replace("3 classes", "4 classes")) for o, m in FCN_CASES],
    ({"class_names": "abcd"}, "fcn: class_names must be a list of class names (strings), got str 'abcd'"),
])
def test_torchvision_fcn_refuses_a_bad_option_before_building_it(no_network, options, message):
    """Was: the network built, and its random-weights warning given, before the refusal."""
    _refused(message, "fcn", None, arch="fcn_resnet50", num_classes=4, **options)


@pytest.mark.parametrize("name", ["msrcnn", "fcn", "yolact"])
def test_a_bad_option_is_reported_before_a_missing_weights_file(tmp_path, name):
    """Was the weights' error ('file not found'): fixing it only led to the option's."""
    _refused(BAD_DEVICE[1], name, str(tmp_path / "missing.safetensors"), **BAD_DEVICE[0])


@pytest.mark.parametrize("name", ["yolact", "fcn", "msrcnn"])
def test_an_empty_weights_path_says_it_is_empty(name):
    """Was "WeightsError: . is a folder" (an empty path is the current folder)."""
    with pytest.raises(WeightsError, match=f"^{name}: weights is an empty path \\(an unset variable\\?\\); give the "
                                           f"weights file's path$"):
        rtseg.load(name, "")


@pytest.mark.parametrize("name", ["fcn", "msrcnn"])
def test_a_missing_weights_file_of_fcn_or_msrcnn_asks_for_their_own_weights(tmp_path, name):
    """Was "…: not found; give an official YOLACT .pth or an rtseg .safetensors" (YOLACT's advice)."""
    path = tmp_path / "missing.safetensors"
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(path))}: not found; give the \.safetensors an rtseg "
                                           rf"{name} training run wrote$"):
        rtseg.load(name, str(path))



@pytest.mark.parametrize("options, message", PANOPTIC_CASES)
def test_panoptic_refuses_a_bad_option_before_loading_either_engine(weights, no_network, options, message):
    given = {"instances": ("msrcnn", weights["msrcnn"]), "semantic": weights["fcn"], **options}
    _refused(message, "panoptic", None, **given)


@pytest.fixture(scope="module")
def fcn_engine(weights):
    """The FCN engine of ``weights["fcn"]`` (module scope: built before :func:`no_network` applies)."""
    return rtseg.load("fcn", weights["fcn"])


def test_panoptic_checks_stuff_classes_against_an_fcn_engine_before_loading_the_instances(weights, fcn_engine,
                                                                                           no_network):
    _refused("panoptic: stuff classes ['c'] are not semantic classes; choose from ['background', 'a', 'b']",
             "panoptic", None, instances=("msrcnn", weights["msrcnn"]), semantic=fcn_engine, stuff_classes=["c"])


@pytest.mark.parametrize("options, message", [
    ({"backend": "tensorrt"}, "backend 'tensorrt' is not available: needs a CUDA device (device='cuda', --device "
                              "cuda); or use backend='eager' (--backend eager)"),
    ({"backend": "fast"}, "unknown backend 'fast'; choose one of eager, compile, tensorrt, onnx, auto"),
    ({"precision": "int8"}, "precision='int8' / calibration frames apply to the tensorrt backend only (got backend "
                            "'eager'); add backend='tensorrt' (--backend tensorrt)"),
])
def test_panoptic_checks_the_backend_of_yolact_instances_before_loading_either_engine(weights, no_network, options,
                                                                                      message):
    _refused(message, "panoptic", None, instances=("yolact", weights["yolact.pth"]), semantic=weights["fcn"],
             **options)


def test_panoptic_refuses_a_backend_for_instances_given_as_an_engine(weights, fcn_engine):
    """An engine object was loaded with its own backend: the option would be silently ignored."""
    instances = rtseg.load("yolact", weights["yolact.pth"])
    _refused("panoptic: backend='onnx' is for instances=(\"yolact\", PATH) only; an instances engine given as an "
             "object runs the backend it was loaded with", "panoptic", None, instances=instances, semantic=fcn_engine,
             backend="onnx")


def test_panoptic_options_checked_early_reach_the_engine(weights):
    engine = rtseg.load("panoptic", instances=("msrcnn", weights["msrcnn"]), semantic=weights["fcn"],
                        stuff_classes="a", score_threshold=0, stuff_min_area=1)
    assert (engine.stuff_categories, engine.score_threshold, engine.stuff_min_area) == ([1], 0.0, 1)


def test_panoptic_stuff_classes_are_not_checked_against_a_manifest_of_another_engine(weights):
    """MS R-CNN weights given as semantic=: the FCN loader's error, not a list of MS R-CNN classes to choose from."""
    with pytest.raises(WeightsError, match=r"manifest format is 'rtseg-msrcnn/1', expected 'rtseg-fcn/1'"):
        rtseg.load("panoptic", instances=("msrcnn", weights["msrcnn"]), semantic=weights["msrcnn"],
                   stuff_classes=["zzz"])


def test_cli_panoptic_refuses_a_bad_score_threshold_before_loading_either_engine(weights, no_network, tmp_path,
                                                                                    capsys):
    """``rtseg --engine panoptic --score-threshold 2``: was refused after both engines had loaded (seconds)."""
    from rtseg.cli import main

    assert main(["--engine", "panoptic", "--weights", weights["msrcnn"], "--semantic", weights["fcn"],
                 "--score-threshold", "2", "--source", "synthetic", "--json", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "rtseg: error: --score-threshold 2: must be a number in [0, 1]"


def test_cli_panoptic_takes_a_backend_for_yolact_instances_only(weights, no_network, tmp_path, capsys):
    """``rtseg --engine panoptic --backend onnx``: was refused for every panoptic run ("applies to the yolact engine
    only") though its instances may be YOLACT; with MS R-CNN instances it is refused before either engine loads."""
    from rtseg.cli import main

    assert main(["--engine", "panoptic", "--weights", weights["msrcnn"], "--semantic", weights["fcn"],
                 "--backend", "onnx", "--source", "synthetic", "--json", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "rtseg: error: --backend onnx applies to the yolact engine and to panoptic with yolact --weights only "
        "(--weights holds msrcnn weights)")


#: Option values out of the engines' range, refused by ``rtseg`` / ``rtseg eval`` with the option's name. Each was
#: refused only after torch had been imported and the engine began loading (4 s), with the engine parameter's name:
#: "yolact: top_k must be an integer >= 1, got 0". Values are quoted as typed (``1e400``, not the ``inf`` it parses
#: to; ``0``, not ``0.0``).
CLI_VALUE_CASES = [
    ("rtseg", ["--top-k", "0"], "--top-k 0: must be an integer >= 1"),
    ("rtseg", ["--score-threshold", "nan"], "--score-threshold nan: must be a number in [0, 1]"),
    ("rtseg", ["--score-threshold", "1.5"], "--score-threshold 1.5: must be a number in [0, 1]"),
    ("rtseg", ["--engine", "slic", "--segments", "0"], "--segments 0: must be an integer >= 1"),
    ("rtseg", ["--engine", "slic", "--compactness", "0"], "--compactness 0: must be a finite number > 0"),
    ("rtseg", ["--score-threshold", "1e400"], "--score-threshold 1e400: must be a number in [0, 1]"),
    ("rtseg", ["--engine", "slic", "--compactness", "inf"], "--compactness inf: must be a finite number > 0"),
    ("rtseg eval", ["--score-threshold", "-0.5"], "--score-threshold -0.5: must be a number in [0, 1]"),
    ("rtseg eval", ["--engine", "slic", "--segments", "-3"], "--segments -3: must be an integer >= 1"),
    ("rtseg eval", ["--engine", "slic", "--compactness", "nan"], "--compactness nan: must be a finite number > 0"),
    ("rtseg eval", ["--engine", "slic", "--compactness", "1E400"], "--compactness 1E400: must be a finite number > 0"),
]


@pytest.mark.parametrize("command, args, message", CLI_VALUE_CASES)
def test_cli_option_values_out_of_the_engines_range_are_refused_before_loading(no_network, tmp_path, capsys,
                                                                               command, args, message):
    from rtseg.cli import main

    argv = ["eval", *args] if command == "rtseg eval" else ["--source", "synthetic", *args]
    assert main([*argv, "--json", str(tmp_path / ("m.json" if command == "rtseg eval" else "o.jsonl"))]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{command}: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def _engine_accepts(engine: str, key: str, value: object) -> bool:
    """Whether engine ``engine`` takes ``value`` for its option ``key`` (its own check of it)."""
    try:
        if engine == "slic":
            rtseg.load("slic", **{key: value})
        else:
            module = {"yolact": "rtseg.engines.yolact", "msrcnn": "rtseg.engines.msrcnn",
                      "panoptic": "rtseg.engines.panoptic"}[engine]
            __import__(module, fromlist=["_OPTION_CHECKS"])._OPTION_CHECKS[key](value)
    except ConfigError:
        return False
    return True


#: The engines that offer each option of OPTION_LIMITS, the command lines' engine for it first.
OPTION_ENGINES = {"score_threshold": ("yolact", "msrcnn", "panoptic"), "top_k": ("yolact", "msrcnn"),
                  "n_segments": ("slic",), "compactness": ("slic",)}


def _limit_probes(limit: OptionLimit) -> list[tuple[float, bool]]:
    """Values just outside, at and just inside each end of ``limit``'s range (a large one where it has no upper
    end; NaN and infinities for a real one), with whether the range holds each, said here rather than by the range
    check under test. Of argparse's type for the option: ints for an integer one."""
    step = 1 if limit.integer else 1e-9
    probes = [(limit.low - step, False), (limit.low, not limit.open_low), (limit.low + step, True)]
    if math.isfinite(limit.high):
        probes += [(limit.high - step, True), (limit.high, True), (limit.high + step, False)]
    else:
        probes += [(10**9 if limit.integer else 1e9, True)]
    if not limit.integer:
        probes += [(math.nan, False), (math.inf, False), (-math.inf, False)]
    return probes


@pytest.mark.parametrize("key", sorted(OPTION_LIMITS))
def test_the_engines_and_the_command_lines_take_exactly_the_option_limits(key):
    """Each engine offering the option, and the command lines before torch loads (check_engine_options), take
    exactly the values in its OPTION_LIMITS range: each probe on both sides of each end is taken by all or refused
    by all, as the range says."""
    from rtseg.engines.choose import check_engine_options

    engines = OPTION_ENGINES[key]
    for value, inside in _limit_probes(OPTION_LIMITS[key]):
        try:
            check_engine_options(engines[0], **{"segments" if key == "n_segments" else key: value})
            cli = True
        except ConfigError:
            cli = False
        assert cli == inside, ("command line", key, value)
        for engine in engines:
            assert _engine_accepts(engine, key, value) == inside, (engine, key, value)
