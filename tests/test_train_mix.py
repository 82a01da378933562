"""`segshards train --data A --data B:R [--class-map B=FILE]`: training from a mix records it, resumes exactly;
eval takes one set, a mix, or the run's own mix."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.cli import eval_main, train_main
from segshards.train.dataset import parse_mix
from tests.test_mix import voc_and_coco  # noqa: F401  (a fixture)

FAST = ["--epochs", "1", "--batch-size", "32", "--widths", "8,16,32", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_data_values_parse_into_a_mix() -> None:
    assert parse_mix(["shards/a"]) == ("shards/a", None)
    assert parse_mix(["s3://bucket/a", "https://host:8080/b:0.3", "c:2"]) == (
        "s3://bucket/a",
        [
            {"source": "s3://bucket/a"},
            {"source": "https://host:8080/b", "repeat": 0.3},
            {"source": "c", "repeat": 2.0},
        ],
    )


def test_training_from_a_mix_records_it_and_resumes_exactly(grid_set: Path, tmp_path: Path) -> None:
    data = ["--data", str(grid_set), "--data", f"{grid_set}:0.5"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_main([*data, "--out", str(whole), *FAST]) == 0
    assert train_main([*data, "--out", str(split), *FAST, "--stop-after-steps", "4"]) == 0
    assert train_main([*data, "--out", str(split), *FAST, "--resume"]) == 0
    a, b = load_checkpoint(whole / CHECKPOINT), load_checkpoint(split / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["step"] == (250 + 125) // 32  # full batches of the epoch's 375 samples
    report = json.loads((whole / "metrics.json").read_text())
    mix = report["training"]["mix"]
    assert [(m["samples"], m.get("repeat")) for m in mix] == [(250, None), (125, 0.5)]
    assert [m["read"]["samples"] for m in mix] == [250, 125]
    assert report["config"]["mix"] == [{"source": str(grid_set)}, {"source": str(grid_set), "repeat": 0.5}]
    assert a["mix"] == mix
    assert eval_main([str(whole), "--split", "val", "--threads", "1", "--no-progress"]) == 0  # the first set


def test_a_resume_with_another_mix_is_refused(
    grid_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--data",
                str(grid_set),
                "--data",
                f"{grid_set}:0.5",
                "--out",
                str(run),
                *FAST,
                "--stop-after-steps",
                "2",
            ]
        )
        == 0
    )
    assert (
        train_main(
            ["--data", str(grid_set), "--data", f"{grid_set}:0.7", "--out", str(run), *FAST, "--resume"]
        )
        == 1
    )
    assert "mix" in capsys.readouterr().err
    assert (
        train_main(
            [
                "--data",
                str(grid_set),
                "--data",
                str(grid_set),
                "--out",
                str(tmp_path / "r2"),
                *FAST,
                "--samples-per-epoch",
                "64",
            ]
        )
        == 1
    )
    assert "--samples-per-epoch: not with a mix" in capsys.readouterr().err


def write_map(path: Path, mapping: object) -> str:
    path.write_text(json.dumps(mapping))
    return str(path)


def test_a_class_map_from_the_command_line_is_recorded_and_eval_reuses_it(
    voc_and_coco: tuple[Path, Path],  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    voc, coco = voc_and_coco
    mapping = {"0": "background", "1": "car", "2": None}
    class_map = write_map(tmp_path / "voc.json", mapping)
    run = tmp_path / "run"
    argv = ["--data", str(coco), "--data", str(voc), "--class-map", f"{voc}={class_map}", "--out", str(run)]
    small = ["--size", "48", "64", "--batch-size", "4", "--no-augment", "--eval-samples", "4"]
    assert train_main([*argv, *FAST, *small]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["mix"] == [{"source": str(coco)}, {"source": str(voc), "class_map": mapping}]
    assert [(m["read"]["samples"], m.get("class_map")) for m in report["training"]["mix"]] == [
        (8, None),
        (8, mapping),
    ]
    assert eval_main([str(run), "--split", "val", "--threads", "1", "--no-progress"]) == 0  # the run's mix
    val = json.loads((run / "metrics.json").read_text())["splits"]["val"]
    assert val["samples"] == 3 + 4  # coco-tiny's val and the mask-folder set's, each sample once
    assert val["evaluation"]["mix"] == [{"source": str(coco)}, {"source": str(voc), "class_map": mapping}]
    one = ["--data", str(coco), "--split", "val", "--threads", "1", "--no-progress"]
    assert eval_main([str(run), *one]) == 0  # one set
    assert json.loads((run / "metrics.json").read_text())["splits"]["val"]["samples"] == 3


@pytest.mark.parametrize(
    ("mapping", "option", "message"),
    [
        ({"nope": "1"}, "{grid}={map}", "class_map names 'nope', not a class of the set"),
        ({"1": "cat"}, "{grid}={map}", "class '1' maps to 'cat', not a class of the mix"),
        ({"1": 3}, "{grid}={map}", "class '1' maps to 3, not a class name or null"),
        (["1"], "{grid}={map}", "must hold a JSON object"),
        ("{", "{grid}={map}", "is not valid JSON"),
        ({"1": "2"}, "elsewhere={map}", "expected SOURCE=FILE with SOURCE one of the --data sources"),
        ({"1": "2"}, "{grid}={map}-missing", "cannot read"),
    ],
)
def test_bad_class_maps_are_one_line_errors(
    grid_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mapping: object,
    option: str,
    message: str,
) -> None:
    path = tmp_path / "map.json"
    path.write_text(mapping if isinstance(mapping, str) else json.dumps(mapping))
    value = option.format(grid=grid_set, map=path)
    argv = ["--data", str(grid_set), "--class-map", value, "--out", str(tmp_path / "run"), *FAST]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_eval_refuses_weights_and_a_class_map_without_its_set(
    grid_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_main(["--data", str(grid_set), "--out", str(run), *FAST, "--stop-after-steps", "1"]) == 0
    capsys.readouterr()
    assert eval_main([str(run), "--data", str(grid_set), "--data", f"{grid_set}:0.5", "--no-progress"]) == 1
    assert "eval scores every sample of each set once" in capsys.readouterr().err
    assert eval_main([str(run), "--class-map", f"{grid_set}=x.json", "--no-progress"]) == 1
    assert "--class-map: give the --data sets it is for" in capsys.readouterr().err
