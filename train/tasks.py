"""What `segshards train` learns from a set, chosen from its sample schema (never from the recipe's name).

- A `class` target together with a `circle` target: classification + circle regression (CircleNet);
- anything else: per-pixel segmentation of the mask's classes (U-Net), pixels at the schema's ignore id
  left out of the loss and the metrics.

A task owns the model, the loss, the metrics of a split and the prediction figure; the loop calls these and
never asks which task it runs.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segshards.train.errors import ConfigError
from segshards.train.models import CircleNet, UNet
from segshards.train.plots import plot_circles, plot_segmentation
from segshards.train.scores import Batch, CircleMetrics, Metrics, SegmentationMetrics, circle_pixels
from segshards.writer.format.schema import SampleSchema, Target

NO_IGNORE = -100  # F.cross_entropy's default: no class id is ignored


class Task:
    """Base: a model, its loss, a split's metrics and a figure. `primary` names the headline metrics."""

    kind = ""
    default_widths: tuple[int, ...] = ()  # when the schema suggests none
    class_names: list[str]  # set by each task

    def __init__(self, in_channels: int, primary: Sequence[str]) -> None:
        self.in_channels, self.primary = in_channels, tuple(primary)

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        raise NotImplementedError

    def size_multiple(self, widths: tuple[int, ...], stem: int) -> int:
        """What the sides of a `--size` must be divisible by for this model."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> Metrics:
        raise NotImplementedError

    def plot(self, raw: Batch, batch: Batch, outputs: Any, path: Path, *, title: str) -> None:
        """predictions.png from a stored (uint8) batch `raw`, its prepared copy `batch` and the outputs."""
        raise NotImplementedError

    def set_class_weights(self, weights: Sequence[float] | np.ndarray | None) -> None:
        """Per-class loss weights: only segmentation takes them (`SegmentationTask`)."""
        if weights is not None:
            raise ConfigError(f"--class-weights auto: only for segmentation sets, not a {self.kind} task")

    def describe(self) -> dict[str, Any]:
        """What the checkpoint records of the task, so `eval` can refuse a set the model does not fit."""
        return {"kind": self.kind, "in_channels": self.in_channels}


class SegmentationTask(Task):
    """Per-pixel classes with a compact U-Net and cross-entropy that skips the ignore id (255)."""

    kind = "segmentation"
    default_widths = (16, 32, 64)

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        in_channels: int,
        background: int = 0,
        ignore: int | None = 255,
        palette: np.ndarray | None = None,
        primary: Sequence[str] = ("miou",),
    ) -> None:
        super().__init__(in_channels, primary)
        self.class_names, self.background, self.ignore = list(class_names), background, ignore
        self.palette = palette
        self.class_weights: torch.Tensor | None = None  # (K,) float32 loss weights (--class-weights)

    def set_class_weights(self, weights: Sequence[float] | np.ndarray | None) -> None:
        """Weight the cross-entropy of each true class (None: unweighted); one weight per class."""
        if weights is not None and len(weights) != self.num_classes:
            raise ConfigError(f"class weights: {len(weights)} given for {self.num_classes} classes")
        self.class_weights = None if weights is None else torch.tensor(list(weights), dtype=torch.float32)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        return UNet(in_channels=self.in_channels, num_classes=self.num_classes, widths=widths, stem=stem)

    def size_multiple(self, widths: tuple[int, ...], stem: int) -> int:
        return stem * 2 ** (len(widths) - 1)  # the U-Net's total stride

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        # (B, K, H, W) logits, made contiguous: log-softmax over channels is slow on channels-last tensors.
        ignore = NO_IGNORE if self.ignore is None else self.ignore
        weight = self.class_weights
        if weight is not None and weight.device != outputs.device:
            weight = self.class_weights = weight.to(outputs.device)  # moved once, kept there
        return F.cross_entropy(
            outputs.float().contiguous(), batch["mask"], weight=weight, ignore_index=ignore
        )

    def metrics(self) -> Metrics:
        ignore = NO_IGNORE if self.ignore is None else self.ignore
        return SegmentationMetrics(self.class_names, background=self.background, ignore_index=ignore)

    def plot(self, raw: Batch, batch: Batch, outputs: torch.Tensor, path: Path, *, title: str) -> None:
        plot_segmentation(
            raw,
            outputs.float(),
            path,
            title=title,
            class_names=self.class_names,
            ignore=self.ignore,
            palette=self.palette,
        )

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"classes": self.class_names}


class CircleTask(Task):
    """A class label (cross-entropy) and an enclosing circle (smooth L1 in pixels, beta 1 px), by CircleNet."""

    kind = "circle"
    default_widths = (16, 32)

    def __init__(
        self, label: Target, circle: Target, *, in_channels: int, primary: Sequence[str] = ("accuracy",)
    ) -> None:
        super().__init__(in_channels, primary)
        self.label, self.circle, self.class_names = label.name, circle.name, list(label.classes)

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        if len(widths) != 2:
            raise ConfigError(f"--widths {','.join(map(str, widths))}: CircleNet takes two widths")
        return CircleNet(
            in_channels=self.in_channels, num_classes=len(self.class_names), widths=(widths[0], widths[1])
        )

    def size_multiple(self, widths: tuple[int, ...], stem: int) -> int:
        return 4  # two 2x2 max-pools

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
        logits, circle = outputs  # (B, K), (B, 3) normalised
        # Pixel units make beta = 1 mean "quadratic within a pixel", whatever the image size.
        circle_loss = F.smooth_l1_loss(
            circle_pixels(circle.float(), batch["image"]), batch[self.circle], beta=1.0
        )
        return F.cross_entropy(logits.float(), batch[self.label]) + circle_loss

    def metrics(self) -> Metrics:
        return CircleMetrics(self.class_names, label=self.label, circle=self.circle)

    def plot(self, raw: Batch, batch: Batch, outputs: Any, path: Path, *, title: str) -> None:
        logits, circle = outputs
        circles = circle_pixels(circle.float(), batch["image"])
        plot_circles(raw, logits, circles, path, title=title, label=self.label, circle=self.circle)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"classes": self.class_names, "targets": [self.label, self.circle]}


def task_for(schema: SampleSchema, *, palette: np.ndarray | None = None) -> Task:
    """The task a set's schema calls for (see the module docstring); ConfigError when it calls for none."""
    metrics = schema.training.get("metrics")
    label, circle = schema.target("class"), schema.target("circle")
    if label is not None and circle is not None:
        if len(label.classes) < 2:
            raise ConfigError(f"schema: class target {label.name!r} names fewer than two classes")
        return CircleTask(label, circle, in_channels=schema.channels, primary=metrics or ("accuracy",))
    if len(schema.classes) < 2:
        raise ConfigError("schema: the mask has fewer than two classes and no class + circle targets")
    return SegmentationTask(
        schema.classes,
        in_channels=schema.channels,
        background=schema.background,
        ignore=schema.ignore,
        palette=palette,
        primary=metrics or ("miou",),
    )


def task_differences(run: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """One line per field of `Task.describe()` that differs between a run's model and a set, for `eval`."""
    lines = []
    for key in sorted(set(run) | set(data)):
        ours, theirs = run.get(key), data.get(key)
        if ours != theirs:
            line = f"{key}: the run has {shown(ours)}, this set has {shown(theirs)}"
            if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
                i = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
                line += f" (first differs at #{i}: {ours[i]} | {theirs[i]})"
            lines.append(line)
    return lines


def shown(value: Any, *, limit: int = 6) -> str:
    """A describe() value in a line: lists as their length and first entries."""
    if isinstance(value, list):
        names = ", ".join(map(str, value[:limit])) + (", ..." if len(value) > limit else "")
        return f"{len(value)} [{names}]"
    return "none" if value is None else str(value)
