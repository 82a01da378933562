"""`segshards preview`: a contact sheet PNG of the expected size, masks visible in colour."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from segshards.writer.cli.main import main
from tests.mnist_fixtures import SMALL, build_once, error_lines

CELL = 112  # pixels per contact-sheet cell
COLUMNS = 8


@pytest.mark.parametrize(
    ("recipe", "args", "rows", "says"),
    [
        ("mnist-grid", ["--count", "10"], 2, "10 train samples"),
        ("mnist-circle", [], 8, "64 train samples"),  # default: 64 samples
        ("mnist-foreground", ["--split", "val", "--count", "8"], 1, "8 val samples"),
        (
            "mnist-grid",
            ["--split", "test", "--count", "100"],
            8,
            "60 test samples (the test split holds only 60)",
        ),
    ],
)
def test_preview_writes_a_sheet_of_the_expected_size(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    args: list[str],
    rows: int,
    says: str,
) -> None:
    folder = build_once(tmp_path_factory, recipe, *SMALL)
    capsys.readouterr()
    output = tmp_path / "sheet.png"
    assert main(["preview", str(folder), "-o", str(output), *args]) == 0
    assert capsys.readouterr().out == f"wrote {output}: {says}\n"
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


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], naming: str) -> None:
    assert main(argv) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("segshards: error: ") and naming in lines[0], lines


@pytest.mark.parametrize(("count", "naming"), [("0", "--count 0: must be at least 1"), ("-3", "--count -3")])
def test_preview_refuses_a_count_below_one(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], count: str,
    naming: str,
) -> None:  # fmt: skip
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    refused(capsys, ["preview", str(folder), "-o", str(tmp_path / "sheet.png"), "--count", count], naming)
    assert list(tmp_path.iterdir()) == []


def test_preview_refuses_an_empty_split(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", "--train", "20", "--val", "0", "--test", "10")
    capsys.readouterr()
    refused(
        capsys,
        ["preview", str(folder), "-o", str(tmp_path / "sheet.png"), "--split", "val"],
        f"--split val: holds no samples in {folder} (samples in: train, test)",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["sheet.gif", "sheet", "sheet.webp"])
def test_preview_refuses_an_extension_it_cannot_write(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    refused(
        capsys, ["preview", str(folder), "-o", str(tmp_path / "new" / name)], f"-o {tmp_path / 'new' / name}"
    )
    assert list(tmp_path.iterdir()) == []  # no folder made for it either


@pytest.mark.parametrize("name", ["sheet.jpg", "sheet.JPEG"])
def test_preview_writes_jpeg_for_jpg(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    output = tmp_path / name
    assert main(["preview", str(folder), "-o", str(output), "--count", "8"]) == 0
    data = output.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes under a .jpg name
    sheet = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape == (CELL, COLUMNS * CELL, 3)


def test_preview_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["preview", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "folder set folder (holding manifest.json)",
        ".png, or .jpg/.jpeg for JPEG (default: preview.png)",
        "--split SPLIT split to draw from (default: train)",
        "--count N samples to draw, at least 1 (default: 64)",
    ):
        assert phrase in text


def test_preview_makes_the_output_folder(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    assert main(["preview", str(folder), "-o", str(tmp_path / "a" / "b" / "sheet.png"), "--count", "1"]) == 0
    assert (tmp_path / "a" / "b" / "sheet.png").is_file()
    refused(capsys, ["preview", str(folder), "-o", str(tmp_path / "c" / "d.png"), "--split", "x"], "'x'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
