"""Per-split metric accumulators: batches in, the JSON-ready dict of `metrics.json` out (definitions in
`segshards.train.metrics`)."""

from collections.abc import Sequence
from typing import Any

import torch

from segshards.train.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    circle_iou,
    dice_per_class,
    iou_per_class,
    macro_mean,
    pixel_accuracy,
)

Batch = dict[str, Any]


def circle_scale(image: torch.Tensor) -> torch.Tensor:
    """(3,) divisors taking a pixel circle (cx, cy, r) to the model's 0..1 units: (W, H, max(H, W))."""
    h, w = image.shape[-2:]
    return torch.tensor([w, h, max(h, w)], dtype=torch.float32, device=image.device)


def circle_pixels(circle: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The model's normalised (B, 3) circles in pixel units of `image`."""
    return circle * circle_scale(image)


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
    """Confusion-matrix metrics keyed by class name: pixel accuracy, IoU per class, `miou` and `miou_objects`;
    a 2-class set adds `iou` (its object class), a larger one Dice per class."""

    def __init__(
        self, class_names: Sequence[str], *, background: int = 0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        self.class_names, self.background = list(class_names), background
        self.matrix = ConfusionMatrix(len(self.class_names), ignore_index=ignore_index)

    def update(self, outputs: torch.Tensor, batch: Batch, loss: torch.Tensor) -> None:
        super().update(outputs, batch, loss)
        self.matrix.update(outputs.argmax(dim=1), batch["mask"])  # (B, K, H, W) logits -> (B, H, W)

    def result(self) -> dict[str, Any]:
        matrix = self.matrix.result()
        ious = iou_per_class(matrix)
        objects = [k for k in range(len(ious)) if k != self.background]
        out = super().result() | {
            "pixel_accuracy": pixel_accuracy(matrix),
            "iou_per_class": dict(zip(self.class_names, ious, strict=True)),
            "miou": macro_mean(ious),
            "miou_objects": macro_mean(ious, objects),
            "confusion_matrix": matrix.tolist(),
        }
        if len(ious) == 2:
            return out | {"iou": ious[objects[0]]}
        dice = dice_per_class(matrix)
        return out | {
            "dice_macro": macro_mean(dice, objects),
            "dice_per_class": {self.class_names[k]: dice[k] for k in objects},
            "dice_background": dice[self.background],
        }


class CircleMetrics(Metrics):
    """Classification accuracy and exact circle IoU, overall and per class (keyed by class name)."""

    def __init__(self, class_names: Sequence[str], *, label: str = "label", circle: str = "circle") -> None:
        super().__init__()
        self.class_names, self.label, self.circle = list(class_names), label, circle
        k = len(self.class_names)
        self.correct = torch.zeros(k, dtype=torch.int64)
        self.count = torch.zeros(k, dtype=torch.int64)
        self.iou_sum = torch.zeros(k, dtype=torch.float64)

    def update(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch, loss: torch.Tensor) -> None:
        super().update(outputs, batch, loss)
        logits, circle = outputs
        labels = batch[self.label].cpu()
        right = (logits.argmax(dim=1).cpu() == labels).long()
        ious = circle_iou(circle_pixels(circle.float(), batch["image"]).cpu(), batch[self.circle].cpu())
        k = len(self.count)
        self.count += torch.bincount(labels, minlength=k)
        self.correct += torch.bincount(labels, weights=right.double(), minlength=k).long()
        self.iou_sum += torch.bincount(labels, weights=ious, minlength=k)

    def result(self) -> dict[str, Any]:
        n = int(self.count.sum())

        def per_class(sums: torch.Tensor) -> dict[str, float | None]:
            return {
                name: float(sums[k]) / int(self.count[k]) if self.count[k] else None
                for k, name in enumerate(self.class_names)
            }

        return super().result() | {
            "accuracy": int(self.correct.sum()) / n if n else None,
            "circle_iou": float(self.iou_sum.sum()) / n if n else None,
            "accuracy_per_class": per_class(self.correct),
            "circle_iou_per_class": per_class(self.iou_sum),
        }
