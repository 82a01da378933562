"""Training on small shard sets: beats a trivial baseline, resumes exactly, and the CLI writes its reports."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.cli import eval_main, train_main
from segshards.train.config import TrainConfig
from segshards.train.errors import CheckpointError
from segshards.train.loop import train
from segshards.train.tasks import CircleTask, SegmentationTask, task_for
from segshards.writer.cli.main import main as writer_main
from segshards.writer.format.schema import SampleSchema, Target
from tests.coco_fixtures import write_coco

AUGMENT = {"scale": [0.5, 2.0], "flip": 0.5, "image_fill": 0, "mask_fill": 255}
SMALL = ["--train", "512", "--val", "128", "--test", "128", "--shard-size", "128"]


def build(root: Path, recipe: str) -> Path:
    out = root / recipe
    assert writer_main(["build", recipe, "--out", str(out), "--jobs", "1", *SMALL]) == 0
    return out


@pytest.fixture(scope="session")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three MNIST recipes, 512/128/128 samples in shards of 128."""
    root = tmp_path_factory.mktemp("train-sets")
    out = {recipe: build(root, recipe) for recipe in ("mnist-foreground", "mnist-circle", "mnist-grid")}
    fixture = write_coco(root / "coco-src")  # 7 small photographs: 6 train, 1 val
    argv = ["build", "coco-semantic", *fixture.args(), "--out", str(root / "coco"), "--jobs", "1"]
    assert writer_main([*argv, "--train", "6", "--val", "1", "--test", "0", "--shard-size", "2"]) == 0
    return out | {"coco-semantic": root / "coco"}


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """`train` sets torch's (process-wide) thread count from the config; give the next test the old one."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def config(data: Path, out: Path, recipe: str, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "recipe": recipe,
        "data": str(data),
        "out": str(out),
        "epochs": 2,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "samples_per_epoch": None,
        "eval_samples": None,
        "widths": (8, 16, 32),
        "stem": 1,
        "size": None,
        "device": "cpu",
        "precision": "fp32",
        "seed": 0,
        "workers": 0,
        "threads": 1,  # small convolutions: one thread is fastest here, and steadiest on shared cores
        "checkpoint_every": None,
        "progress": False,
    }
    return TrainConfig(**(values | overrides))


def test_short_training_beats_background_everywhere(sets: dict[str, Path], tmp_path: Path) -> None:
    data = sets["mnist-foreground"]
    result = train(config(data, tmp_path / "run", "mnist-foreground", epochs=2, batch_size=32, lr=1e-2))
    assert result.finished and result.metrics is not None
    val = result.metrics["splits"]["val"]
    assert val["samples"] == 128
    # Background everywhere has foreground IoU 0 (and pixel accuracy ~0.86): the model must be far above.
    assert val["iou"] >= 0.8
    assert result.step_losses[-1] < result.step_losses[0] / 2
    training = result.metrics["training"]
    assert training["device"] == "cpu" and 0 < training["data_wait_fraction"] < 1


@pytest.mark.parametrize(
    ("recipe", "overrides", "stop"),
    [
        # dropout draws from the RNG; stop mid-epoch (8 steps per epoch)
        ("mnist-circle", {"widths": (8, 16)}, 5),
        # stop on the epoch's last step: the prefetcher has read the loader to its end, which stands at the
        # next epoch's start while the run has not ended its epoch yet
        ("mnist-circle", {"widths": (8, 16)}, 8),
        # resampled stream of 3 steps per epoch; stop just after an epoch boundary
        ("mnist-foreground", {"samples_per_epoch": 192, "widths": (8, 16)}, 4),
        ("mnist-foreground", {"samples_per_epoch": 192, "widths": (8, 16)}, 3),  # on its last step
        # photographs augmented (seeded per sample and epoch), 2 loader workers; stop mid-epoch 2 of 3 steps
        ("coco-semantic", {"size": (32, 32), "batch_size": 2, "widths": (8, 16), "augment": AUGMENT}, 4),
        (
            "coco-semantic",
            {"size": (32, 32), "batch_size": 2, "widths": (8, 16), "workers": 2, "augment": AUGMENT},
            4,
        ),
    ],
)
def test_resume_gives_the_same_next_step_loss(
    sets: dict[str, Path], tmp_path: Path, recipe: str, overrides: dict[str, Any], stop: int
) -> None:
    data = sets[recipe]
    whole = train(config(data, tmp_path / "whole", recipe, **overrides))
    first = train(config(data, tmp_path / "split", recipe, **overrides), stop_after_steps=stop)
    assert not first.finished and first.step_losses == whole.step_losses[:stop]
    rest = train(config(data, tmp_path / "split", recipe, **overrides), resume=True)
    assert rest.finished
    assert rest.step_losses[0] == whole.step_losses[stop]  # the next step, bit for bit
    assert rest.step_losses == whole.step_losses[stop:]
    assert rest.metrics is not None and whole.metrics is not None
    assert rest.metrics["splits"]["val"]["loss"] == whole.metrics["splits"]["val"]["loss"]
    a, b = load_checkpoint(tmp_path / "whole" / CHECKPOINT), load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_refuses_other_settings(sets: dict[str, Path], tmp_path: Path) -> None:
    data = sets["mnist-foreground"]
    train(config(data, tmp_path, "mnist-foreground", epochs=1), stop_after_steps=1)
    with pytest.raises(CheckpointError, match="already here"):
        train(config(data, tmp_path, "mnist-foreground", epochs=1))
    with pytest.raises(CheckpointError, match="lr=0.003"):
        train(config(data, tmp_path, "mnist-foreground", epochs=1, lr=0.1), resume=True)


def test_cli_train_then_eval_writes_reports(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "grid"
    data = str(sets["mnist-grid"])
    argv = ["mnist-grid", "--data", data, "--out", str(run), "--epochs", "1", "--samples-per-epoch", "128"]
    argv += ["--eval-samples", "64"]  # per-epoch subset; the final val score must still cover all 128
    assert train_main([*argv, "--widths", "8,16,32", "--threads", "1", "--no-progress"]) == 0
    assert "val dice_macro" in capsys.readouterr().out
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "predictions.png"):
        assert (run / name).stat().st_size > 0
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temp files
    assert eval_main([str(run), "--data", data, "--split", "test", "--no-progress"]) == 0
    assert "test dice_macro" in capsys.readouterr().out
    report = json.loads((run / "metrics.json").read_text())
    assert report["recipe"] == "mnist-grid"
    assert report["config"]["widths"] == [8, 16, 32] and report["config"]["stem"] == 2  # recipe default kept
    assert report["training"]["samples"] == 128
    for split in ("val", "test"):
        metrics = report["splits"][split]
        assert metrics["samples"] == 128
        assert set(metrics["dice_per_class"]) == {str(d) for d in range(10)}
        assert 0 <= metrics["dice_macro"] <= 1 and 0 <= metrics["dice_background"] <= 1
    assert report["splits"]["test"]["evaluation"]["checkpoint_step"] == 2
    assert (run / "predictions-test.png").stat().st_size > 0


def test_cli_circle_reports_accuracy_and_circle_iou(sets: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "circle"
    argv = ["--data", str(sets["mnist-circle"]), "--out", str(run), "--epochs", "1", "--threads", "1"]
    argv += ["--widths", "8,16", "--no-progress"]
    assert train_main(argv) == 0
    assert eval_main([str(run), "--no-progress"]) == 0  # --data defaults to the training set, --split to test
    report = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= report["splits"][split]["accuracy"] <= 1
        assert 0 < report["splits"][split]["circle_iou"] <= 1
        assert set(report["splits"][split]["circle_iou_per_class"]) == {str(d) for d in range(10)}


def test_cli_errors_are_one_line_and_exit_1(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(sets["mnist-foreground"])
    assert train_main(["mnist-grid", "--data", data, "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    assert "holds a 'mnist-foreground' set" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "nothing"), "--no-progress"]) == 1
    assert "no checkpoint here" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert eval_main([str(tmp_path / "bad"), "--no-progress"]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert train_main(["--data", data, "--out", str(tmp_path / "c"), "--epochs", "0"]) == 1
    assert "--epochs 0: must be >= 1" in capsys.readouterr().err


def test_failed_run_leaves_no_run_folder(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shutil.copytree(sets["mnist-foreground"], tmp_path / "set")
    for shard in data.glob("train-*.tar"):
        shard.write_bytes(shard.read_bytes()[:3000])  # cut inside the first samples
    run = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(run), "--threads", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segshards train: error: ") and err.count("\n") == 1
    assert not run.exists()


LABEL = Target("label", "int64", (), ("label",), "class", ("a", "b", "c"))
CIRCLE = Target("circle", "float32", (3,), ("c.x", "c.y", "c.r"), "circle")


@pytest.mark.parametrize(
    ("targets", "kind"),
    [
        ((LABEL, CIRCLE), CircleTask),
        ((CIRCLE, LABEL), CircleTask),  # order does not matter, roles do
        ((LABEL,), SegmentationTask),  # a class alone: the mask is what is learned
        ((Target("v", "float32", (), ("v",)),), SegmentationTask),
        ((), SegmentationTask),
    ],
)
def test_task_comes_from_the_schema_roles(targets: tuple[Target, ...], kind: type) -> None:
    schema = SampleSchema("png", 3, None, ("bg", "x", "y"), targets=targets, training={"metrics": ["miou"]})
    task = task_for(schema)
    assert type(task) is kind and task.in_channels == 3
    if kind is CircleTask:
        assert task.describe()["classes"] == ["a", "b", "c"]
    else:
        assert task.describe()["classes"] == ["bg", "x", "y"] and task.primary == ("miou",)


def test_photo_sets_train_augmented_by_default_and_the_run_records_it(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(name: str, data: Path, *extra: str) -> Any:
        argv = ["--data", str(data), "--out", str(tmp_path / name), "--epochs", "1", "--threads", "1"]
        argv += ["--widths", "8,16", "--stem", "1", "--no-progress", *extra]
        assert train_main(argv) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())["config"]["augment"]

    photos = ["--size", "32", "32", "--batch-size", "2"]
    assert run("coco", sets["coco-semantic"], *photos) == AUGMENT
    reference = "augment: torchvision reference train transform (scale 0.5-2.0, flip 0.5)\n"
    assert capsys.readouterr().out.startswith(reference)  # said first, once
    assert run("coco-plain", sets["coco-semantic"], *photos, "--no-augment") is None
    assert capsys.readouterr().out.startswith("augment: off (--no-augment)\n")
    assert run("mnist", sets["mnist-foreground"], "--samples-per-epoch", "64") is None
    fixed = "augment: none (sets of fixed-size images, such as the MNIST sets, are not augmented)\n"
    assert capsys.readouterr().out.startswith(fixed)
    resume = [
        "--data",
        str(sets["coco-semantic"]),
        "--out",
        str(tmp_path / "coco"),
        "--resume",
        "--no-progress",
    ]
    assert train_main([*resume, "--no-augment"]) == 1
    assert capsys.readouterr().err == (
        f"segshards train: error: {tmp_path / 'coco' / CHECKPOINT}: saved with augment: torchvision reference "
        "train transform (scale 0.5-2.0, flip 0.5), this run asks for --no-augment; resume without "
        "--no-augment, or train into another --out\n"
    )
