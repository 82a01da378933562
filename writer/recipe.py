"""The recipe interface: what the writer machinery needs from a dataset, and nothing more."""

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Rendered:
    """One rendered sample: image (H, W[, 3]) uint8, mask (H, W) uint8 class indices, JSON metadata.

    `image_bytes`, when set, is stored as it is (e.g. an original JPEG) instead of a PNG of `image`.
    """

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]
    image_ext: str = "png"
    image_bytes: bytes | None = None


@dataclass(frozen=True)
class Candidates:
    """A batch of candidate samples: `items` (B, k) int64 rows naming source records, and their digests."""

    items: np.ndarray
    digests: list[bytes]


@dataclass(frozen=True)
class SourceInfo:
    """What the manifest records about a source: its kind, files with checksums, and extra facts."""

    kind: str
    files: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    image_ext: str = "png"  # the stored image member (manifest `sample.image`)
    mask: dict[str, Any] = field(default_factory=dict)  # added to or overriding the manifest's `mask` entry


class Recipe(Protocol):
    """A dataset recipe: turns a source and a seeded plan into samples.

    `spec` is a small picklable value (paths and options) from which every worker can load the source;
    `candidates` runs once, centrally, in a fixed order; `render` runs in parallel workers. A recipe may
    also define `share(spec, folder, *, local) -> spec`: prepare the source once (in `folder`, removed when
    the build ends, or in a cache of this machine when `local`, i.e. the workers run here) so that workers
    open it cheaply, and `render_batch(spec, items) -> Iterator[Rendered]`,
    a vectorised `render` over a whole shard.
    """

    name: str
    num_classes: int  # mask classes including background 0

    def default_counts(self) -> dict[str, int | None]: ...

    def add_options(self, parser: argparse.ArgumentParser) -> None: ...

    def make_spec(self, options: argparse.Namespace) -> Any: ...

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]: ...

    def describe(self, spec: Any) -> SourceInfo: ...

    def candidates(self, spec: Any, split: str, rng: np.random.Generator) -> Iterator[Candidates]: ...

    def render(self, spec: Any, item: np.ndarray) -> Rendered: ...

    def labels(self, meta: dict[str, Any]) -> list[int]: ...
