"""mnist-foreground: each digit with its Otsu foreground mask; the class label is discarded."""

from collections.abc import Iterator

import numpy as np

from segshards.writer.format.schema import SampleSchema
from segshards.writer.recipes.contract import Candidates, Rendered
from segshards.writer.recipes.digits import (
    DigitsSourceMixin,
    DigitsSpec,
    load_digits,
    row_digests,
    source_ref,
    split_pool,
)


class SingleDigitRecipe(DigitsSourceMixin):
    """Shared planning of the one-digit recipes: every unique digit of a split, in a seeded order."""

    name = ""

    def default_counts(self) -> dict[str, int | None]:
        return {"train": None, "val": None, "test": None}

    def supply(self, spec: DigitsSpec, split: str) -> int:
        """The most samples `split` can give: one per digit of its pool (fewer when digits repeat)."""
        return len(split_pool(load_digits(spec), split))

    def candidates(self, spec: DigitsSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        digits = load_digits(spec)
        order = rng.permutation(split_pool(digits, split))
        yield Candidates(items=order[:, None], digests=row_digests(digits.images[order]))


class ForegroundRecipe(SingleDigitRecipe):
    """Image: the 28x28 digit. Mask: 1 where the pixel is above Otsu's threshold."""

    name = "mnist-foreground"
    summary = "each MNIST digit with its Otsu foreground mask (2 classes)"
    # The CPU configuration of `make train` (see the README's Results).
    training = {"epochs": 2, "batch_size": 64, "lr": 3e-3, "samples_per_epoch": None, "widths": [8, 16, 32]}

    def schema(self, spec: DigitsSpec) -> SampleSchema:
        return foreground_schema(self.image_size(spec))

    def render(self, spec: DigitsSpec, item: np.ndarray) -> Rendered:
        digits = load_digits(spec)
        index = int(item[0])
        meta = {"source": source_ref(digits, index)}
        return Rendered(image=digits.images[index], mask=digits.masks_of(index), meta=meta)


def foreground_schema(size: tuple[int, int]) -> SampleSchema:
    """Grey digit, mask 0 background / 1 foreground, no targets."""
    training = {**ForegroundRecipe.training, "stem": 1, "metrics": ["iou"]}
    return SampleSchema("png", 1, size, ("background", "foreground"), training=training)
