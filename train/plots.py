"""Figures of a run: curves.png (loss and metrics per epoch) and predictions.png (input, truth, prediction).

Figures are drawn on `matplotlib.figure.Figure` (Agg canvas, no pyplot global state) and written atomically.
"""

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch
from matplotlib.ticker import MaxNLocator

from segshards.train.metrics import circle_iou
from segshards.writer.format.palette import IGNORE_GREY, default_palette, overlay
from segshards.writer.format.schema import IGNORE
from segshards.writer.storage.atomic import atomic_write

PALETTE_RGB = default_palette()[:, ::-1].copy()  # the preview's class colours, as RGB
MARKERS = "osD^v"  # the val metrics' markers, in order


def save_figure(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())


def plot_curves(
    history: list[dict[str, Any]],
    primary: tuple[str, ...],
    path: Path,
    *,
    title: str,
    losses: Sequence[float] = (),
) -> None:
    """Training loss per step (raw and smoothed) with the epoch means and val loss at each epoch's last step
    (left), and the task's val metrics per epoch, the last values in the legend (right): a one-epoch run
    still shows how its loss went."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    plot_losses(loss_axes, history, losses)
    loss_axes.set(title=f"{title}: loss")
    epochs = [h["epoch"] for h in history]
    val = [h.get("val") or {} for h in history]
    for i, name in enumerate(primary):
        values = [np.nan if v.get(name) is None else v[name] for v in val]
        last = f" (last {values[-1]:.4f})" if values and not np.isnan(values[-1]) else ""
        # Each series its own marker, each smaller than the one before: equal values still all show.
        marker, size = MARKERS[i % len(MARKERS)], max(4, 11 - 3 * i)
        metric_axes.plot(epochs, values, marker=marker, markersize=size, label=f"val {name}{last}")
    metric_axes.set(xlabel="epoch", title=f"{title}: validation metrics")
    if any(name in v for v in val for name in primary):
        metric_axes.legend()
    else:
        metric_axes.text(0.5, 0.5, "no val split", ha="center", va="center", transform=metric_axes.transAxes)
    metric_axes.grid(alpha=0.3)
    metric_axes.set_ylim(-0.02, 1.02)
    metric_axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    metric_axes.set_xlim(0.5, max(epochs, default=1) + 0.5)  # one epoch: one point, still on a readable axis
    save_figure(figure, path)


def plot_losses(axes: Any, history: list[dict[str, Any]], losses: Sequence[float]) -> None:
    """Loss against optimizer steps: each step's (faint), smoothed, and per epoch (train mean, val)."""
    ends = [h["step"] for h in history]  # the step count at the end of each epoch
    if len(losses):
        steps = np.arange(1, len(losses) + 1)
        axes.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train, each step")
        axes.plot(steps, smoothed(losses), color="tab:blue", label="train, smoothed")
    axes.plot(ends, [h["train_loss"] for h in history], "o", color="tab:blue", label="train, epoch mean")
    val = [h.get("val") or {} for h in history]
    if any("loss" in v for v in val):
        axes.plot(ends, [v.get("loss", np.nan) for v in val], "o-", color="tab:orange", label="val")
    for end in ends[:-1]:
        axes.axvline(end, color="grey", alpha=0.3, linewidth=0.8)  # epoch boundaries
    shown = [v for v in [*losses, *(h["train_loss"] for h in history)] if v > 0]
    wide = bool(shown) and max(shown) > 5 * min(shown)  # a log scale only where it spreads the curve out
    axes.set(xlabel="step (grey lines: epoch ends)" if len(ends) > 1 else "step", ylabel="loss")
    axes.set_yscale("log" if wide else "linear")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0, max([len(losses), *ends], default=1) + 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def smoothed(values: Sequence[float], *, weight: float | None = None) -> np.ndarray:
    """An exponential moving average, bias-corrected (the first points are not pulled towards 0); by
    default it spans about a twentieth of the run."""
    x = np.asarray(values, dtype=np.float64)
    beta = weight if weight is not None else 1.0 - 1.0 / max(1.0, len(x) / 20)
    out, average = np.empty_like(x), 0.0
    for i, value in enumerate(x):
        average = beta * average + (1 - beta) * value
        out[i] = average / (1 - beta ** (i + 1)) if beta < 1 else value
    return out


def as_picture(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W) grey or (H, W, 3) RGB numpy."""
    array = image.cpu().numpy()
    return array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))


# Ignore and letterbox padding, in truth and prediction: a grey no class colour comes near (see the palette).
GREY = np.array(IGNORE_GREY, dtype=np.uint8)


def rgb(colour: np.ndarray) -> tuple[float, float, float]:
    """A uint8 RGB triple as matplotlib's 0..1 floats."""
    r, g, b = (float(c) / 255 for c in colour[:3])
    return r, g, b


