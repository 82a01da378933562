"""`segshards info SET`: a set's splits, classes, schema, size and location without reading its JSON, for a
folder and for a set on an S3 API server on loopback."""

import json
from pathlib import Path

import pytest

from segshards.writer.cli.main import main
from tests.mnist_fixtures import SMALL, build_once, error_lines
from tests.moto_fixture import S3, s3_fixture  # noqa: F401  (fixture)


@pytest.fixture
def grid(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    return folder


def info(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["info", *argv]) == 0
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    return captured.out


def expected_lines(folder: Path, location: str) -> list[str]:
    """What info must say of the set in `folder`, worked out from its files and manifest here."""
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")}
    shards = {s: len(manifest["splits"][s]["shards"]) for s in counts}
    listed = [e["name"] for s in manifest["splits"].values() for e in s["shards"]]
    listed += [s["index"]["name"] for s in manifest["splits"].values()]
    size = sum((folder / name).stat().st_size for name in listed)
    splits = ", ".join(f"{s} {n:,} ({shards[s]} shard{'s' * (shards[s] != 1)})" for s, n in counts.items())
    return [
        f"location  {location}",
        f"recipe    mnist-grid (seed 0; segshards {manifest['segshards_version']}, format 2)",
        f"splits    {splits}; {sum(counts.values()):,} samples",
        f"size      {size / 1e6:,.1f} MB ({size:,} bytes) in {sum(shards.values())} shards and 3 wids indexes",
        "image     png, grey, 56x56",
        "mask      mask.png, 11 classes, background 0, ignore 255",
        "target    digits: value, int64[4], 10 classes",
        'training  batch_size 64, epochs 4, lr 0.006, metrics ["dice_macro"], samples_per_epoch 32000, '
        "stem 2, widths [16,32,64]",
        'classes   0 "background", 1 "0", 2 "1", 3 "2", 4 "3", 5 "4", 6 "5", 7 "6", 8 "7", 9 "8", 10 "9"',
        "licence   cc-by-sa-3.0; 0 duplicates rejected",
    ]


def test_info_of_a_folder(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert info(capsys, str(grid)).splitlines() == expected_lines(grid, str(grid))


def test_info_as_json(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    facts = json.loads(info(capsys, str(grid), "--json"))
    manifest = json.loads((grid / "manifest.json").read_text())
    assert facts["splits"] == {
        s: {"samples": manifest["splits"][s]["count"], "shards": len(manifest["splits"][s]["shards"])}
        for s in ("train", "val", "test")
    }
    assert facts["samples"] == 420 and facts["recipe"] == "mnist-grid" and facts["location"] == str(grid)
    assert facts["schema"] == manifest["schema"] and facts["classes"][0] == "background"
    assert facts["shard_bytes"] == sum(e["bytes"] for s in manifest["splits"].values() for e in s["shards"])


def test_info_of_a_set_on_s3(grid: Path, s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(grid), s3.url("sets/grid")]) == 0
    capsys.readouterr()
    out = info(capsys, s3.url("sets/grid"))
    assert out.splitlines() == expected_lines(grid, s3.url("sets/grid"))


def test_info_of_no_set_names_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [
        f"segshards: error: {tmp_path}/manifest.json: no manifest (not a finished segshards set)"
    ]


def test_info_of_a_damaged_manifest_names_the_field(
    grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((grid / "manifest.json").read_text())
    manifest["splits"]["train"]["count"] = "many"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(tmp_path)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"segshards: error: {tmp_path}/manifest.json: ")
    assert "count" in lines[0]


@pytest.mark.parametrize(
    ("training", "line"),
    [
        ({"size": [320, 320], "augment": False}, "training  augment false, size [320,320]"),
        ({}, "training  none suggested"),
    ],
)
def test_info_shows_the_suggested_training_as_recorded(
    grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], training: dict[str, object], line: str
) -> None:
    manifest = json.loads((grid / "manifest.json").read_text())
    manifest["schema"]["training"] = training
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert [x for x in info(capsys, str(tmp_path)).splitlines() if x.startswith("training")] == [line]
