"""The charts of `segshards stats -o FILE.png`: per split, pixel share and images holding each class (by
name), how much of an image each class covers, and instances per image where the samples count them.

Drawn on `matplotlib.figure.Figure` (Agg canvas, no pyplot state) and written atomically."""

import io
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from segshards.writer.errors import OutputError
from segshards.writer.share.stats import AREA_BINS, MAX_INSTANCES, SetStats, values_seen
from segshards.writer.storage.atomic import atomic_write

BAR = 0.8  # the height the bars of one class share
PIXEL_FLOOR = 1e-3  # % of pixels: the left end of the log axis
INSTANCE_BINS = [(0, 0), (1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 50)]  # inclusive ranges


def figure_of(stats: SetStats) -> Figure:
    """Two class charts side by side (one bar per split and class), and two distributions below."""
    values = values_seen(stats)
    names = stats.names()
    labels = [names.get(v, str(v)) for v in values]
    rows = max(3.0, 0.28 * len(values) * max(len(stats.splits), 1) ** 0.5)
    figure = Figure(figsize=(12, rows + 4), layout="constrained")
    (share, holding), (area, instances) = figure.subplots(2, 2, height_ratios=[rows, 3.5])
    figure.suptitle(f"{stats.location}: class statistics per split")
    per_class_bars(share, stats, values, labels, "share of the split's mask pixels (%)", pixels=True)
    per_class_bars(holding, stats, values, labels, "images holding the class (% of the split)", pixels=False)
    holding.set_yticklabels([])
    area_lines(area, stats, values)
    instance_lines(instances, stats)
    return figure


def per_class_bars(
    axes: Axes, stats: SetStats, values: list[int], labels: list[str], title: str, *, pixels: bool
) -> None:
    splits = list(stats.splits)
    height = BAR / max(len(splits), 1)
    y = np.arange(len(values))
    for k, split in enumerate(splits):
        s = stats.splits[split]
        if pixels:
            shown = 100 * s.pixels[values] / max(int(s.pixels.sum()), 1)
        else:
            shown = 100 * s.holding[values] / max(s.images, 1)
        axes.barh(
            y - BAR / 2 + (k + 0.5) * height, shown, height=height, label=f"{split} ({s.images:,} images)"
        )
    axes.set_yticks(y, labels, fontsize=8)
    axes.invert_yaxis()
    if pixels:  # background takes most pixels: a log scale keeps the rare classes visible
        axes.set_xscale("log")
        axes.set(title=title, xlim=(PIXEL_FLOOR, 100))
    else:
        axes.set(title=title, xlim=(0, 100))
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")


def area_lines(axes: Axes, stats: SetStats, values: list[int]) -> None:
    """Of the (image, class) pairs where a class other than background and ignore is present, the share of
    the image it covers."""
    classes = [v for v in values if v not in (stats.schema.background, stats.schema.ignore)]
    centres = np.arange(len(AREA_BINS) - 1)
    for split, s in stats.splits.items():
        counts = s.area[classes].sum(axis=0) if classes else np.zeros(len(centres))
        total = max(int(counts.sum()), 1)
        axes.plot(centres, 100 * counts / total, "o-", label=split)
    ticks = [f"<{100 * hi:g}%" for hi in AREA_BINS[1:-1]] + ["<=100%"]
    axes.set_xticks(centres, ticks, fontsize=8)
    axes.set(
        title="share of an image a class covers (classes present, background aside)", ylabel="% of cases"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def instance_lines(axes: Axes, stats: SetStats) -> None:
    counted = {split: s for split, s in stats.splits.items() if s.counted_instances}
    if not counted:
        axes.text(0.5, 0.5, "the samples' JSON does not count instances", ha="center", va="center",
                  transform=axes.transAxes)  # fmt: skip
        axes.set_axis_off()
        return
    width = BAR / len(counted)
    x = np.arange(len(INSTANCE_BINS))
    for k, (split, s) in enumerate(counted.items()):
        share = [100 * s.instances[lo : hi + 1].sum() / s.counted_instances for lo, hi in INSTANCE_BINS]
        axes.bar(x - BAR / 2 + (k + 0.5) * width, share, width=width, label=split)
    ticks = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in INSTANCE_BINS[:-1]] + [f"{MAX_INSTANCES}+"]
    axes.set_xticks(x, ticks, fontsize=8)
    axes.set(title="instances per image", xlabel="instances", ylabel="% of images")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)


def write_chart(stats: SetStats, path: Path) -> None:
    """The charts as a PNG at `path`, written atomically."""
    if path.suffix.lower() != ".png":
        raise OutputError(f"-o {path}: must name a .png file")
    buffer = io.BytesIO()
    figure_of(stats).savefig(buffer, format="png", dpi=90)
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as exc:
        raise OutputError(f"-o {path}: cannot write ({exc.strerror or exc})") from None
