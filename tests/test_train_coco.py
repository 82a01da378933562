"""End to end on real photographs: coco-tiny (16 COCO 2017 images) built, trained with default options,
evaluated; metrics keyed by class name, figures written, `--size` checked, nothing left by a failed run."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.cli import eval_main, train_main
from segshards.train.dataset import read_set
from segshards.writer.cli.main import main as writer_main
from segshards.writer.format.palette import IGNORE_GREY, MIN_DELTA_E, delta_e94, lab

REPO = Path(__file__).resolve().parents[1]
# The project keeps coco-tiny in a `shared/` folder beside the checkout (or beside the worktrees' folder).
FOUND = [p for p in (REPO / "shared", REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()]
COCO_TINY = FOUND[0] / "data" / "coco-tiny" if FOUND else REPO / "shared" / "data" / "coco-tiny"
pytestmark = pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """coco-tiny copied and built: 12 train, 2 val, 2 test photographs of varying sizes."""
    root = tmp_path_factory.mktemp("coco")
    source = shutil.copytree(COCO_TINY, root / "coco-tiny")
    argv = ["build", "coco-semantic", "--annotations", str(source / "instances.json")]
    argv += ["--images", str(source / "images"), "--out", str(root / "set"), "--jobs", "1"]
    assert writer_main([*argv, "--train", "12", "--val", "2", "--test", "2", "--shard-size", "8"]) == 0
    return root / "set"


def test_default_training_then_eval(coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # Default options (only --threads and --no-progress, which change nothing learned): letterboxed to the
    # schema's 320x320, the suggested U-Net, one epoch of 12 images in batches of 8 (one step).
    assert train_main(["--data", str(coco), "--out", str(run), "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "coco-semantic epoch 1: train loss" in out
    assert "miou" in out and "miou_objects" in out and "pixel_accuracy" in out and "val IoU per class" in out
    assert eval_main([str(run), "--threads", "1", "--no-progress"]) == 0
    assert "test miou" in capsys.readouterr().out

    report = json.loads((run / "metrics.json").read_text())
    config = report["config"]
    assert config["size"] == [320, 320] and config["widths"] == [32, 64, 128, 256] and config["stem"] == 2
    assert (config["epochs"], config["batch_size"], config["lr"]) == (1, 8, 1e-3)
    assert report["training"]["steps"] == 1 and report["training"]["samples"] == 8
    classes = json.loads((coco / "manifest.json").read_text())["schema"]["mask"]["classes"]
    assert len(classes) == 81 and classes[0] == "background" and "person" in classes
    for split in ("val", "test"):
        metrics = report["splits"][split]
        assert metrics["samples"] == 2
        assert sorted(metrics["iou_per_class"]) == sorted(classes)  # keyed by name
        assert len(metrics["confusion_matrix"]) == 81
        for key in ("miou", "miou_objects", "pixel_accuracy"):
            assert 0 <= metrics[key] <= 1
    history = load_checkpoint(run / CHECKPOINT)["history"]
    assert history[0]["val"]["miou"] is not None  # what curves.png's validation panel draws
    for name in ("curves.png", "predictions.png", "predictions-test.png"):
        assert (run / name).stat().st_size > 20_000  # a drawn figure, not an empty canvas


def test_size_overrides_the_schema(coco: Path, tmp_path: Path) -> None:
    run = tmp_path / "small"
    argv = [
        "--data",
        str(coco),
        "--out",
        str(run),
        "--size",
        "64",
        "96",
        "--widths",
        "8,16,32",
        "--stem",
        "1",
    ]
    assert train_main([*argv, "--threads", "1", "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["config"]["size"] == [64, 96]


def test_eval_on_a_set_of_other_classes_says_what_differs(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["--data", str(coco), "--out", str(run), "--size", "64", "64", "--widths", "8,16", "--stem", "1"]
    assert train_main([*argv, "--threads", "1", "--no-progress"]) == 0
    other = tmp_path / "people-and-dogs"
    build = ["build", "coco-semantic", "--annotations", str(COCO_TINY / "instances.json"), "--jobs", "1"]
    build += ["--images", str(COCO_TINY / "images"), "--out", str(other), "--categories", "person,dog"]
    assert writer_main([*build, "--train", "4", "--val", "2", "--test", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert eval_main([str(run), "--data", str(other), "--no-progress"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"segshards eval: error: --data {other}: its schema does not fit the run's model:",
        "  classes: the run has 81 [background, person, bicycle, car, motorcycle, airplane, ...], "
        "this set has 3 [background, person, dog]",
    ]


def test_figures_draw_coco_classes_in_distinct_colours_away_from_the_ignore_grey(coco: Path) -> None:
    info = read_set(str(coco))  # what train and eval draw predictions.png with
    classes = info.schema.classes
    colours = lab(info.palette[1 : len(classes)])  # the 80 object classes (0, background, is not tinted)
    smallest = min(float(np.delete(delta_e94(c, colours), i).min()) for i, c in enumerate(colours))
    assert smallest > 9
    assert delta_e94(lab(np.array([IGNORE_GREY]))[0], colours).min() >= MIN_DELTA_E


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (["0", "320"], "--size 0 320: H and W must be positive"),
        (["-32", "320"], "--size -32 320: H and W must be positive"),
        (
            ["300", "320"],
            "--size 300 320: this model (--widths 32,64,128,256, --stem 2) needs sides divisible by 16",
        ),
    ],
)
def test_wrong_size_is_one_line_naming_the_option_and_leaves_no_run(
    coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: list[str], expected: str
) -> None:
    run = tmp_path / "run"
    assert train_main(["--data", str(coco), "--out", str(run), "--size", *size, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not run.exists()
