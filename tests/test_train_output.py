"""What `segshards train` tells its user: no progress bars in a redirected log, a note on the samples an
epoch leaves out, what to do after Ctrl-C, per-step losses in curves.png."""

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from segshards.train import loop
from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.cli import train_main
from segshards.train.plots import plot_curves
from segshards.train.tasks import task_differences
from segshards.writer.cli.main import main as writer_main

BAR = "sample/s"  # in every tqdm bar train draws (unit "sample")


@pytest.fixture(scope="module")
def foreground(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist-foreground: train 250 in shards of 128 and 122, val 64."""
    out = tmp_path_factory.mktemp("sets") / "fg"
    argv = ["build", "mnist-foreground", "--out", str(out), "--jobs", "1", "--no-progress"]
    assert writer_main([*argv, "--train", "250", "--val", "64", "--test", "0", "--shard-size", "128"]) == 0
    return out


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def small_run(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--threads", "1", "--widths", "8,16"]
    return [*argv, "--eval-samples", "32", "--samples-per-epoch", "all", *extra]


def test_a_redirected_log_gets_no_bars_unless_asked(
    foreground: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under capsys stderr is not a terminal, as in `segshards train ... 2> log`.
    assert train_main(small_run(foreground, tmp_path / "a", "--batch-size", "125", "--epochs", "2")) == 0
    captured = capsys.readouterr()
    assert BAR not in captured.err and captured.err == ""
    assert captured.out.count("epoch 1: train loss") == 1 and captured.out.count("epoch 2: train loss") == 1
    assert "note" not in captured.out  # 250 = 2 x 125: nothing left out
    assert train_main(small_run(foreground, tmp_path / "b", "--batch-size", "125", "--progress")) == 0
    assert BAR in capsys.readouterr().err


def test_the_samples_an_epoch_leaves_out_are_said_once(
    foreground: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(small_run(foreground, tmp_path / "a", "--batch-size", "100", "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert out.count("note: epoch 1 trains on 200 of the 250 train samples") == 1
    assert "(--batch-size 100), so its last, short batch is left out" in out
    argv = small_run(foreground, tmp_path / "b", "--batch-size", "100", "--samples-per-epoch", "150")
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "note: --samples-per-epoch 150 is trained as 1 full batch of 100: 100 samples an epoch" in out


def interrupt(*_: Any, **__: Any) -> bool:
    raise KeyboardInterrupt


def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(
    foreground: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    monkeypatch.setattr(loop, "train_one_epoch", interrupt)
    assert train_main(small_run(foreground, run)) == 130
    err = capsys.readouterr().err
    assert "stopped before the first checkpoint, so there is nothing to resume" in err
    assert "run the same command again to start over" in err and "--resume continues" not in err
    assert not run.exists()


def test_ctrl_c_after_a_checkpoint_names_it(
    foreground: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert train_main(small_run(foreground, run, "--stop-after-steps", "1")) == 0
    assert f"{run}: stopped after 1 step; continue with --resume\n" in capsys.readouterr().out
    monkeypatch.setattr(loop, "train_one_epoch", interrupt)
    assert train_main([*small_run(foreground, run), "--resume"]) == 130
    err = capsys.readouterr().err
    assert f"the same command with --resume continues from the last checkpoint, {run / CHECKPOINT}" in err


def blue_pixels(png: Path) -> int:
    """Pixels of the loss panel (left half) in matplotlib's first colour (train loss)."""
    image = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB"), dtype=np.int32)
    left = image[:, : image.shape[1] // 2]
    return int((np.abs(left - np.array([31, 119, 180])).sum(axis=2) < 30).sum())


def test_curves_of_one_epoch_draw_the_loss_of_every_step(
    foreground: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_main(small_run(foreground, run, "--batch-size", "25", "--epochs", "1")) == 0
    saved = load_checkpoint(run / CHECKPOINT)
    assert len(saved["losses"]) == saved["step"] == 10  # every step's loss kept with the run
    history = saved["history"]
    plot_curves(history, ("iou",), tmp_path / "epochs-only.png", title="t")
    assert blue_pixels(run / "curves.png") > 3 * blue_pixels(tmp_path / "epochs-only.png")


def test_task_differences_name_each_field_on_its_own_line() -> None:
    run = {"kind": "segmentation", "in_channels": 1, "classes": ["background", *"0123456789"]}
    data = {"kind": "segmentation", "in_channels": 3, "classes": ["background", "person", "dog"]}
    assert task_differences(run, data) == [
        "classes: the run has 11 [background, 0, 1, 2, 3, 4, ...], this set has 3 [background, person, dog]",
        "in_channels: the run has 1, this set has 3",
    ]
    same_length = {**run, "classes": ["background", *"0123456x89"]}
    assert task_differences(run, same_length)[0].endswith("(first differs at #8: 7 | x)")
    assert task_differences(run, run) == []
