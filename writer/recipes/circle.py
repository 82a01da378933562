"""mnist-circle: each digit with its class and the minimal enclosing circle of its Otsu mask."""

from typing import Any

import cv2
import numpy as np

from segshards.writer.format.schema import SampleSchema, Target
from segshards.writer.recipes.contract import Rendered
from segshards.writer.recipes.digits import DigitsSpec, load_digits, source_ref
from segshards.writer.recipes.foreground import SingleDigitRecipe


def enclosing_circle(mask: np.ndarray) -> tuple[float, float, float]:
    """(cx, cy, r) of the smallest circle holding every mask pixel centre; pixel (x, y) sits at (x, y)."""
    points = cv2.findNonZero(mask)
    if points is None:
        return 0.0, 0.0, 0.0
    (cx, cy), r = cv2.minEnclosingCircle(points)
    return float(cx), float(cy), float(r)


def circle_mask(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Filled circle as a 0/1 uint8 mask: pixels whose centre lies within the circle."""
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r + 1e-6
    return inside.astype(np.uint8)


class CircleRecipe(SingleDigitRecipe):
    """Image: the 28x28 digit. Mask: its filled enclosing circle. Meta: label and circle (cx, cy, r)."""

    name = "mnist-circle"
    summary = "each MNIST digit with its class and the filled minimal enclosing circle of its strokes"
    training = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "samples_per_epoch": None, "widths": [16, 32]}

    def schema(self, spec: DigitsSpec) -> SampleSchema:
        return circle_schema(self.image_size(spec))

    def render(self, spec: DigitsSpec, item: np.ndarray) -> Rendered:
        digits = load_digits(spec)
        index = int(item[0])
        cx, cy, r = enclosing_circle(digits.masks_of(index))
        meta = {
            "label": int(digits.labels[index]),
            "circle": {"cx": cx, "cy": cy, "r": r},
            "source": source_ref(digits, index),
        }
        mask = circle_mask(digits.images[index].shape, cx, cy, r)
        return Rendered(image=digits.images[index], mask=mask, meta=meta)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(meta["label"])]


def circle_schema(size: tuple[int, int]) -> SampleSchema:
    """Grey digit, mask 0 background / 1 inside the circle; targets: the digit class and the circle in pixels."""
    label = Target("label", "int64", (), ("label",), "class", tuple(str(d) for d in range(10)))
    circle = Target("circle", "float32", (3,), ("circle.cx", "circle.cy", "circle.r"), "circle")
    training = {**CircleRecipe.training, "stem": 1, "metrics": ["accuracy", "circle_iou"]}
    return SampleSchema("png", 1, size, ("background", "circle"), targets=(label, circle), training=training)
