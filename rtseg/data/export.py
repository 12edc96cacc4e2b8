"""``python -m rtseg.data.export --seed 3 --out out/synthetic``: write a synthetic scene as clip.mp4, coco/ and
labelme/ (:mod:`rtseg.data.exporters`).

This module is light (no torch, PyAV or OpenCV at its top): :func:`main` imports the exporters where a Ctrl-C or a
SIGTERM during those seconds is one line (:func:`rtseg.entry.run_command`). :func:`export_mp4`,
:func:`export_coco`, :func:`export_labelme` and :func:`mask_to_polygons` are importable from here too (loaded at
their first use).
"""
from __future__ import annotations

from rtseg.entry import lazy_attributes, run_as_script, run_command

__getattr__ = lazy_attributes(__name__, dict.fromkeys(("export_mp4", "export_coco", "export_labelme",
                                                       "mask_to_polygons"), "rtseg.data.exporters"))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one error line on a user error, 130 on Ctrl-C, 143 on a SIGTERM
    while it still imports)."""
    return run_command("export", "rtseg.data.exporters:run", argv)


if __name__ == "__main__":
    run_as_script(main)
