"""segshards.train.reports and segshards.train.checkpoint: merged, atomic metrics.json; checkpoints refused unless ours."""

import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from segshards.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segshards.train.errors import CheckpointError, OutputError
from segshards.train.reports import METRICS, read_metrics, update_metrics


def test_update_merges_splits_and_fields(tmp_path: Path) -> None:
    update_metrics(tmp_path, splits={"val": {"iou": 0.5}}, recipe="mnist-foreground", training={"wall_s": 1})
    report = update_metrics(tmp_path, splits={"test": {"iou": 0.75}})
    assert report == json.loads((tmp_path / METRICS).read_text())
    assert report["splits"] == {"val": {"iou": 0.5}, "test": {"iou": 0.75}}
    assert report["recipe"] == "mnist-foreground" and report["training"] == {"wall_s": 1}
    assert update_metrics(tmp_path, splits={"val": {"iou": 0.9}})["splits"]["val"] == {"iou": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS]  # no temp files left


def test_unreadable_metrics_are_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text("{not json")
    with pytest.raises(OutputError, match=r"metrics\.json: not valid JSON"):
        update_metrics(tmp_path, splits={"val": {}})
    assert (tmp_path / METRICS).read_text() == "{not json"
    (tmp_path / METRICS).write_text("[1, 2]")
    with pytest.raises(OutputError, match="not a metrics report"):
        read_metrics(tmp_path)


def test_full_disk_keeps_the_old_report_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    update_metrics(tmp_path, splits={"val": {"iou": 0.5}})
    before = (tmp_path / METRICS).read_bytes()

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError, match=r"metrics\.json: cannot write \(no space left on device\)"):
        update_metrics(tmp_path, splits={"test": {"iou": 0.75}})
    assert (tmp_path / METRICS).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS]


def test_unreadable_report_path_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / METRICS).mkdir()
    with pytest.raises(OutputError, match=r"metrics\.json: cannot read"):
        read_metrics(tmp_path)


def test_rng_state_round_trip() -> None:
    state = rng_state()
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_checkpoint_round_trip_loads_weights_only(tmp_path: Path) -> None:
    keys = ("config", "model", "optimizer", "scheduler", "epoch", "step", "loader", "rng", "history")
    state = {key: {} for key in keys} | {"model": {"w": torch.ones(2)}, "rng": rng_state(), "epoch": 3}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    torch.save({"format_version": 1, "epoch": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks 'config'"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a segshards training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path: Path) -> None:
    torch.save({"format_version": 1, "payload": Path("/")}, tmp_path / "pickled.pt")  # not a plain value
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt")
