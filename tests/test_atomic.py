"""Atomic writes: complete or absent, and one OutputError naming the path on failure."""

from pathlib import Path

import pytest
from segshards.writer.atomic import atomic_write
from segshards.writer.errors import OutputError


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_below_a_file_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile"):
        atomic_write(tmp_path / "afile" / "out.json", b"{}")
