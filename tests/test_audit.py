"""`segshards audit`: duplicates within a split, leaks across splits and overlap between sets found in sets
built from real photographs (a folder, s3:// and http://), the JSON and the sheet, `--fail-on`, exact mode
for MNIST, and bad input: one line and exit 2, unreadable samples counted."""

import json
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bench.derived_photos import KINDS, coco_tiny_images, jpeg, originals
from segshards.writer.cli.main import main
from segshards.writer.format.tar_reader import iter_samples
from tests.http_server import serve_folder
from tests.mnist_fixtures import SMALL, build_once, error_lines
from tests.moto_fixture import S3, s3_fixture  # noqa: F401  (fixture)

PHOTOS = coco_tiny_images()
pytestmark = pytest.mark.skipif(PHOTOS is None, reason="coco-tiny photographs not found")
SCALE = 0.4  # 256x192-class photographs: quick to build, large enough for 0.5x copies


def photos() -> list[np.ndarray]:
    assert PHOTOS is not None
    return [
        cv2.resize(image, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)
        for _, image in originals(PHOTOS)
    ]


def copy(image: np.ndarray, kind: str, i: int) -> bytes:
    return KINDS[kind][i](image)


def build_set(root: Path, samples: dict[str, list[tuple[str, bytes]]]) -> Path:
    """A mask-folder set of these JPEGs per split (blank masks), built with --jobs 1; returns its folder."""
    images, masks, lists = root / "images", root / "masks", root / "lists"
    for folder in (images, masks, lists):
        folder.mkdir(parents=True)
    for split, named in samples.items():
        for name, data in named:
            (images / f"{name}.jpg").write_bytes(data)
            shape = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
            assert cv2.imwrite(str(masks / f"{name}.png"), np.zeros(shape, np.uint8))
        (lists / f"{split}.txt").write_text("".join(f"{name}\n" for name, _ in named))
    out = root / "set"
    args = ["--images", str(images), "--masks", str(masks), "--split-lists", str(lists), "--jobs", "1"]
    assert main(["build", "mask-folder", "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Set A: photographs 0-3 in train with a re-encode of 0 in val (a leak), a crop of 1 in train (within
    the split), a labelled copy of 2 in test (a leak), and photographs 4-7 (distinct). Set B: a resize of
    0 and a re-encode of 3 (overlap with A), and photographs 8-9."""
    p = photos()
    plain = [(f"p{i}", jpeg(p[i], 95)) for i in range(8)]
    a = build_set(
        tmp_path_factory.mktemp("a"),
        {
            "train": [*plain[:4], ("p1-crop", copy(p[1], "crop", 1)), *plain[4:]],
            "val": [("p0-q50", copy(p[0], "reencode", 2))],
            "test": [("p2-label", copy(p[2], "label", 0))],
        },
    )
    b = build_set(
        tmp_path_factory.mktemp("b"),
        {
            "train": [
                ("p0-half", copy(p[0], "resize", 0)),
                ("p3-q70", copy(p[3], "reencode", 1)),
                ("p8", jpeg(p[8])),
                ("p9", jpeg(p[9])),
            ]
        },
    )
    return a, b


def audit(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    assert main(["audit", *argv]) == code
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    return captured.out


def audit_incomplete(capsys: pytest.CaptureFixture[str], folder: Path, unread: int | None, *argv: str) -> str:
    """`audit` on a damaged set: its report printed and written, then one error line and exit 2 (with
    `--fail-on any` too: a gate must not pass on a report that covers less than the set)."""
    assert main(["audit", str(folder), "--fail-on", "any", *argv]) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert re.fullmatch(
        rf"segshards: error: {unread if unread is not None else '[0-9,]+'} images? could not be read, so this "
        rf"covers less than the set; `segshards verify {re.escape(str(folder))}` names the damage",
        line,
    ), line
    return captured.out


def names_by_key(folder: Path) -> dict[str, str]:
    """Pixel key -> source file stem, from the set's sample metadata."""
    found = {}
    for tar in sorted(folder.glob("*.tar")):
        with tar.open("rb") as f:
            found.update(
                (str(s["__key__"]), json.loads(s["json"])["stem"]) for s in iter_samples(f, str(tar))
            )
    return found


def described(
    report: dict[str, Any], stems: dict[str, str]
) -> list[tuple[list[tuple[str, str, str]], list[str]]]:
    """Each group as sorted (set, split, stem) members and its kinds."""
    return sorted(
        (sorted((m["set"], m["split"], stems[m["key"]]) for m in g["members"]), g["kinds"])
        for g in report["groups"]
    )


def normalised(groups: list[tuple[list[tuple[str, str, str]], list[str]]]) -> list[Any]:
    return sorted((sorted(members), kinds) for members, kinds in groups)


def test_groups_kinds_json_and_sheet(
    two_sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = (str(s) for s in two_sets)
    out = audit(capsys, a, b, "--json", str(tmp_path / "audit.json"), "--sheet", str(tmp_path / "sheet.png"))
    report = json.loads((tmp_path / "audit.json").read_text())
    stems = {**names_by_key(two_sets[0]), **names_by_key(two_sets[1])}
    assert described(report, stems) == normalised(
        [
            ([(a, "train", "p0"), (a, "val", "p0-q50"), (b, "train", "p0-half")], ["leak", "overlap"]),
            ([(a, "train", "p1"), (a, "train", "p1-crop")], ["within_split"]),
            ([(a, "train", "p2"), (a, "test", "p2-label")], ["leak"]),
            ([(a, "train", "p3"), (b, "train", "p3-q70")], ["overlap"]),
        ]
    )
    assert report["counts"]["leak"] == {"groups": 2, "images": 5}
    assert report["counts"]["overlap"] == {"groups": 2, "images": 5}
    assert report["counts"]["within_split"] == {"groups": 1, "images": 2}
    assert [s["images"] for s in report["sets"]] == [
        {"train": 9, "val": 1, "test": 1},
        {"train": 4, "val": 0, "test": 0},
    ]
    assert all(0 <= g["max_distance"] <= report["threshold"] == 14 for g in report["groups"])
    assert "near-duplicate groups: 4 (9 images)" in out and "leaks across splits: 2 groups (5 images)" in out
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[1] == 6 * 160 and sheet.shape[0] == 4 * (22 + 120 + 34)


@pytest.mark.parametrize(("fail_on", "code"), [("leaks", 1), ("overlap", 1), ("any", 1)])
def test_fail_on_exits_1_when_found(
    two_sets: tuple[Path, Path], capsys: pytest.CaptureFixture[str], fail_on: str, code: int
) -> None:
    audit(capsys, *map(str, two_sets), "--fail-on", fail_on, "--jobs", "1", code=code)


def test_fail_on_exits_0_when_that_kind_is_absent(
    two_sets: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    audit(capsys, str(two_sets[1]), "--fail-on", "leaks", "--jobs", "1")
    audit(capsys, str(two_sets[0]), "--fail-on", "overlap", "--jobs", "1")
    out = audit(capsys, str(two_sets[0]), "--split", "train", "--fail-on", "leaks", "--jobs", "1")
    assert "near-duplicate groups: 1 (2 images)" in out  # the crop; the leaks' other sides are not read


def test_a_set_over_http_against_one_on_s3(
    two_sets: tuple[Path, Path], s3: S3, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["publish", str(two_sets[1]), s3.url("sets/b")]) == 0
    capsys.readouterr()
    with serve_folder(two_sets[0]) as url:
        audit(
            capsys,
            url,
            s3.url("sets/b"),
            "--json",
            str(tmp_path / "r.json"),
            "--sheet",
            str(tmp_path / "s.png"),
        )
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(g["kinds"] for g in report["groups"]) == [
        ["leak"],
        ["leak", "overlap"],
        ["overlap"],
        ["within_split"],
    ]
    assert {m["set"] for g in report["groups"] for m in g["members"]} == {url, s3.url("sets/b")}
    assert [s["location"] for s in report["sets"]] == [url, s3.url("sets/b")]


def test_mnist_is_compared_by_pixel_keys_only(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    out = audit(capsys, str(grid), "--jobs", "1")
    assert "perceptual hashing is the wrong notion for these images (exact mode)" in out
    assert "near-duplicate groups: 0 (0 images)" in out and "(threshold" not in out


def test_the_same_set_twice_overlaps_exactly_in_exact_mode(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    shutil.copytree(grid, tmp_path / "copy")
    audit(capsys, str(grid), str(tmp_path / "copy"), "--json", str(tmp_path / "r.json"), "--jobs", "1")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["overlap"] == {"groups": 420, "images": 840}
    assert all(g["max_distance"] == 0 and len(g["members"]) == 2 for g in report["groups"])


# ---- bad input: one line, exit 2 --------------------------------------------------------------------


def one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["audit", *argv]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


def test_a_folder_that_is_not_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, str(tmp_path))
    assert line == f"segshards: error: {tmp_path}/manifest.json: no manifest (not a finished segshards set)"


@pytest.mark.parametrize("threshold", ["40", "-1", "many"])
def test_an_unknown_threshold(
    two_sets: tuple[Path, Path], capsys: pytest.CaptureFixture[str], threshold: str
) -> None:
    line = one_error(capsys, str(two_sets[0]), "--threshold", threshold)
    assert line.startswith(f"segshards: error: --threshold {threshold}: not a number of bits in 0..32")


def test_a_missing_split(two_sets: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, str(two_sets[1]), "--split", "validation")
    assert line == f"segshards: error: {two_sets[1]}: no split 'validation' (it has train, val, test)"


def test_a_set_given_twice(two_sets: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, str(two_sets[1]), str(two_sets[1]))
    assert line.startswith(f"segshards: error: {two_sets[1]}: given twice")


def test_damaged_samples_are_counted_and_named(
    two_sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(two_sets[0], damaged)
    tar = damaged / "train-000000.tar"
    data = bytearray(tar.read_bytes())
    start = data.find(b"\xff\xd8\xff")  # the first JPEG's bytes: a sample that no longer decodes
    data[start : start + 400] = bytes(400)
    tar.write_bytes(bytes(data))
    out = audit_incomplete(capsys, damaged, 1, "--json", str(tmp_path / "r.json"), "--jobs", "1")
    report = json.loads((tmp_path / "r.json").read_text())["sets"][0]
    assert report["unreadable"] == 1 and report["images"]["train"] == 8
    assert len(report["problems"]) == 1 and report["problems"][0].startswith(f"{tar}:")
    assert "1 unreadable" in out


def test_a_truncated_shard_counts_what_it_lost(
    two_sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "cut"
    shutil.copytree(two_sets[0], damaged)
    tar = damaged / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:4096])
    audit_incomplete(capsys, damaged, None, "--json", str(tmp_path / "r.json"), "--jobs", "1")
    report = json.loads((tmp_path / "r.json").read_text())["sets"][0]
    assert report["images"]["train"] + report["unreadable"] == 9 and report["unreadable"] >= 8
    assert "truncated" in report["problems"][0] or "manifest" in report["problems"][0]


def test_a_missing_shard_counts_its_samples(
    two_sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "missing"
    shutil.copytree(two_sets[0], damaged)
    (damaged / "val-000000.tar").unlink()
    audit_incomplete(capsys, damaged, 1, "--json", str(tmp_path / "r.json"), "--jobs", "1")
    report = json.loads((tmp_path / "r.json").read_text())["sets"][0]
    assert report["images"] == {"train": 9, "val": 0, "test": 1} and report["unreadable"] == 1
    assert len(report["problems"]) == 1 and "val-000000.tar" in report["problems"][0]
