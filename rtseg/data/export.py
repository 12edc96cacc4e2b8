"""``python -m rtseg.data.export --seed 3 --out out/synthetic``: write a synthetic scene as clip.mp4, coco/ and
labelme/ (:mod:`rtseg.data.exporters`).

This module is light (no torch, PyAV or OpenCV at its top): :func:`main` parses and checks the options first
(:func:`parse`: ``--help`` and a mistake answer at once, before torch is imported), then imports the exporters where
a Ctrl-C or a SIGTERM during those seconds is one line (:func:`rtseg.entry.run_command`). :func:`export_mp4`,
:func:`export_coco`, :func:`export_labelme` and :func:`mask_to_polygons` are importable from here too (loaded at
their first use).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from rtseg.cliargs import Parser, check_ranges
from rtseg.entry import lazy_attributes, run_as_script, run_command
from rtseg.errors import ConfigError

__getattr__, __dir__ = lazy_attributes(globals(), dict.fromkeys(
    ("export_mp4", "export_coco", "export_labelme", "mask_to_polygons"), "rtseg.data.exporters"))
FORMATS = ("mp4", "coco", "labelme")
"""What ``--formats`` chooses from, in the order they are written."""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of ``argv`` (None: ``sys.argv[1:]``), checked before anything is written or torch imported: the
    ranges of the numbers (:data:`rtseg.data.synthetic.LEAST` / ``MOST``; that module brings numpy and OpenCV, not
    torch), ``--formats`` (a tuple of :data:`FORMATS` afterwards), an even size for the clip, and an ``--out`` that
    holds no earlier export (:func:`_check_out_is_free`)."""
    from rtseg.data.synthetic import LEAST, MOST

    p = Parser(prog="python -m rtseg.data.export", description="Export a synthetic scene.")
    p.add_argument("--seed", type=int, default=3, help="scene seed (default 3 = the test split seed)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one without an earlier export in it)")
    p.add_argument("--frames", type=int, default=300, help="frames in the clip (default: %(default)s)")
    p.add_argument("--width", type=int, default=640, help="frame width in pixels (default: %(default)s)")
    p.add_argument("--height", type=int, default=480, help="frame height in pixels (default: %(default)s)")
    p.add_argument("--every", type=int, default=10, help="annotate every N-th frame (COCO, labelme; default: %(default)s)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {','.join(FORMATS)} (default: %(default)s)")
    args = p.parse_args(argv)
    check_ranges(args, [("--seed", LEAST["seed"], None, ""), ("--frames", LEAST["num_frames"], None, ""),
                        ("--width", LEAST["width"], MOST["width"], " pixels"),
                        ("--height", LEAST["height"], MOST["height"], " pixels"),
                        ("--every", LEAST["every"], None, "")])
    chosen = set(args.formats.split(","))
    if chosen - set(FORMATS):
        raise ConfigError(f"--formats {args.formats}: choose from {', '.join(FORMATS)}")
    if "mp4" in chosen and (args.width % 2 or args.height % 2):
        raise ConfigError(f"--width {args.width} --height {args.height}: the clip (H.264 yuv420p) needs an even width "
                          "and height; give even values, or --formats coco,labelme for no clip")
    args.formats = tuple(f for f in FORMATS if f in chosen)
    _check_out_is_free(args.out, args.formats)
    return args


def _check_out_is_free(out: Path, formats: Sequence[str]) -> None:
    """ConfigError, in one line before anything is written, where ``out`` already holds what the chosen ``formats``
    write (``clip.mp4``; ``coco/`` or ``labelme/`` other than an empty folder): their frames would mix with an
    earlier export's (another scene's, read alike by ``rtseg train`` / ``rtseg eval``). Nothing is deleted: the
    files there may be the user's."""
    taken = []
    for fmt, name in (("mp4", "clip.mp4"), ("coco", "coco"), ("labelme", "labelme")):
        target = out / name
        if fmt in formats and (target.is_symlink() or target.exists()):
            try:
                empty = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
            except OSError:
                empty = False
            if not empty:
                taken.append(str(target))
    if taken:
        raise ConfigError(f"--out {out}: {', '.join(taken)} already exist{'s' if len(taken) == 1 else ''} (an earlier "
                          f"export? its files would mix with this one's); choose an empty folder or remove "
                          f"{'it' if len(taken) == 1 else 'them'} first")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one error line on a user error, 130 on Ctrl-C, 143 on a SIGTERM
    while it still imports)."""
    return run_command("export", "rtseg.data.exporters:run", parse=lambda: parse(argv))


if __name__ == "__main__":
    run_as_script(main)
