"""`--class-weights auto`: median-frequency weights from the manifest, hand-checked, recorded and kept on resume."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segshards.loaders import Stream, make_loader
from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.class_weights import auto_weights, median_frequency, split_pixels
from segshards.train.cli import train_main
from segshards.train.errors import ConfigError
from segshards.train.tasks import SegmentationTask
from segshards.writer.format.schema import SampleSchema

FAST = [
    "--epochs",
    "1",
    "--samples-per-epoch",
    "320",
    "--batch-size",
    "32",
    "--widths",
    "8,16,32",
    "--threads",
    "1",
    "--no-progress",
]
GRID_CLASSES = ("background", *map(str, range(10)))


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_median_frequency_by_hand() -> None:
    # shares 0.6, 0.2, 0, 0.1, 0.1: the median of the present classes' shares is (0.1 + 0.2) / 2 = 0.15
    weights = median_frequency(np.array([600, 200, 0, 100, 100]))
    assert weights == pytest.approx([0.25, 0.75, 0.0, 1.5, 1.5])
    with pytest.raises(ConfigError, match="no labelled pixels"):
        median_frequency(np.zeros(3))


def test_the_ignore_id_is_left_out_and_bad_histograms_are_refused() -> None:
    schema = SampleSchema("png", 1, (4, 4), ("a", "b", "c"))
    manifest = {"splits": {"train": {"class_histogram": {"pixels": {"0": 30, "2": 10, "255": 1000}}}}}
    assert split_pixels(manifest, "m.json", "train", schema).tolist() == [30, 0, 10]
    manifest["splits"]["train"]["class_histogram"]["pixels"]["7"] = 1
    with pytest.raises(ConfigError, match=r"m.json: splits.train.class_histogram.pixels counts class 7"):
        split_pixels(manifest, "m.json", "train", schema)
    with pytest.raises(ConfigError, match="missing or empty"):
        split_pixels({"splits": {"train": {}}}, "m.json", "train", schema)


def decoded_pixels(source: object) -> np.ndarray:
    """Pixels per grid class, counted from every decoded mask of the train split (each sample as often as
    the loader delivers it), the ignore id left out."""
    counts = np.zeros(256, dtype=np.int64)
    for batch in make_loader(source, "train", 64, shuffle=False):  # type: ignore[arg-type]
        counts += np.bincount(batch["mask"].numpy().ravel(), minlength=256)
    return counts[: len(GRID_CLASSES)]


def test_auto_weights_equal_a_hand_computation_from_the_decoded_masks(grid_set: Path) -> None:
    counts = decoded_pixels(grid_set).astype(np.float64)
    share = counts / counts.sum()
    assert auto_weights(str(grid_set), None) == pytest.approx(np.median(share) / share)


def test_a_mix_weights_streams_by_their_share_of_an_epoch_through_their_class_maps(grid_set: Path) -> None:
    to_bg = {"0": "background", "9": None}  # digit 0 counted as background, digit 9 ignored
    streams = [Stream(grid_set), Stream(grid_set, repeat=0.5, class_map=to_bg)]
    whole = decoded_pixels(grid_set).astype(np.float64)
    mapped = whole.copy()
    mapped[0] += mapped[1]
    mapped[[1, 10]] = 0
    counts = whole + 0.5 * mapped  # the second stream takes half its samples per epoch
    share = counts / counts.sum()
    assert auto_weights(str(grid_set), streams) == pytest.approx(np.median(share) / share)


def test_the_loss_weights_each_true_class() -> None:
    task = SegmentationTask(["a", "b", "c"], in_channels=1)
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4))
    mask[0, 0, 0] = 255
    task.set_class_weights([0.5, 2.0, 1.0])
    expected = F.cross_entropy(logits, mask, weight=torch.tensor([0.5, 2.0, 1.0]), ignore_index=255)
    assert torch.allclose(task.loss(logits, {"mask": mask}), expected)
    with pytest.raises(ConfigError, match="2 given for 3 classes"):
        task.set_class_weights([1.0, 1.0])


def test_auto_weights_are_recorded_and_kept_on_resume(grid_set: Path, tmp_path: Path) -> None:
    run, whole = tmp_path / "run", tmp_path / "whole"
    data = ["--data", str(grid_set)]
    assert train_main([*data, "--out", str(whole), *FAST, "--class-weights", "auto"]) == 0
    assert (
        train_main([*data, "--out", str(run), *FAST, "--class-weights", "auto", "--stop-after-steps", "2"])
        == 0
    )
    assert train_main([*data, "--out", str(run), *FAST, "--resume"]) == 0  # auto, from the checkpoint
    expected = dict(zip(GRID_CLASSES, auto_weights(str(grid_set), None).tolist(), strict=True))
    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["class_weights"] == "auto"
    assert report["class_weights"] == {"mode": "auto", "weights": pytest.approx(expected)}
    a, b = load_checkpoint(whole / CHECKPOINT), load_checkpoint(run / CHECKPOINT)
    assert b["class_weights"] == report["class_weights"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # resumed == uninterrupted


def test_none_is_the_default_and_records_no_weights(grid_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train_main(["--data", str(grid_set), "--out", str(run), *FAST, "--stop-after-steps", "1"]) == 0
    saved = load_checkpoint(run / CHECKPOINT)
    assert saved["config"]["class_weights"] == "none" and saved["class_weights"] is None


def test_a_resume_with_other_weights_is_refused(
    grid_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_main(["--data", str(grid_set), "--out", str(run), *FAST, "--stop-after-steps", "1"]) == 0
    capsys.readouterr()
    argv = ["--data", str(grid_set), "--out", str(run), *FAST, "--resume", "--class-weights", "auto"]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "class_weights='none'" in err and err.count("\n") == 1


def test_bad_values_are_one_line_errors(
    grid_set: Path, circle_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--data", str(grid_set), "--out", str(tmp_path / "a"), "--class-weights", "median"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("argument --class-weights: invalid choice: 'median' (choose from 'none', 'auto')")
    )
    argv = ["--data", str(circle_set), "--out", str(tmp_path / "b"), *FAST, "--class-weights", "auto"]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "--class-weights auto: only for segmentation sets" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
