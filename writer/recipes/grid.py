"""mnist-grid: four digits of one split composed into a 56x56 2x2 image with a per-pixel class mask."""

from collections.abc import Iterator
from typing import Any

import numpy as np

from segshards.writer.format.schema import SampleSchema, Target
from segshards.writer.recipes.contract import Candidates, Rendered
from segshards.writer.recipes.digits import (
    DigitsSourceMixin,
    DigitsSpec,
    load_digits,
    row_digests,
    source_ref,
    split_pool,
)

BATCH = 4096  # candidates composed and hashed at a time


def compose(tiles: np.ndarray) -> np.ndarray:
    """(B, 4, h, w) tiles, row-major, into (B, 2h, 2w) images."""
    b, _, h, w = tiles.shape
    out = np.empty((b, 2 * h, 2 * w), tiles.dtype)
    for t in range(4):
        row, col = divmod(t, 2)
        out[:, row * h : (row + 1) * h, col * w : (col + 1) * w] = tiles[:, t]
    return out


def gather_compose(images: np.ndarray, items: np.ndarray) -> np.ndarray:
    """compose(images[items]) for (N, h, w) images and (B, 4) indices, in one pass over the pixels.

    Each image row is viewed as one opaque h-byte element, so gathering and placing move whole rows.
    """
    n, h, w = images.shape
    rows = np.ascontiguousarray(images).view(np.dtype((np.void, w * images.itemsize))).reshape(n, h)
    out = np.empty((len(items), 2, h, 2), rows.dtype)
    for t in range(4):
        out[:, t // 2, :, t % 2] = np.take(rows, items[:, t], axis=0)
    return out.view(images.dtype).reshape(len(items), 2 * h, 2 * w)


class GridRecipe(DigitsSourceMixin):
    """Image: digits [a b; c d]. Mask: 0 background, d+1 on the Otsu foreground of digit d."""

    name = "mnist-grid"
    summary = "four MNIST digits in a 2x2 grid; mask class d+1 on digit d (11 classes)"
    training = {
        "epochs": 4,
        "batch_size": 64,
        "lr": 6e-3,
        "samples_per_epoch": 32_000,
        "widths": [16, 32, 64],
        "stem": 2,
    }

    def schema(self, spec: DigitsSpec) -> SampleSchema:
        h, w = self.image_size(spec)
        return grid_schema((2 * h, 2 * w))

    def default_counts(self) -> dict[str, int | None]:
        return {"train": 250_000, "val": 10_000, "test": 10_000}

    def candidates(self, spec: DigitsSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        digits = load_digits(spec)
        pool = split_pool(digits, split)
        if len(pool) == 0:
            return
        while True:
            items = pool[rng.integers(0, len(pool), size=(BATCH, 4))]
            yield Candidates(items=items, digests=row_digests(gather_compose(digits.images, items)))

    def render(self, spec: DigitsSpec, item: np.ndarray) -> Rendered:
        return next(self.render_batch(spec, item[None]))

    def render_batch(self, spec: DigitsSpec, items: np.ndarray) -> Iterator[Rendered]:
        """Compose a whole shard's images and masks at once (B, 56, 56), then wrap each sample."""
        digits = load_digits(spec)
        labels = digits.labels[items]  # (B, 4)
        images = gather_compose(digits.images, items)
        masks = compose(digits.masks_of(items) * (labels + 1)[:, :, None, None].astype(np.uint8))
        for image, mask, item, digit_labels in zip(
            images, masks, items.tolist(), labels.tolist(), strict=True
        ):
            meta = {"digits": digit_labels, "sources": [source_ref(digits, i) for i in item]}
            yield Rendered(image=image, mask=mask, meta=meta)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(d) for d in meta["digits"]]


def grid_schema(size: tuple[int, int]) -> SampleSchema:
    """Grey 2x2 composite; mask class d+1 on digit d; target: the four digits, row-major."""
    digits = Target("digits", "int64", (4,), ("digits",), "value", tuple(str(d) for d in range(10)))
    classes = ("background", *(str(d) for d in range(10)))
    training = {**GridRecipe.training, "metrics": ["dice_macro"]}
    return SampleSchema("png", 1, size, classes, targets=(digits,), training=training)
