"""`segshards train --data A --data B:R`: training from a mix records it, resumes exactly, and eval takes one set."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.cli import eval_main, train_main
from segshards.train.dataset import parse_mix

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
