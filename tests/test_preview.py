"""`segshards preview`: a contact sheet PNG of the expected size, masks visible in colour."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from segshards.writer.cli import main

from tests.mnist_fixtures import SMALL, build_once, error_lines

CELL = 112  # pixels per contact-sheet cell
COLUMNS = 8


@pytest.mark.parametrize(
    ("recipe", "args", "rows"),
    [
        ("mnist-grid", ["--count", "10"], 2),
        ("mnist-circle", [], 8),  # default: 64 samples
        ("mnist-foreground", ["--split", "val", "--count", "8"], 1),
    ],
)
def test_preview_writes_a_sheet_of_the_expected_size(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    args: list[str],
    rows: int,
) -> None:
    folder = build_once(tmp_path_factory, recipe, *SMALL)
    capsys.readouterr()
    output = tmp_path / "sheet.png"
    assert main(["preview", str(folder), "-o", str(output), *args]) == 0
    assert capsys.readouterr().out == f"wrote {output}\n"
    sheet = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    assert sheet is not None and sheet.shape == (rows * CELL, COLUMNS * CELL, 3) and sheet.dtype == np.uint8
    coloured = (sheet.max(axis=2).astype(int) - sheet.min(axis=2)) > 40
    assert coloured[:CELL, :CELL].any()  # the first sample's mask is tinted
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left


def test_preview_of_an_unknown_split_or_no_set(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    output = tmp_path / "sheet.png"
    assert main(["preview", str(folder), "-o", str(output), "--split", "nope"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "'nope'" in lines[0] and lines[0].startswith("segshards: error: ")
    assert main(["preview", str(tmp_path), "-o", str(output)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no manifest" in lines[0]
    assert not output.exists()
