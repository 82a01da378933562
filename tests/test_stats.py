"""`segshards stats`: per-split class statistics counted by hand on index masks, instances per image from
coco-semantic's JSON checked against the annotation file, the PNG charts, and bad input (exit 2, one line)."""

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from segshards.writer.cli.main import main
from segshards.writer.share.stats import AREA_BINS
from tests.mnist_fixtures import error_lines

COCO_TINY = next(
    (
        p / "shared/data/coco-tiny"
        for p in Path(__file__).resolve().parents
        if (p / "shared/data/coco-tiny").is_dir()
    ),
    None,
)
H, W = 20, 40


def masks() -> dict[str, tuple[str, np.ndarray]]:
    """stem -> (split, mask): train holds an empty mask, one half class 1, one with a quarter of 1 and of
    2 (and 5 pixels of 255, ignore); val holds one mask of class 2 over 3%."""
    half = np.zeros((H, W), np.uint8)
    half[:, : W // 2] = 1
    quarters = np.zeros((H, W), np.uint8)
    quarters[: H // 2, : W // 2] = 1
    quarters[H // 2 :, W // 2 :] = 2
    quarters[0, W - 5 :] = 255
    small = np.zeros((H, W), np.uint8)
    small[:4, :6] = 2  # 24 of 800 pixels: 3%
    return {
        "a": ("train", np.zeros((H, W), np.uint8)),
        "b": ("train", half),
        "c": ("train", quarters),
        "d": ("val", small),
    }


@pytest.fixture(scope="module")
def index_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stats")
    for folder in ("images", "masks", "lists"):
        (root / folder).mkdir()
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {}
    for stem, (split, mask) in masks().items():
        assert cv2.imwrite(
            str(root / "images" / f"{stem}.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        )
        assert cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
        lists.setdefault(split, []).append(stem)
    for split, stems in lists.items():
        (root / "lists" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    out = root / "set"
    args = [
        "--images",
        str(root / "images"),
        "--masks",
        str(root / "masks"),
        "--split-lists",
        str(root / "lists"),
    ]
    assert main(["build", "mask-folder", "--out", str(out), *args, "--jobs", "1"]) == 0
    return out


def stats(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["stats", *argv]) == 0
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    return captured.out


def test_counts_by_hand(index_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = stats(
        capsys,
        str(index_set),
        "-o",
        str(tmp_path / "s.png"),
        "--json",
        str(tmp_path / "s.json"),
        "--jobs",
        "1",
    )
    report = json.loads((tmp_path / "s.json").read_text())
    train, val = report["splits"]["train"], report["splits"]["val"]
    assert (train["images"], val["images"], report["splits"]["test"]["images"]) == (3, 1, 0)
    by_value = {c["value"]: c for c in train["classes"].values()}
    pixels = 3 * H * W
    assert {v: c["images"] for v, c in by_value.items()} == {0: 3, 1: 2, 2: 1, 255: 1}
    quarter = H * W // 4
    expected = {0: H * W + H * W // 2 + 2 * quarter - 5, 1: H * W // 2 + quarter, 2: quarter, 255: 5}
    assert {v: round(c["pixel_share"] * pixels) for v, c in by_value.items()} == expected
    # class 1 covers 50% of b (bin [0.5, 0.7)) and 25% of c (bin [0.2, 0.3))
    hist = by_value[1]["area_share_histogram"]
    assert (
        hist[int(np.digitize(0.5, AREA_BINS)) - 1] == 1 and hist[int(np.digitize(0.25, AREA_BINS)) - 1] == 1
    )
    assert sum(hist) == 2
    assert val["classes"]["2"]["area_share_histogram"][2] == 1  # 3%: the bin [2%, 5%)
    assert train["instances_per_image"] is None  # mask-folder's JSON counts no instances
    assert out.splitlines()[1:7] == [
        "  train: 3 images",
        "    0                     66.46% of pixels, in 100.0% of images",
        "    1                     25.00% of pixels, in  66.7% of images",
        "    2                      8.33% of pixels, in  33.3% of images",
        "    ignore                 0.21% of pixels, in  33.3% of images",
        "  val: 1 image",
    ]
    chart = cv2.imread(str(tmp_path / "s.png"))
    assert chart is not None and chart.shape[1] == 12 * 90


@pytest.mark.skipif(COCO_TINY is None, reason="coco-tiny not found")
def test_coco_instances_per_image_match_the_annotations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert COCO_TINY is not None
    out = tmp_path / "coco"
    source = ["--annotations", str(COCO_TINY / "instances.json"), "--images", str(COCO_TINY / "images")]
    assert (
        main(
            [
                "build",
                "coco-semantic",
                "--out",
                str(out),
                *source,
                "--train",
                "16",
                "--val",
                "0",
                "--test",
                "0",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    stats(
        capsys,
        str(out),
        "-o",
        str(tmp_path / "c.png"),
        "--json",
        str(tmp_path / "c.json"),
        "--split",
        "train",
    )
    report = json.loads((tmp_path / "c.json").read_text())
    assert list(report["splits"]) == ["train"]
    histogram = report["splits"]["train"]["instances_per_image"]
    data = json.loads((COCO_TINY / "instances.json").read_text())
    per_image = Counter(a["image_id"] for a in data["annotations"])
    expected = Counter(min(per_image.get(r["id"], 0), 50) for r in data["images"])
    assert {n: c for n, c in enumerate(histogram) if c} == dict(expected)
    persons = report["splits"]["train"]["classes"]["person"]
    with_person = {a["image_id"] for a in data["annotations"] if a["category_id"] == 1}
    assert persons["images"] == len(with_person)


# ---- bad input: one line, exit 2 --------------------------------------------------------------------


def one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["stats", *argv]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


def test_not_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, str(tmp_path), "-o", str(tmp_path / "s.png"))
    assert line == f"segshards: error: {tmp_path}/manifest.json: no manifest (not a finished segshards set)"
    assert not (tmp_path / "s.png").exists()


def test_a_missing_split_and_a_chart_that_is_not_png(
    index_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error(capsys, str(index_set), "--split", "validation", "-o", str(tmp_path / "s.png"))
    assert line == f"segshards: error: {index_set}: no split 'validation' (it has train, val, test)"
    line = one_error(capsys, str(index_set), "-o", str(tmp_path / "s.jpg"))
    assert line == f"segshards: error: -o {tmp_path / 's.jpg'}: must name a .png file"


def test_a_damaged_mask_is_counted(
    index_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(index_set, damaged)
    tar = damaged / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    start = data.find(b"IDAT", data.find(b".mask.png"))
    data[start + 8 : start + 40] = bytes(32)
    tar.write_bytes(bytes(data))
    argv = [str(damaged), "-o", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json"), "--jobs", "1"]
    assert main(["stats", *argv]) == 2  # the figures are written, but they cover less than the set
    assert error_lines(capsys.readouterr().err) == [
        f"segshards: error: 1 image could not be read, so this covers less than the set; "
        f"`segshards verify {damaged}` names the damage"
    ]
    assert (tmp_path / "s.png").is_file()
    val = json.loads((tmp_path / "s.json").read_text())["splits"]["val"]
    assert (val["images"], val["unreadable"], len(val["problems"])) == (0, 1, 1)
    assert val["problems"][0].startswith(f"{tar}:")
