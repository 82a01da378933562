"""Figures of a run: curves.png (loss and metrics per epoch) and predictions.png (input, truth, prediction).

Figures are drawn on `matplotlib.figure.Figure` (Agg canvas, no pyplot global state) and written atomically.
"""

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

from segshards.train.metrics import circle_iou
from segshards.writer.atomic import atomic_write
from segshards.writer.preview import default_palette, overlay

PALETTE_RGB = default_palette()[:, ::-1].copy()  # the preview's class colours, as RGB


def save_figure(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())


def plot_curves(history: list[dict[str, Any]], primary: tuple[str, ...], path: Path, *, title: str) -> None:
    """Train and val loss per epoch (left) and the task's val metrics per epoch (right)."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_axes.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    val = [h.get("val") or {} for h in history]
    if any("loss" in v for v in val):
        loss_axes.plot(epochs, [v.get("loss", np.nan) for v in val], "o-", label="val")
    loss_axes.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"{title}: loss")
    loss_axes.legend()
    for name in primary:
        values = [v.get(name) for v in val]
        metric_axes.plot(epochs, [np.nan if x is None else x for x in values], "o-", label=f"val {name}")
    metric_axes.set(xlabel="epoch", title=f"{title}: validation metrics")
    if primary:
        metric_axes.legend()
    metric_axes.grid(alpha=0.3)
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(figure, path)


def as_picture(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W) grey or (H, W, 3) RGB numpy."""
    array = image.cpu().numpy()
    return array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))


def plot_segmentation(
    batch: dict[str, Any], logits: torch.Tensor, path: Path, *, title: str, count: int = 8
) -> None:
    """Rows: input, truth overlaid, prediction overlaid; one column per sample."""
    n = min(count, len(batch["image"]))
    prediction = logits[:n].argmax(dim=1).to(torch.uint8).cpu().numpy()
    figure = Figure(figsize=(1.6 * n, 5.2), layout="constrained")
    axes = figure.subplots(3, n, squeeze=False)
    for i in range(n):
        picture = as_picture(batch["image"][i])
        truth = batch["mask"][i].cpu().numpy().astype(np.uint8)
        for row, shown in enumerate(
            (picture, overlay(picture, truth, PALETTE_RGB), overlay(picture, prediction[i], PALETTE_RGB))
        ):
            axes[row, i].imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
            axes[row, i].set_axis_off()
    for row, name in enumerate(("input", "truth", "prediction")):
        axes[row, 0].set_title(name, loc="left", fontsize=9)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_circles(
    batch: dict[str, Any],
    logits: torch.Tensor,
    circles: torch.Tensor,
    path: Path,
    *,
    title: str,
    count: int = 8,
) -> None:
    """Rows: truth (label, circle in green) and prediction (label, circle in red); one column per sample.

    Pixel (x, y) has its centre at (x, y), as in imshow's default extent, so circles need no shift.
    """
    n = min(count, len(batch["image"]))
    labels = logits[:n].argmax(dim=1).cpu()
    predicted = circles[:n].float().cpu()
    ious = circle_iou(predicted, batch["circle"][:n].cpu())
    figure = Figure(figsize=(1.6 * n, 3.6), layout="constrained")
    axes = figure.subplots(2, n, squeeze=False)
    for i in range(n):
        picture = as_picture(batch["image"][i])
        rows = (
            (batch["circle"][i].tolist(), int(batch["label"][i]), "lime", "truth"),
            (predicted[i].tolist(), int(labels[i]), "red", f"IoU {float(ious[i]):.2f}"),
        )
        for row, ((cx, cy, r), label, colour, caption) in enumerate(rows):
            ax = axes[row, i]
            ax.imshow(picture, cmap="gray", interpolation="nearest")
            ax.add_patch(Circle((cx, cy), max(r, 0.0), fill=False, color=colour, linewidth=1.5))
            ax.set_title(f"{label}  {caption}", fontsize=8)
            ax.set_axis_off()
    figure.suptitle(title)
    save_figure(figure, path)
