"""``--data`` / ``--val-data`` of ``rtseg train`` and ``rtseg eval``: ``synthetic[:SPLIT]``,
``coco:ANNOTATIONS.json:IMAGE_DIR`` or ``labelme:FOLDER``, parsed in one place."""
from __future__ import annotations

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
        ann, sep, images = rest.partition(":")
        if not sep or not ann or not images:
            raise ConfigError(f"{option} {spec!r}: use coco:ANNOTATIONS.json:IMAGE_DIR")
        return DataSpec(kind, Path(ann), Path(images))
    if kind == "labelme":
        if not rest:
            raise ConfigError(f"{option} {spec!r}: use labelme:FOLDER")
        if Path(rest).is_file():
            raise ConfigError(f"{option} {spec!r}: {rest} is a file, not a folder; give the folder that holds the "
                              "labelme .json files and their images (labelme:FOLDER)")
        return DataSpec(kind, Path(rest))
    raise ConfigError(f"{option} {spec!r}: unknown kind {kind!r}; expected {FORMS}")
