"""``rtseg.outputs``: the one rule for "is this output an input" (``rtseg``, ``rtseg eval``, ``rtseg train``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from rtseg.errors import ConfigError
from rtseg.outputs import check_outputs_are_not_inputs, same_file


def test_same_file_follows_hard_links_symbolic_links_and_spellings(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("{}")
    b.write_text("{}")  # equal contents, another file
    os.link(a, tmp_path / "hard.json")
    (tmp_path / "soft.json").symlink_to(a)
    (tmp_path / "sub").mkdir()
    assert same_file(a, tmp_path / "hard.json") and same_file(tmp_path / "soft.json", a)
    assert same_file(str(a), tmp_path / "sub" / ".." / "a.json") and same_file(tmp_path / "sub", tmp_path / "sub/")
    assert not same_file(a, b) and not same_file(tmp_path, tmp_path / "sub")


def test_same_file_of_missing_names_and_names_that_cannot_be_looked_up(tmp_path: Path) -> None:
    """A missing name is the same file as itself (an output not written yet, spelt two ways) and no other; a name
    too long to look up, or a loop of symbolic links, is no file (was: RuntimeError from ``Path.resolve``)."""
    (tmp_path / "a").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    too_long = tmp_path / ("n" * 300)
    assert same_file(tmp_path / "missing", tmp_path / "." / "missing")
    assert not same_file(tmp_path / "missing", tmp_path / "a") and not same_file(tmp_path / "a", tmp_path / "missing")
    assert not same_file(too_long, tmp_path / "a") and not same_file(tmp_path / "loop", tmp_path / "a")


def test_outputs_over_inputs_hard_links_included_and_inside_input_folders(tmp_path: Path) -> None:
    """An existing output that is an input (also a hard link to it) or lies inside an input folder (by its path) is
    one ConfigError line naming the input as given; other outputs pass, a loop of symbolic links too (its sink
    reports it)."""
    weights, folder = tmp_path / "w.safetensors", tmp_path / "images"
    weights.write_bytes(b"w")
    folder.mkdir()
    os.link(weights, tmp_path / "link.json")
    (tmp_path / "loop").symlink_to("loop")
    inputs = [str(weights), str(folder), str(tmp_path / "missing.png")]
    refused = {"link.json": f"the input {weights}", "images/new.json": f"the input {folder / 'new.json'}"}
    (folder / "new.json").write_text("{}")
    for name, what in refused.items():
        line = f"--json {tmp_path / name} would overwrite {what}; choose another output path"
        with pytest.raises(ConfigError, match=f"^{re.escape(line)}$"):
            check_outputs_are_not_inputs([("--json", tmp_path / name)], inputs)
    check_outputs_are_not_inputs([("--json", tmp_path / "other.json"), ("--output", tmp_path / "loop"),
                                  ("--output", None), ("--json", tmp_path / "missing.png")], inputs)


def test_only_a_real_seq_field_writes_images_beside_the_inputs(tmp_path: Path) -> None:
    """``a{{seq}}.png`` (escaped braces: no ``{seq}`` field, refused by the image output) was taken for a
    one-image-per-frame pattern beside an input image of its folder, and refused for that; ``a{seq}.png`` is one."""
    source = tmp_path / "x.png"
    source.write_bytes(b"png")
    check_outputs_are_not_inputs([("--output", tmp_path / "a{{seq}}.png")], [str(source)])
    with pytest.raises(ConfigError, match=re.escape(f"--output {tmp_path / 'a{seq}.png'} would write its images "
                                                    f"beside the input {source}")):
        check_outputs_are_not_inputs([("--output", tmp_path / "a{seq}.png")], [str(source)])
