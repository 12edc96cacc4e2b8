"""Checkpoint I/O for YOLACT: the authors' .pth files and rtseg's safetensors + manifest.

Every failure a user can cause (missing, truncated, unsafe, foreign or YOLACT++
checkpoints) raises :class:`WeightsError` with one line saying what and what to do.
"""
from __future__ import annotations

import hashlib
import io
import json
import numbers
import pickle
import re
import typing
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, NamedTuple, Sequence, TypeVar

import torch
from torch import nn

from rtseg.errors import PERMISSION_DENIED, ConfigError, SinkError, WeightsError, first_line, json_problem
from rtseg.manifest import MANIFEST_FORMAT, WEIGHTS_ADVICE, ambiguous_class_name, manifest_path
from rtseg.models.yolact import PRESETS, Yolact, YolactConfig
from rtseg.userfiles import NotRegularFileError, read_regular_file

T = TypeVar("T")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_user_file(path: Path, advice: str, *, missing: str | None = None) -> bytes:
    """All bytes of the file ``path`` a user gave, read without ever waiting
    (:func:`rtseg.userfiles.read_regular_file`); else a WeightsError line naming it: ``missing`` (default ``path:
    not found; advice``) when there is no such file, permission denied, a folder or a FIFO, socket or device
    (refused unread: reading one could block forever) or another failure to read it, with ``advice``."""
    try:
        return read_regular_file(path)
    except FileNotFoundError:
        raise WeightsError(missing or f"{path}: not found; {advice}") from None
    except PermissionError:
        raise _permission_denied(path) from None
    except NotRegularFileError as e:
        what = "is a folder" if e.folder else "is not a regular file (a FIFO, socket or device), so it was not read"
        raise WeightsError(f"{path} {what}; {advice}") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read it ({e.strerror}); {advice}") from None


