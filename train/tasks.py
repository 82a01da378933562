"""What differs between recipes: the model, the loss, the metrics of a split, and the CPU defaults."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segshards.train.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    binary_iou,
    circle_iou,
    dice_per_class,
    iou_per_class,
    macro_mean,
    pixel_accuracy,
)
from segshards.train.models import CircleNet, UNet

Batch = dict[str, Any]


@dataclass(frozen=True)
class Defaults:
    """A recipe's CPU training configuration (what `make train` runs); every field has a CLI option."""

    epochs: int
    batch_size: int
    lr: float
    samples_per_epoch: int | None  # None: the whole train split each epoch
    widths: tuple[int, ...]
    stem: int = 1


class Metrics:
    """Accumulates one split's metrics batch by batch; `result()` gives the JSON-ready dict."""

    def __init__(self) -> None:
        self.loss_sum, self.samples = 0.0, 0

    def update(self, outputs: Any, batch: Batch, loss: torch.Tensor) -> None:
        n = len(batch["image"])
        self.loss_sum += float(loss) * n
        self.samples += n

    def result(self) -> dict[str, Any]:
        return {"loss": self.loss_sum / self.samples if self.samples else None, "samples": self.samples}


class SegmentationMetrics(Metrics):
    """Confusion-matrix metrics: IoU per class; binary sets add `iou`, multi-class sets Dice per class."""

    def __init__(self, num_classes: int, class_names: list[str]) -> None:
        super().__init__()
        self.matrix = ConfusionMatrix(num_classes)
        self.class_names = class_names

    def update(self, outputs: torch.Tensor, batch: Batch, loss: torch.Tensor) -> None:
        super().update(outputs, batch, loss)
        self.matrix.update(outputs.argmax(dim=1), batch["mask"])  # (B, K, H, W) logits -> (B, H, W)

    def result(self) -> dict[str, Any]:
        matrix = self.matrix.result()
        ious = iou_per_class(matrix)
        out = super().result() | {
            "pixel_accuracy": pixel_accuracy(matrix),
            "iou_per_class": dict(zip(self.class_names, ious, strict=True)),
            "miou": macro_mean(ious),
            "confusion_matrix": matrix.tolist(),
        }
        if len(ious) == 2:
            return out | {"iou": binary_iou(matrix)}
        dice = dice_per_class(matrix)
        foreground = range(1, len(dice))
        return out | {
            "dice_macro": macro_mean(dice, foreground),
            "dice_per_class": {self.class_names[k]: dice[k] for k in foreground},
            "dice_background": dice[0],
        }


class CircleMetrics(Metrics):
    """Classification accuracy and exact circle IoU, overall and per digit."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.correct = torch.zeros(num_classes, dtype=torch.int64)
        self.count = torch.zeros(num_classes, dtype=torch.int64)
        self.iou_sum = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch, loss: torch.Tensor) -> None:
        super().update(outputs, batch, loss)
        logits, circle = outputs
        labels = batch["label"].cpu()
        right = (logits.argmax(dim=1).cpu() == labels).long()
        ious = circle_iou(circle_pixels(circle.float(), batch["image"]).cpu(), batch["circle"].cpu())
        k = len(self.count)
        self.count += torch.bincount(labels, minlength=k)
        self.correct += torch.bincount(labels, weights=right.double(), minlength=k).long()
        self.iou_sum += torch.bincount(labels, weights=ious, minlength=k)

    def result(self) -> dict[str, Any]:
        n = int(self.count.sum())
        per_class = range(len(self.count))
        return super().result() | {
            "accuracy": int(self.correct.sum()) / n if n else None,
            "circle_iou": float(self.iou_sum.sum()) / n if n else None,
            "accuracy_per_class": {
                str(k): int(self.correct[k]) / int(self.count[k]) if self.count[k] else None
                for k in per_class
            },
            "circle_iou_per_class": {
                str(k): float(self.iou_sum[k]) / int(self.count[k]) if self.count[k] else None
                for k in per_class
            },
        }


def circle_scale(image: torch.Tensor) -> torch.Tensor:
    """(3,) divisors taking a pixel circle (cx, cy, r) to the model's 0..1 units: (W, H, max(H, W))."""
    h, w = image.shape[-2:]
    return torch.tensor([w, h, max(h, w)], dtype=torch.float32, device=image.device)


