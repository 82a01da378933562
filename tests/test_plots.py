"""segshards.train.plots: legends that name classes as `preview` does, and val metrics that all show."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from segshards.train import plots
from segshards.train.plots import GREY, legend_handles, plot_curves, rgb
from segshards.writer.format.palette import manifest_palette


def test_the_legend_labels_each_class_with_its_id_in_the_preview_colours() -> None:
    colours = manifest_palette({})[:, ::-1]  # the preview's colours, as RGB
    truth = np.array([[0, 1], [255, 255]], np.uint8)
    prediction = np.array([[0, 2], [255, 255]], np.uint8)
    handles = legend_handles(truth, prediction, ["background", "person", "bicycle"], colours, 255)
    assert [h.get_label() for h in handles] == [
        "background (0), no tint",
        "person (1)",
        "bicycle (2)",
        "ignored / padding (255)",
    ]
    expected = [rgb(colours[0]), rgb(colours[1]), rgb(colours[2]), rgb(GREY)]
    np.testing.assert_allclose([to_rgb(h.get_facecolor()) for h in handles], expected)


def test_equal_val_metrics_of_one_epoch_each_show_a_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Figure] = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.append(figure))
    history = [{"epoch": 1, "step": 2, "train_loss": 1.0, "val": {"a": 0.0, "b": 0.0, "c": 0.0}}]
    plot_curves(history, ("a", "b", "c"), tmp_path / "curves.png", title="t")
    lines = drawn[0].axes[1].get_lines()
    markers = [line.get_marker() for line in lines]
    sizes = [line.get_markersize() for line in lines]
    assert len(set(markers)) == 3 and "None" not in markers  # each series its own shape
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3  # each drawn inside the one below
