"""``--data`` / ``--val-data`` of ``rtseg train`` and ``rtseg eval``: ``synthetic[:SPLIT]``,
``coco:ANNOTATIONS.json:IMAGE_DIR`` or ``labelme:FOLDER``, parsed in one place."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from rtseg.errors import ConfigError

FORMS = "synthetic[:SPLIT], coco:ANNOTATIONS.json:IMAGE_DIR or labelme:FOLDER"


class DataSpec(NamedTuple):
    """A parsed data spec: kind ``synthetic`` (``split``: the one named, else None: the command's default),
    ``coco`` (``path``: the annotation file, ``images``: their folder) or ``labelme`` (``path``: the folder of .json
    files and images)."""

    kind: str
    path: Path | None = None
    images: Path | None = None
    split: str | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files and folders the data set reads (none for synthetic data)."""
        return tuple(p for p in (self.path, self.images) if p is not None)


def parse_data(spec: str, option: str = "--data") -> DataSpec:
    """``spec`` as a :class:`DataSpec`; a ConfigError naming ``option`` for any other form (an empty part after
    a colon included), or a labelme FOLDER that is a file. (A synthetic split name is checked when the data set is
    made.)"""
    kind, sep, rest = spec.partition(":")
    if kind == "synthetic":
        if sep and not rest:  # "synthetic:$SPLIT" with SPLIT unset: was the command's default split, unnoticed
            raise ConfigError(f"{option} {spec!r}: use synthetic or synthetic:SPLIT (train, val or test)")
        return DataSpec(kind, split=rest if sep else None)
    if kind == "coco":
        return DataSpec(kind, *_coco_paths(spec, rest, option))
    if kind == "labelme":
        if not rest:
            raise ConfigError(f"{option} {spec!r}: use labelme:FOLDER")
        if os.path.isfile(rest):
            raise ConfigError(f"{option} {spec!r}: {rest} is a file, not a folder; give the folder that holds the "
                              "labelme .json files and their images (labelme:FOLDER)")
        return DataSpec(kind, Path(rest))
    raise ConfigError(f"{option} {spec!r}: unknown kind {kind!r}; expected {FORMS}")


MAX_COCO_COLONS = 64
"""Colons a ``coco:`` spec's paths may hold, at most (the one that ends the annotation file among them)."""


def _coco_paths(spec: str, rest: str, option: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``coco:ANNOTATIONS.json:IMAGE_DIR`` (``rest``: the text after
    ``coco:``), whose paths may hold colons themselves (``2024-01-01T10:00/``). Of the colons that leave both
    parts non-empty, those after an existing file are kept when there are any, then of these those after a name
    ending ``.json`` when there are any, then those before an existing folder when there are any; a ConfigError
    naming ``option`` unless one colon remains (or when there are over :data:`MAX_COCO_COLONS` to choose from)."""
    colons = [i for i in range(1, len(rest) - 1) if rest[i] == ":"]
    if len(colons) > MAX_COCO_COLONS:  # (each split is two paths: quadratic in the spec's length)
        raise ConfigError(f"{option} coco:…: {len(colons)} ':' in its paths, more than {MAX_COCO_COLONS}; give "
                          "paths without ':' (e.g. relative to the current folder)")
    splits = [(Path(rest[:i]), Path(rest[i + 1:])) for i in colons]
    if not splits:
        raise ConfigError(f"{option} {spec!r}: use coco:ANNOTATIONS.json:IMAGE_DIR")
    for likely in (lambda ann, _: os.path.isfile(ann), lambda ann, _: ann.name.lower().endswith(".json"),
                   lambda _, images: os.path.isdir(images)):  # (os.path: False for a name too long to look up)
        splits = [s for s in splits if likely(*s)] or splits
    if len(splits) > 1:
        raise ConfigError(f"{option} {spec!r}: cannot tell which ':' ends the annotation file (it could be "
                          f"{' or '.join(str(ann) for ann, _ in splits[:3])}{' or …' * (len(splits) > 3)}); give an "
                          "existing ANNOTATIONS.json file, "
                          "or paths without ':' (e.g. relative to the current folder)")
    return splits[0]
