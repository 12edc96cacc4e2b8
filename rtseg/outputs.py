"""Outputs never overwrite inputs: the one check of the commands that write files (``rtseg`` / ``run.py``,
``rtseg eval``), the one check of a JSON file written into a labelme folder read (``rtseg train``, ``rtseg eval``),
the one check that no command writes the shipped demo model (:data:`DEMO_WEIGHTS`, whatever it reads; the
trainers too) and the one same-file rule (:func:`same_file`, hard links included) that ``rtseg train`` uses for
its own, kept apart from the pipeline so that a command imports only this for it (neither torch nor numpy at its top)."""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Sequence

from rtseg.data.spec import parse_data
from rtseg.errors import ConfigError
from rtseg.manifest import manifest_path

DEMO_WEIGHTS = Path(__file__).resolve().parent.parent / "engines" / "yolact_demo.safetensors"
"""The shipped demo model (its manifest beside it): what ``python run.py`` runs, and ``rtseg`` / ``rtseg eval``
without ``--weights``; never an output (:func:`check_not_the_demo_model`)."""


def weights_paths(weights: str | None, semantic: str | None) -> list[str]:
    """The weights files a run is given, each with its manifest: ``weights`` and ``semantic`` (the shipped demo
    model, read without ``weights``, is never an output anyway: :func:`check_not_the_demo_model`)."""
    return [f for w in (weights, semantic) if w for f in (w, str(manifest_path(w)))]


def check_not_the_demo_model(outputs: Sequence[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """ConfigError (one line) when an output ``(option, path)`` is the shipped demo model or its manifest
    (:data:`DEMO_WEIGHTS`; :func:`same_file`: a link to one too), whatever the run reads: ``"<option> <path> would
    overwrite the shipped demo model's manifest (python run.py runs it); choose another output path"``. ``option``
    may name more than the option (``"--out m.safetensors: its manifest"``)."""
    shipped = {DEMO_WEIGHTS: "the shipped demo model", manifest_path(DEMO_WEIGHTS): "the shipped demo model's manifest"}
    for option, path in outputs:
        what = next((what for file, what in shipped.items() if path is not None and same_file(path, file)), None)
        if what is not None:
            raise ConfigError(f"{option} {path} would overwrite {what} (python run.py runs it); choose another "
                              "output path")


def check_outputs_are_not_inputs(outputs: Sequence[tuple[str, str | os.PathLike[str] | None]],
                                 inputs: Sequence[str | os.PathLike[str]]) -> None:
    """ConfigError (one line) when an output ``(option, path)`` would overwrite an input file or folder (``inputs``,
    as given; missing ones are skipped): an existing output that is an input (:func:`same_file`: also a hard link to
    it) or lies inside an input folder, or a ``{seq}`` pattern (one image per frame) that writes inside an input
    folder or beside an input file of its type. The one check of every command that writes files; the files they
    write through first need none (a ``.partial`` file is created exclusively, an image's ``.tmp`` is named by
    process). The shipped demo model is refused first, whatever ``inputs`` are (:func:`check_not_the_demo_model`)."""
    check_not_the_demo_model(outputs)
    found = {_resolved(i): str(i) for i in inputs if _exists(Path(i))}
    for option, path in outputs:
        if path is None:
            continue
        out = _resolved(path)
        overwritten = _input_at(out, found) if _exists(out) else None
        if overwritten is not None:
            raise ConfigError(f"{option} {path} would overwrite the input {overwritten}; choose another output path")
        where = _input_beside_pattern(out, found) if names_frames(path) else None
        if where is not None:
            raise ConfigError(f"{option} {path} would write its images {where}, where they could overwrite "
                              "inputs; choose another folder")


def check_not_an_image_of(option: str, path: str | os.PathLike[str] | None, images: Sequence[Path],
                          data: str) -> None:
    """ConfigError (one line) when the existing file ``path`` (``option``'s) is one of ``images``, the image files
    of the data set ``data`` (its ``image_files``: they may lie outside the folders the options name, reached through
    ``../images/a.png`` or an absolute path, where :func:`check_outputs_are_not_inputs` does not look). Compared by
    device and inode (links count); a missing output overwrites nothing, so nothing is looked up then."""
    if path is None:
        return
    try:
        out = os.stat(path)
    except (OSError, ValueError):  # missing, or a name that cannot be looked up
        return
    for image in images:
        try:
            st = os.stat(image)
        except (OSError, ValueError):
            continue
        if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            raise ConfigError(f"{option} {path} would overwrite the image {os.path.normpath(image)} of --data "
                              f"{data}; choose another output path")


def check_not_among_labelme_files(written: str | os.PathLike[str], what: str,
                                  data: Sequence[tuple[str, str | None]], advice: str) -> None:
    """ConfigError when the file ``written`` (``what`` names it in the line) is a ``*.json`` file in the folder of a
    labelme data set it reads (``data``: ``(option, --data spec or None)``), where this run or the next would read
    it as an annotation: ``"<what> would go among the labelme files of <option> <folder> (and be read as one);
    <advice>"``. The one check of the commands that write a JSON file beside what they read (``rtseg train``'s
    manifest, ``rtseg eval --json``)."""
    if not Path(written).name.endswith(".json"):  # (the labelme reader's *.json)
        return
    for option, spec in data:
        parsed = parse_data(spec, option) if spec else None
        if parsed and parsed.kind == "labelme" and same_file(Path(written).parent, parsed.path):
            raise ConfigError(f"{what} would go among the labelme files of {option} {parsed.path} (and be read as "
                              f"one); {advice}")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: the same resolved path (also when missing), or existing
    names of one file (a hard link, a bind mount); False for a name the system cannot look up (too long, ...)."""
    try:
        return _resolved(a) == _resolved(b) or os.path.samefile(a, b)
    except OSError:  # (one is missing, or cannot be looked up)
        return False


def _resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, its symbolic links followed as far as they lead (``Path.resolve`` raises
    RuntimeError at a loop of them)."""
    return Path(os.path.realpath(path))


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the system cannot look up (too long, ...)."""
    try:
        return path.exists()
    except OSError:
        return False


def _input_at(path: Path, inputs: dict[Path, str]) -> str | None:
    """The input (as given) that is ``path`` (:func:`same_file`), or the name of ``path`` inside an input folder (by
    its resolved path); None if neither."""
    for resolved, given in inputs.items():
        if same_file(path, resolved):
            return given
        if resolved.is_dir() and path.is_relative_to(resolved):
            return str(Path(given) / path.relative_to(resolved))
    return None


def names_frames(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a ``{seq}`` field (str.format syntax: ``{{seq}}`` is literal text), naming one image per
    frame; False for a name that str.format cannot parse (the image output refuses it with its own line)."""
    try:
        return any(name == "seq" for _, name, _, _ in string.Formatter().parse(str(path)))
    except ValueError:
        return False


def _input_beside_pattern(pattern: Path, inputs: dict[Path, str]) -> str | None:
    """Where the files of a ``{seq}`` pattern could replace inputs: ``"into the input folder F"`` (their folder is
    inside F) or ``"beside the input X"`` (an input file of their type in their folder); None if nowhere."""
    folder = pattern.parent
    for resolved, given in inputs.items():
        if resolved.is_dir() and folder.is_relative_to(resolved):
            return f"into the input folder {given}"
        if resolved.parent == folder and resolved.suffix.lower() == pattern.suffix.lower():
            return f"beside the input {given}"
    return None