def circle_pixels(circle: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The model's normalised (B, 3) circles in pixel units of `image`."""
    return circle * circle_scale(image)


class Task:
    """Base: a recipe's model, loss and metrics. `primary` names the metrics drawn in curves.png."""

    kind = ""
    primary: tuple[str, ...] = ()
    defaults = Defaults(epochs=1, batch_size=64, lr=3e-3, samples_per_epoch=None, widths=(16, 32, 64))

    def __init__(self, recipe: str, num_classes: int, in_channels: int) -> None:
        self.recipe, self.num_classes, self.in_channels = recipe, num_classes, in_channels

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> Metrics:
        raise NotImplementedError


class SegmentationTask(Task):
    """Per-pixel classes with a compact U-Net and cross-entropy (pixels labelled 255 are ignored)."""

    kind = "segmentation"

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        return UNet(in_channels=self.in_channels, num_classes=self.num_classes, widths=widths, stem=stem)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        # (B, K, H, W) logits, made contiguous: log-softmax over channels is slow on channels-last tensors.
        return F.cross_entropy(outputs.float().contiguous(), batch["mask"], ignore_index=IGNORE_INDEX)

    def class_names(self) -> list[str]:
        return [str(k) for k in range(self.num_classes)]

    def metrics(self) -> Metrics:
        return SegmentationMetrics(self.num_classes, self.class_names())


class ForegroundTask(SegmentationTask):
    primary = ("iou",)
    defaults = Defaults(epochs=2, batch_size=64, lr=3e-3, samples_per_epoch=None, widths=(8, 16, 32))

    def class_names(self) -> list[str]:
        return ["background", "foreground"]


class GridTask(SegmentationTask):
    """mnist-grid: mask class d + 1 is digit d; per-class results are keyed by the digit."""

    primary = ("dice_macro",)
    defaults = Defaults(
        epochs=4, batch_size=64, lr=6e-3, samples_per_epoch=32_000, widths=(16, 32, 64), stem=2
    )

    def class_names(self) -> list[str]:
        return ["background"] + [str(d) for d in range(self.num_classes - 1)]


class CircleTask(Task):
    """mnist-circle: digit class (cross-entropy) and enclosing circle (smooth L1 in pixels, beta 1 px)."""

    kind = "circle"
    primary = ("accuracy", "circle_iou")
    defaults = Defaults(epochs=3, batch_size=64, lr=3e-3, samples_per_epoch=None, widths=(16, 32))

    def build_model(self, widths: tuple[int, ...], stem: int) -> nn.Module:
        if len(widths) != 2:
            raise ValueError(f"CircleNet takes two widths, got {widths}")
        return CircleNet(in_channels=self.in_channels, num_classes=10, widths=(widths[0], widths[1]))

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
        logits, circle = outputs  # (B, 10), (B, 3) normalised
        # Pixel units make beta = 1 mean "quadratic within a pixel", whatever the image size.
        circle_loss = F.smooth_l1_loss(
            circle_pixels(circle.float(), batch["image"]), batch["circle"], beta=1.0
        )
        return F.cross_entropy(logits.float(), batch["label"]) + circle_loss

    def metrics(self) -> Metrics:
        return CircleMetrics(10)


TASKS: dict[str, type[Task]] = {
    "mnist-foreground": ForegroundTask,
    "mnist-circle": CircleTask,
    "mnist-grid": GridTask,
}


def task_for(recipe: str, num_classes: int, in_channels: int) -> Task:
    """The task of a recipe; unknown recipes with masks train as plain segmentation (e.g. COCO)."""
    return TASKS.get(recipe, SegmentationTask)(recipe, num_classes, in_channels)