def paint(picture: np.ndarray, mask: np.ndarray, palette: np.ndarray, ignore: int | None) -> np.ndarray:
    """(H, W, 3) RGB: `picture` with object classes tinted in their colour and ignored pixels grey."""
    shown = overlay(picture, mask, palette)
    if shown.ndim == 2:
        shown = np.repeat(shown[..., None], 3, axis=2)
    if ignore is not None:
        shown[mask == ignore] = GREY
    return shown


def legend_handles(
    truth: np.ndarray, prediction: np.ndarray, names: list[str], colours: np.ndarray, ignore: int | None
) -> list[Patch]:
    """One legend entry per class in the truth or the prediction, and one for ignored pixels if any; each
    labelled `name (id)` as `segshards preview` labels its legend, so the two read alike and classes of
    similar colour are told apart by id."""
    present = sorted({int(k) for k in np.unique(np.concatenate([truth.ravel(), prediction.ravel()]))})
    handles = [
        Patch(color=rgb(colours[k]), label=f"{names[k]} ({k})" + (", no tint" if k == 0 else ""))
        for k in present
        if k < len(names)
    ]
    if ignore is not None and ignore in present:
        handles.append(Patch(color=rgb(GREY), label=f"ignored / padding ({ignore})"))
    return handles


def plot_segmentation(
    batch: dict[str, Any],
    logits: torch.Tensor,
    path: Path,
    *,
    title: str,
    class_names: list[str],
    ignore: int | None = IGNORE,
    palette: np.ndarray | None = None,
    count: int = 4,
) -> None:
    """One row per sample: image, truth, prediction side by side; a legend names the classes shown.

    Pixels the truth ignores (255: crowd, overlaps, letterbox padding) are grey in the truth and in the
    prediction alike, since the model is neither trained nor scored there.
    """
    colours = PALETTE_RGB if palette is None else palette
    n = min(count, len(batch["image"]))
    prediction = logits[:n].argmax(dim=1).to(torch.uint8).cpu().numpy()  # (n, H, W)
    truth = batch["mask"][:n].cpu().numpy().astype(np.uint8)
    if ignore is not None:
        prediction[truth == ignore] = ignore
    side = 3.0 if max(truth.shape[1:]) > 64 else 1.8  # inches per panel: photographs larger than digits
    handles = legend_handles(truth, prediction, class_names, colours, ignore)
    columns = -(-len(handles) // max(8, int(n * side * 72 / 16)))  # rows of 9 pt text the height holds
    figure = Figure(figsize=(3 * side + 2.6 * columns, n * side + 0.6), layout="constrained")
    axes = figure.subplots(n, 3, squeeze=False)
    for i in range(n):
        picture = as_picture(batch["image"][i])
        panels = (
            picture,
            paint(picture, truth[i], colours, ignore),
            paint(picture, prediction[i], colours, ignore),
        )
        for column, shown in enumerate(panels):
            axes[i, column].imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
            axes[i, column].set_axis_off()
    for column, name in enumerate(("image", "truth", "prediction")):
        axes[0, column].set_title(name, fontsize=11)
    figure.legend(handles=handles, loc="outside right upper", fontsize=9, title="classes", ncols=columns)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_circles(
    batch: dict[str, Any],
    logits: torch.Tensor,
    circles: torch.Tensor,
    path: Path,
    *,
    title: str,
    label: str = "label",
    circle: str = "circle",
    count: int = 8,
) -> None:
    """Rows: truth (label, circle in green) and prediction (label, circle in red); one column per sample.

    Pixel (x, y) has its centre at (x, y), as in imshow's default extent, so circles need no shift.
    """
    n = min(count, len(batch["image"]))
    labels = logits[:n].argmax(dim=1).cpu()
    predicted = circles[:n].float().cpu()
    ious = circle_iou(predicted, batch[circle][:n].cpu())
    figure = Figure(figsize=(1.6 * n, 3.6), layout="constrained")
    axes = figure.subplots(2, n, squeeze=False)
    for i in range(n):
        picture = as_picture(batch["image"][i])
        rows = (
            (batch[circle][i].tolist(), int(batch[label][i]), "lime", "truth"),
            (predicted[i].tolist(), int(labels[i]), "red", f"IoU {float(ious[i]):.2f}"),
        )
        for row, ((cx, cy, r), name, colour, caption) in enumerate(rows):
            ax = axes[row, i]
            ax.imshow(picture, cmap="gray", interpolation="nearest")
            ax.add_patch(Circle((cx, cy), max(r, 0.0), fill=False, color=colour, linewidth=1.5))
            ax.set_title(f"{name}  {caption}", fontsize=8)
            ax.set_axis_off()
    figure.suptitle(title)
    save_figure(figure, path)