def load_torch_file(path: str | Path, *, advice: str, corrupt_advice: str | None = None,
                    missing: str | None = None, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` of a file a user gave or left behind (read by :func:`read_user_file`:
    a FIFO or device is refused unread; ``missing`` as there); every failure is a WeightsError line naming the
    file: cut short (empty, truncated zip) → ``corrupt_advice`` (default ``advice``), foreign bytes → ``advice``,
    pickled code → refused."""
    p = Path(path)
    data = read_user_file(p, advice, missing=missing)
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol other than 2 (the file then loads or
            # fails with our line): not the user's to act on
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():
            raise WeightsError(
                f"{p}: refusing to load, unpickling it would execute code (only plain tensor checkpoints are accepted)"
            ) from None
        raise WeightsError(f"{p}: not a PyTorch checkpoint (its contents do not unpickle to tensors); {advice}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a user file is a user error
        msg = first_line(e)
        if "zip" in msg.lower() or isinstance(e, EOFError):
            what = "an empty file" if not data else msg.split(". ")[0][:120]
            raise WeightsError(f"{p}: truncated or corrupt checkpoint ({what}); {corrupt_advice or advice}") from None
        # torch's own word (RuntimeError: "Invalid magic number; corrupt file?"); not the unpickler's internals
        # (KeyError: a bare byte value, IndexError "pop from empty list" for a text file)
        detail = f" ({msg})" if isinstance(e, RuntimeError) else ""
        raise WeightsError(f"{p}: not a PyTorch checkpoint{detail}; {advice}") from None


def _permission_denied(path: Path) -> WeightsError:
    """The error for a file this user may not read (``path``: permission denied; what to do)."""
    return WeightsError(f"{path}: {PERMISSION_DENIED}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth or rtseg YOLACT .safetensors checkpoint (:func:`read_checkpoint` without its extras)."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path, fmt: str = MANIFEST_FORMAT,
                    advice: str = WEIGHTS_ADVICE) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a checkpoint and the plain values saved beside them; WeightsError on any problem (ending in
    ``advice`` where the file is missing or not weights at all).

    A .safetensors file is rtseg weights: its manifest (of format ``fmt``) is the extras, and the file's
    sha256 is checked against it (:func:`read_manifest`) before the tensors are parsed, so that a damaged
    file is reported as such. Other files are .pth files, loaded with ``weights_only=True``
    (:func:`load_torch_file`): an rtseg training checkpoint (a dict whose ``model`` is the state dict) gives
    its model's tensors and the extras it was written with (``step``, ``config``, ``class_names``, and a YOLACT
    run's trained on a COCO file ``meta.category_ids``, as in a manifest; older checkpoints lack it); other
    files give ``{}`` as extras. Either is read without ever waiting: a FIFO or device is refused unread.
    Weights that are not all finite (NaN or infinity: a damaged file or a diverged run) are refused
    (:func:`check_finite`).
    """
    p = Path(path)
    if p.suffix == ".json" and p.with_suffix(".safetensors").is_file():
        raise WeightsError(f"{p} is the manifest; pass the weights beside it: {p.with_suffix('.safetensors')}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        data = read_user_file(p, advice)
        manifest = read_manifest(p, hashlib.sha256(data).hexdigest(), fmt)
        try:
            state = dict(sorted(load(data).items()))  # by name, as safe_open gives them (load's order varies)
        except (SafetensorError, ValueError) as e:
            raise WeightsError(f"{p}: not a readable safetensors file ({first_line(e)}); re-export or re-download it") from None
        return check_finite(state, p), manifest
    obj = load_torch_file(p, advice=advice, corrupt_advice="download it again")
    extras: dict[str, Any] = {}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):  # rtseg training checkpoint
        extras = {k: v for k, v in obj.items() if k in ("step", "config", "class_names", "meta")}
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = _wrapped_state_dict(obj)
        where = f"; its tensors are under its {inner!r} key: save that alone (torch.save(ckpt[{inner!r}], path))" \
            if inner is not None else f"; {advice}"
        raise WeightsError(f"{p}: not a state dict of tensors (found {type(obj).__name__}){where}")
    return check_finite(obj, p), extras


def _wrapped_state_dict(obj: Any) -> str | None:
    """The key of a training script's checkpoint dict (``{"state_dict": …, "epoch": 3}``) whose value is a state
    dict of tensors, for the error's hint; None when there is none."""
    if not isinstance(obj, dict):
        return None
    return next((k for k, v in obj.items() if isinstance(k, str) and isinstance(v, dict) and v
                 and all(isinstance(t, torch.Tensor) for t in v.values())), None)


def non_finite_counts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """How many NaN or infinite values each floating-point tensor of ``state`` that holds any has, in ``state``'s
    order. Cheap: one sum per tensor (a NaN or infinity makes it non-finite; only such tensors, or sums that
    overflowed, are counted element by element)."""
    floats = {k: t for k, t in state.items() if t.is_floating_point()}
    suspect = [k for k, t in floats.items() if not torch.isfinite(t.sum())]
    return {k: n for k in suspect if (n := int(floats[k].numel() - torch.isfinite(floats[k]).sum()))}


def check_finite(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` when all its floating-point values are finite, else WeightsError naming ``path``, how many are not
    and the first tensor holding one (:func:`non_finite_counts`)."""
    bad = non_finite_counts(state)
    if bad:
        total = sum(t.numel() for t in state.values() if t.is_floating_point())
        raise WeightsError(f"{path}: {sum(bad.values())} of its {total} weights are NaN or infinite (first in "
                           f"{next(iter(bad))}); the file is damaged or its training diverged: use an earlier "
                           f"checkpoint or re-export the weights")
    return state


def _clean_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop keys the official loader drops: old ``backbone.layerN`` names, surplus FPN downsample layers; and
    the ``module.`` prefix every key of a model saved from ``nn.DataParallel`` carries."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        if k.startswith("backbone.layer") and not k.startswith("backbone.layers"):
            continue
        m = re.match(r"fpn\.downsample_layers\.(\d+)\.", k)
        if m and int(m.group(1)) >= 2:
            continue
        out[k] = v
    return out


def infer_config(state: dict[str, torch.Tensor], *, input_size: int, source: str) -> YolactConfig:
    """The YolactConfig an official state dict was trained with (backbone, classes, k, width)."""
    if any("conv_offset_mask" in k for k in state) or any(k.startswith("maskiou_net") for k in state):
        raise WeightsError(f"{source}: a YOLACT++ (DCN / mask re-scoring) checkpoint; YOLACT++ is not supported yet")
    needed = ("prediction_layers.0.conf_layer.weight", "prediction_layers.0.mask_layer.weight", "fpn.lat_layers.0.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise WeightsError(f"{source}: not a YOLACT checkpoint (missing {', '.join(missing)})"
                           + _other_network(state, source))
    if "backbone._preconv.0.weight" in state:
        backbone = "darknet53"
    else:
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.layers\.2\.(\d+)\.", k))}
        basic = "backbone.layers.0.0.conv3.weight" not in state
        depth = len(blocks)
        backbone = {(23, False): "resnet101", (6, False): "resnet50", (2, True): "resnet18"}.get((depth, basic))
        if backbone is None:
            raise WeightsError(f"{source}: unsupported backbone (stage 3 has {depth} blocks); expected ResNet-101/50/18 or DarkNet-53")
    base = PRESETS["yolact_base"]
    anchors = base.num_anchors
    conf_out = state["prediction_layers.0.conf_layer.weight"].shape[0]
    if conf_out % anchors:
        raise WeightsError(f"{source}: conf_layer has {conf_out} outputs, not a multiple of {anchors} anchors")
    try:
        cfg = YolactConfig(
            backbone=backbone,
            num_classes=conf_out // anchors - 1,
            fpn_channels=state["fpn.lat_layers.0.weight"].shape[0],
            num_prototypes=state["prediction_layers.0.mask_layer.weight"].shape[0] // anchors,
        )
    except ConfigError as e:  # layers of sizes no YOLACT has (e.g. a head for 0 classes)
        raise WeightsError(f"{source}: not a usable YOLACT checkpoint ({e})") from None
    return cfg.with_input_size(input_size)


def _other_network(state: dict[str, torch.Tensor], source: str) -> str:
    """The end of :func:`infer_config`'s error where ``state`` holds rtseg's FCN or MS R-CNN network (by its keys:
    an FCN / MS R-CNN trainer's ``checkpoint.pth``): what to give instead; "" for other tensors."""
    engine = "fcn" if "score_fr.weight" in state else "msrcnn" if any(k.startswith("rcnn.") for k in state) else None
    if engine is None:
        return ""
    exported = _exported_weights(Path(source))
    give = f"the weights that run wrote, {exported}" if exported is not None else (
        "the .safetensors that run writes when it finishes (--resume it if it was stopped)")
    return f"; it holds an rtseg {engine} network (a training checkpoint?): give {give}, whose manifest names the " \
        "engine"


def _exported_weights(checkpoint: Path) -> Path | None:
    """The .safetensors an FCN / MS R-CNN training run whose ``checkpoint`` this is exported: ``M.safetensors``
    beside its ``M.train/checkpoint.pth``; None where there is no such file."""
    folder = checkpoint.parent
    exported = folder.with_suffix(".safetensors") if folder.suffix == ".train" else None
    return exported if exported is not None and exported.is_file() else None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
              advice: str = "they were made for another model; give weights of this one") -> None:
    """Strictly load ``state`` into ``model``; WeightsError naming missing / unexpected / mis-shaped keys, then
    ``advice`` (what to do)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped {few(shaped)}")
    if problems:
        raise WeightsError(f"{source}: does not match the expected architecture: " + "; ".join(problems) +
                           f"; {advice}")
    model.load_state_dict(state)


class YolactWeights(NamedTuple):
    """What :func:`read_yolact` read, before any network is built: the tensors (official files: without the keys
    the official loader drops), the config they fit (:attr:`YolactConfig.num_classes`: how many classes they
    detect), their class names (None when the checkpoint does not name them: official COCO files), the COCO
    category ids of those classes (rtseg weights trained on a COCO file carry them in the manifest's
    ``meta.category_ids``; else None) and the file they came from."""
    state: dict[str, torch.Tensor]
    config: YolactConfig
    class_names: list[str] | None
    category_ids: tuple[int, ...] | None
    source: Path


class LoadedYolact(NamedTuple):
    """What :func:`load_yolact` read: the model (eval mode), its config, its class names and category ids (as
    :class:`YolactWeights`'s)."""
    model: Yolact
    config: YolactConfig
    class_names: list[str] | None
    category_ids: tuple[int, ...] | None


def read_yolact(path: str | Path, *, input_size: int | None = None) -> YolactWeights:
    """The tensors and config of an official .pth, an rtseg safetensors file or an rtseg training
    ``checkpoint.pth`` (its saved config, class names and category ids, like a manifest's), without building the
    network (:func:`build_yolact` does): an engine checks its options against the config first.

    input_size: None → the saved size (rtseg files), 700 for official files whose name
    contains "im700", else 550.
    """
    p = Path(path)
    state, extras = read_checkpoint(p)
    names: list[str] | None = None
    category_ids: tuple[int, ...] | None = None
    if p.suffix == ".safetensors" or "config" in extras:  # rtseg weights (extras: the manifest), or an rtseg
        # training checkpoint
        source = manifest_path(p) if p.suffix == ".safetensors" else p
        cfg, names = manifest_config(extras, YolactConfig, source=source)
        category_ids = _category_ids(extras, len(names), source=source)
        if input_size is not None and input_size != cfg.input_size:
            cfg = cfg.with_input_size(input_size)
    else:
        state = _clean_official(state)
        size = input_size or (700 if "im700" in p.name else 550)
        cfg = infer_config(state, input_size=size, source=str(p))
    return YolactWeights(state, cfg, names, category_ids, p)


def build_yolact(weights: YolactWeights) -> LoadedYolact:
    """The network of what :func:`read_yolact` read, its tensors loaded (:func:`load_into`), in eval mode."""
    model = Yolact(weights.config)
    load_into(model, weights.state, str(weights.source))
    return LoadedYolact(model.eval(), weights.config, weights.class_names, weights.category_ids)


def load_yolact(path: str | Path, *, input_size: int | None = None) -> LoadedYolact:
    """Build and load a YOLACT from an official .pth, an rtseg safetensors file or an rtseg
    training ``checkpoint.pth`` (:func:`read_yolact`, then :func:`build_yolact`; ``input_size`` as there)."""
    return build_yolact(read_yolact(path, input_size=input_size))


def config_from_dict(saved: Any, config_type: type[T]) -> T:
    """A ``config_type`` dataclass from a manifest's JSON ``config`` object: every field a key (rtseg writes them
    all; a default in a missing field's place would run another model without a word: a YOLACT manifest without
    ``scales`` ran 550-pixel anchors at 384, boxes 43 % too large), every value of the field's type (JSON lists
    become tuples).

    ValueError naming the first problem; ConfigError from the config's own checks.
    """
    if not isinstance(saved, dict):
        raise ValueError("no config object" if saved is None else f"config is a {type(saved).__name__}, not an object")
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in fields(config_type)]  # type: ignore[arg-type]
    unknown = sorted(set(saved) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}")
    values = {k: _typed(k, v, hints[k]) for k, v in saved.items()}
    missing = [name for name in names if name not in saved]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    return config_type(**values)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` when it is of type ``hint`` (bool, int, float, str or tuple[T, ...] given as a list), else ValueError."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return tuple(_typed(key, v, typing.get_args(hint)[0]) for v in value)
    kind = {int: numbers.Integral, float: numbers.Real}.get(hint, hint)
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, kind):
        raise ValueError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def read_manifest(weights: Path, digest: str, fmt: str = MANIFEST_FORMAT) -> dict[str, Any]:
    """The manifest beside rtseg weights whose bytes have the sha256 ``digest``: a file (read by
    :func:`read_user_file`) of valid JSON, of format ``fmt``, holding that sha256."""
    mp = manifest_path(weights)
    text = read_user_file(mp, "re-export the weights",
                          missing=f"{weights}: manifest {mp.name} not found beside it (rtseg weights come as "
                                  ".safetensors + .json)")
    try:
        man = json.loads(text.decode("utf-8-sig"))  # a hand-edited manifest may start with a BOM
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and json.JSONDecodeError too
        raise WeightsError(f"{mp}: manifest is {json_problem(e)}; re-export the weights") from None
    if not isinstance(man, dict):
        raise WeightsError(f"{mp}: manifest is a JSON {type(man).__name__}, not an object; re-export the weights")
    found = man.get("format")
    if found is None:
        raise WeightsError(f"{mp}: the manifest has no format (expected {fmt!r}); re-export the weights")
    if found != fmt:
        family = isinstance(found, str) and found.split("/")[0] == fmt.split("/")[0]
        raise WeightsError(f"{weights}: manifest format is {found!r}, expected {fmt!r}; "
                           + ("another version of rtseg wrote it: use that version, or re-export the weights with "
                              "this one" if family else "load it with the engine it was trained for"))
    if "sha256" not in man:
        raise WeightsError(f"{mp}: the manifest has no sha256 of the weights; re-export them")
    if not isinstance(man["sha256"], str) or man["sha256"].lower() != digest:  # (hex digits in either case)
        raise WeightsError(f"{weights}: sha256 {digest[:12]}… does not match its manifest; the file is corrupt or was replaced")
    return man


def _category_ids(saved: dict[str, Any], classes: int, *, source: str | Path) -> tuple[int, ...] | None:
    """A manifest's ``meta.category_ids``: one distinct COCO category id (int) per class of the ``classes``; None
    when it gives none. WeightsError naming ``source`` for any other value (a list of another length was ignored,
    repeated ids put several classes under one id in COCO results)."""
    meta = saved.get("meta")
    if not isinstance(meta, dict) or meta.get("category_ids") is None:
        return None
    ids = meta["category_ids"]
    if (not isinstance(ids, list) or len(ids) != classes
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids)):
        shown = repr(ids) if len(repr(ids)) <= 80 else repr(ids)[:77] + "..."
        raise WeightsError(f"{source}: its meta.category_ids must be {classes} distinct integers, one per class, "
                           f"got {shown}; re-export the weights")
    return tuple(ids)


def manifest_config(saved: dict[str, Any], config_type: type[T], *, source: str | Path) -> tuple[T, list[str]]:
    """(config, class names) of a manifest or training checkpoint: a valid ``config_type`` (:func:`config_from_dict`)
    and one name (str) per class; WeightsError naming ``source`` otherwise."""
    try:
        cfg = config_from_dict(saved.get("config"), config_type)
    except (ConfigError, ValueError) as e:
        raise WeightsError(f"{source}: its config is invalid ({first_line(e)}); re-export the weights") from None
    names = saved.get("class_names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{source}: its class_names must be a list of strings; re-export the weights")
    bad = ambiguous_class_name(names)
    if bad is not None:
        raise WeightsError(f"{source}: its class_names must be distinct, non-empty names of one line each, got "
                           f"{bad!r}; re-export the weights")
    num_classes = getattr(cfg, "num_classes")
    if len(names) != num_classes:
        raise WeightsError(f"{source}: {len(names)} class names for a model with {num_classes} classes "
                           f"(its config); re-export the weights")
    return cfg, list(names)


def load_model(path: str | Path, fmt: str, config_type: type[T]) -> tuple[dict[str, torch.Tensor], T, list[str]]:
    """(state dict, config, class names) of rtseg weights (FCN, MS R-CNN) whose manifest has format ``fmt``
    and a matching sha256; WeightsError for a training checkpoint or other .pth file, a missing or foreign
    manifest, or a manifest whose config does not build a ``config_type`` or whose class names do not fit it."""
    from rtseg.engines.options import check_weights_path

    engine = fmt.split("/")[0].removeprefix("rtseg-")
    p = Path(check_weights_path(engine, path))
    advice = f"give the .safetensors an rtseg {engine} training run wrote"
    state, extras = read_checkpoint(p, fmt, advice)
    if p.suffix != ".safetensors":
        exported = _exported_weights(p) if "step" in extras and "config" not in extras else None
        if exported is not None:
            raise WeightsError(f"{p} is a training checkpoint (no config/class names in it), not weights: pass the "
                               f".safetensors the run wrote, {exported}")
        if "step" in extras and "config" not in extras:
            raise WeightsError(f"{p} is a training checkpoint of an unfinished run (no config/class names in it): "
                               f"finish the run with --resume to export the .safetensors, or pass the .safetensors "
                               f"it wrote")
        raise WeightsError(f"{p}: not rtseg {engine} weights (those are a .safetensors file with a .json manifest "
                           f"beside it); {advice}")
    cfg, names = manifest_config(extras, config_type, source=manifest_path(p))
    return state, cfg, names


def exportable_state(model: nn.Module, path: Path, *, half: bool = False) -> dict[str, torch.Tensor]:
    """``model``'s state on the CPU (its floating-point tensors as float16 when ``half``), or WeightsError saying
    why ``path`` is not written: a NaN or infinite weight (a diverged run), or one too large for float16."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = non_finite_counts(state)
    if bad:
        key = next(iter(bad))
        raise WeightsError(f"{path} not written: the model has {sum(bad.values())} NaN or infinite weights (first in "
                           f"{key}), its training diverged; train again with a lower learning rate or export an "
                           f"earlier checkpoint")
    if not half:
        return state
    halved = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    overflow = non_finite_counts(halved)  # finite before, so each infinity is a value beyond float16's range
    if overflow:
        key = next(iter(overflow))
        value = state[key].flatten()[state[key].abs().argmax()].item()
        raise WeightsError(f"{path} not written: {key} holds {value:.6g}, which overflows "
                           f"float16 (largest {torch.finfo(torch.float16).max:.0f}); export in float32 (without "
                           f"half / --half)")
    return halved


def save_model(path: str | Path, model: nn.Module, fmt: str, config: dict[str, Any], class_names: Sequence[str],
               meta: dict[str, Any] | None = None, *, half: bool = False) -> Path:
    """Write ``model``'s state as safetensors plus a JSON manifest {format, config, class_names, sha256, meta}.

    half: store its floating-point tensors as float16 (half the file; loading casts them back to float32).
    A model with a NaN or infinite weight, or (``half``) one beyond float16's range, is a WeightsError before
    anything is written (:func:`exportable_state`). Atomic: both files are written to ``.tmp`` files first and
    renamed once complete, so an interrupted or failed export leaves the previous pair as it was (and no partial
    files beside it); a failed write (a full disk) is a SinkError naming the file.
    """
    from safetensors.torch import save

    p = Path(path)
    if p.suffix != ".safetensors":
        raise WeightsError(f"{p}: rtseg weights must end in .safetensors")
    state = exportable_state(model, p, half=half)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp, man_tmp = p.with_name(p.name + ".tmp"), manifest_path(p).with_name(manifest_path(p).name + ".tmp")
    try:
        tmp.write_bytes(save(state))  # (save_file would create it readable by its owner only)
        manifest = {"format": fmt, "config": config, "class_names": list(class_names), "sha256": sha256_file(tmp),
                    **({"meta": meta} if meta else {})}
        man_tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        man_tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SinkError(f"{p}: write failed ({exc.strerror or exc}); free space or choose another path") from None
        raise
    tmp.replace(p)
    man_tmp.replace(manifest_path(p))
    return p


def save_yolact(path: str | Path, model: Yolact, class_names: Sequence[str], meta: dict[str, Any] | None = None, *,
                half: bool = False) -> Path:
    """Write ``model`` as safetensors plus a JSON manifest (config, classes, sha256, ``meta``; float16 tensors when
    ``half``; :func:`save_model`)."""
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.cfg.num_classes} classes")
    return save_model(path, model, MANIFEST_FORMAT, asdict(model.cfg), class_names, meta, half=half)
