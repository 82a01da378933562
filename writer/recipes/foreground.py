"""mnist-foreground: each digit with its Otsu foreground mask; the class label is discarded."""

from collections.abc import Iterator
from typing import Any

import numpy as np

from segshards.writer.recipe import Candidates, Rendered
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
    num_classes = 2

    def default_counts(self) -> dict[str, int | None]:
        return {"train": None, "val": None, "test": None}

    def candidates(self, spec: DigitsSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        digits = load_digits(spec)
        order = rng.permutation(split_pool(digits, split))
        yield Candidates(items=order[:, None], digests=row_digests(digits.images[order]))


class ForegroundRecipe(SingleDigitRecipe):
    """Image: the 28x28 digit. Mask: 1 where the pixel is above Otsu's threshold."""

    name = "mnist-foreground"

    def render(self, spec: DigitsSpec, item: np.ndarray) -> Rendered:
        digits = load_digits(spec)
        index = int(item[0])
        meta = {"source": source_ref(digits, index)}
        return Rendered(image=digits.images[index], mask=digits.masks_of(index), meta=meta)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return []
