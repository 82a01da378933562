"""`segshards preview`: a contact sheet PNG of the expected size, masks visible in colour."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segshards.writer.cli.main import main
from segshards.writer.format.palette import manifest_palette
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.share.preview import (
    BACKGROUND,
    COLUMNS,
    FRAME,
    GAP,
    LINE,
    MARGIN,
    SIZE,
    contact_sheet,
    decoded,
    legend_labels,
)
from tests.coco_fixtures import write_coco
from tests.mnist_fixtures import SMALL, build_once, error_lines

CAPTION = LINE + MARGIN // 2  # the line above the tiles


def tile_shape(size: int) -> tuple[int, int]:
    """(height, width) of one framed tile: three panels, two gaps, a one-pixel frame."""
    return size + 2, 3 * size + 2 * GAP + 2


def check_layout(sheet: np.ndarray, samples: int, size: int) -> None:
    """The sheet holds `samples` tiles, COLUMNS to a row, under a caption and above a legend."""
    th, tw = tile_shape(size)
    columns = min(COLUMNS, samples)
    rows = -(-samples // columns)
    assert sheet.shape[1] >= MARGIN + columns * (tw + MARGIN)
    legend_height = sheet.shape[0] - CAPTION - MARGIN - rows * (th + MARGIN)
    assert legend_height > MARGIN and (legend_height - MARGIN) % LINE == 0  # whole legend lines
    for r in range(rows):
        for k in range(min(columns, samples - r * columns)):
            y, x = CAPTION + MARGIN + r * (th + MARGIN), MARGIN + k * (tw + MARGIN)
            assert (sheet[y, x : x + tw] == FRAME).all() and (sheet[y + th - 1, x : x + tw] == FRAME).all()
            assert (sheet[y : y + th, x - 1] == BACKGROUND).all()  # a margin between tiles
            for g in (1 + size, 1 + 2 * size + GAP):  # the gaps between the panels
                assert (sheet[y + 1 : y + th - 1, x + g : x + g + GAP] == BACKGROUND).all()


@pytest.mark.parametrize(
    ("recipe", "args", "samples", "size", "says"),
    [
        ("mnist-grid", ["--count", "10"], 10, SIZE, "10 train samples"),
        ("mnist-circle", [], 64, SIZE, "64 train samples"),  # default: 64 samples of the train split
        ("mnist-foreground", ["--split", "val", "--count", "8", "--size", "56"], 8, 56, "8 val samples"),
        ("mnist-grid", ["--count", "1", "--size", "40"], 1, 40, "1 train sample"),
        (
            "mnist-grid",
            ["--split", "test", "--count", "100"],
            60,
            SIZE,
            "60 test samples (the test split holds only 60)",
        ),
    ],
)
def test_preview_writes_a_sheet_of_framed_tiles(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    args: list[str],
    samples: int,
    size: int,
    says: str,
) -> None:
    folder = build_once(tmp_path_factory, recipe, *SMALL)
    capsys.readouterr()
    output = tmp_path / "sheet.png"
    assert main(["preview", str(folder), "-o", str(output), *args]) == 0
    assert capsys.readouterr().out == f"wrote {output}: {says}\n"
    sheet = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    assert sheet is not None and sheet.ndim == 3 and sheet.dtype == np.uint8
    check_layout(sheet, samples, size)
    mask_panel = sheet[CAPTION + MARGIN + 1 :, MARGIN + 1 + size + GAP :][:size, :size]
    coloured = (mask_panel.max(axis=2).astype(int) - mask_panel.min(axis=2)) > 40
    assert coloured.any()  # the first sample's mask is drawn in class colours
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left


def test_each_tile_is_image_mask_and_overlay(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_once(tmp_path_factory, "mnist-foreground", *SMALL)
    capsys.readouterr()
    sheet = contact_sheet(folder, count=1, size=56)  # 28 px digits, each pixel drawn 2 x 2
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = folder / manifest["splits"]["train"]["shards"][0]["name"]
    with shard.open("rb") as f:
        first = decoded(next(iter_samples(f, str(shard))), str(shard))
    palette = manifest_palette(manifest)
    y, x = CAPTION + MARGIN + 1, MARGIN + 1
    twice = np.ones((2, 2, 1), np.uint8)
    image, mask = np.kron(first.image, twice), np.kron(palette[first.mask], twice)
    assert (sheet[y : y + 56, x : x + 56] == image).all()
    assert (sheet[y : y + 56, x + 56 + GAP : x + 112 + GAP] == mask).all()
    overlay = sheet[y : y + 56, x + 112 + 2 * GAP : x + 168 + 2 * GAP]
    assert (overlay[mask.max(axis=2) == 0] == image[mask.max(axis=2) == 0]).all()  # background untouched
    assert (overlay != image).any()  # the foreground tinted


def test_the_legend_names_the_classes_drawn_from_the_schema() -> None:
    assert legend_labels([0, 1, 5, 255], ("background", "person", "bicycle"), 255) == [
        "background (0)",
        "person (1)",
        "unnamed (5)",
        "ignore (255)",
    ]


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
    th, tw = tile_shape(SIZE)
    assert sheet.shape[1] == MARGIN + COLUMNS * (tw + MARGIN) and sheet.shape[0] > CAPTION + 2 * (th + MARGIN)


def test_preview_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["preview", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "folder set folder (holding manifest.json), s3://bucket/prefix or http(s):// URL",
        ".png, or .jpg/.jpeg for JPEG (default: preview.png)",
        "--split SPLIT split to draw from (default: train)",
        "--count N samples to draw, at least 1 (default: 64)",
        f"--size PX pixels per panel; each sample's image is scaled to fit (default: {SIZE})",
        "image | mask | overlay",
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


@pytest.mark.parametrize("size", ["8", "2000"])
def test_preview_refuses_a_size_out_of_range(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    argv = ["preview", str(folder), "-o", str(tmp_path / "sheet.png"), "--size", size]
    refused(capsys, argv, f"--size {size}: must be 16 to 1024 pixels")
    assert list(tmp_path.iterdir()) == []


def test_preview_of_photographs_letterboxes_each_into_its_panels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = write_coco(tmp_path / "src")
    out = tmp_path / "set"
    argv = ["build", "coco-semantic", *fixture.args(), "--out", str(out), "--jobs", "1"]
    assert main([*argv, "--train", "4", "--val", "2", "--test", "1"]) == 0
    capsys.readouterr()
    sheet = contact_sheet(out, split="val", size=64)  # images of several sizes and aspect ratios
    check_layout(sheet, 2, 64)
    assert main(["preview", str(out), "-o", str(tmp_path / "p.png")]) == 0
    assert (
        capsys.readouterr().out
        == f"wrote {tmp_path / 'p.png'}: 4 train samples (the train split holds only 4)\n"
    )
