"""The recipe contract: everything the writer needs from a dataset, and nothing more.

A recipe is one module holding one class; an instance of it is registered under its `name` in the
`segshards.recipes` entry-point group (built-in recipes are registered there too, in pyproject.toml). It
declares:

- `name`, and `summary`: one line for `segshards build --help`;
- its CLI options (`add_options`), and the spec built from them (`make_spec`): a small picklable value from
  which any worker can open the source; `spec_config` is what the manifest records of those options;
- the sources it reads, checked and checksummed (`describe` -> `SourceInfo`, with their licence);
- its sample schema (`schema` -> `SampleSchema`): image member and channels, mask classes with background
  and ignore ids, and each per-sample target with its dtype, shape and JSON path. The schema goes into the
  manifest, and readers (loaders, `segshards train`) use it instead of any knowledge of the recipe;
- how it proposes candidates (`candidates`): batches of source references with their pixel digests, drawn
  from a generator seeded by (seed, split). The planner accepts or rejects each digest globally (dedup) and
  cuts the accepted ones into shards; a recipe never removes duplicates itself;
- how it renders: `render_batch` turns a shard's planned items into samples, in parallel workers;
- `share`, which may prepare the source once so that workers open it cheaply, and `labels`, the per-sample
  classes counted in the manifest's histogram;
- `shard_size`, its default samples per shard (10,000 small images; ~1,000 photographs), and `planned_keys`:
  True when `render_batch` itself checks that each image is the one planned (e.g. the same file bytes whose
  pixels were hashed while planning), so the writer stores it without decoding and hashing it again;
- optionally `walked_in_build = True` (`RecipeBase`: False) when `candidates` draws from a walk of the source
  that the build ran in its own process: the dask planner then draws them there, not on a worker.

`RecipeBase` gives the optional parts a default (no sharing, `render_batch` over `render`). The machinery
(planning, dedup, shards, manifest, parallel backends) never needs to know which recipe it runs.
"""

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segshards.writer.format.manifest import SPLITS
from segshards.writer.format.sample import Rendered
from segshards.writer.format.schema import SampleSchema

__all__ = [
    "ON_ERROR",
    "SPLITS",
    "UNKNOWN_LICENCE",
    "Candidates",
    "Licence",
    "Recipe",
    "RecipeBase",
    "Rendered",
    "SampleSchema",
    "SourceInfo",
    "add_on_error",
    "seeded_permutation",
]
ON_ERROR = ("raise", "skip")  # what a recipe reading others' files does with a bad record (`add_on_error`)


def add_on_error(parser: argparse.ArgumentParser, item: str) -> None:
    """The `--on-error raise|skip` option of a recipe whose source may hold bad records (`item`s)."""
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="raise",
        dest="on_error",
        help=f"bad input: stop (raise) or leave the {item} out and count it (skip)",
    )


def seeded_permutation(items: list[int], seed: int, *stream: int) -> list[int]:
    """`items` in the order of one permutation drawn from (seed, *stream): a recipe's own stream, apart
    from the planner's (seed, split 0..2)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, *stream]))
    return [items[i] for i in rng.permutation(len(items))]


@dataclass(frozen=True)
class Candidates:
    """A batch of candidate samples: `items` (B, k) int64 rows naming source records, and their digests."""

    items: np.ndarray
    digests: list[bytes]
    codes: np.ndarray | None = None  # (B, 2, 6) near-duplicate codes, where a photo walk computed them


@dataclass(frozen=True)
class Licence:
    """The licence of what a source holds: an SPDX-style id (`cc-by-4.0`, or `other`) and the attribution."""

    id: str
    text: str


UNKNOWN_LICENCE = Licence(
    "other",
    "Source: files supplied at build time (listed below with their checksums). Their licence is the one "
    "their provider grants; segshards cannot know it. State it here before sharing this set.",
)


@dataclass(frozen=True)
class SourceInfo:
    """What the manifest records about a source: its kind, files with checksums, licence and extra facts."""

    kind: str
    files: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)  # added to or overriding the manifest's `mask` entry
    licence: Licence = UNKNOWN_LICENCE


@runtime_checkable
class Recipe(Protocol):
    """A dataset recipe: turns a source and a seeded plan into samples (see the module docstring)."""

    name: str
    summary: str
    shard_size: int  # default samples per shard (`--shard-size`)
    planned_keys: bool  # render_batch vouches that each image is the one planned (no re-hash of its pixels)

    def default_counts(self) -> dict[str, int | None]: ...

    def add_options(self, parser: argparse.ArgumentParser) -> None: ...

    def make_spec(self, options: argparse.Namespace) -> Any: ...

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]: ...

    def describe(self, spec: Any) -> SourceInfo: ...

    def schema(self, spec: Any) -> SampleSchema: ...

    def candidates(self, spec: Any, split: str, rng: np.random.Generator) -> Iterator[Candidates]: ...

    def share(self, spec: Any, folder: Path, *, local: bool) -> Any: ...

    def render_batch(self, spec: Any, items: np.ndarray) -> Iterator[Rendered]: ...

    def labels(self, meta: dict[str, Any]) -> list[int]: ...


class RecipeBase:
    """Defaults for the optional parts of the contract: subclass it and define the rest."""

    name = ""
    summary = ""
    shard_size = 10_000
    planned_keys = False
    walked_in_build = False  # candidates come from a walk run in the build's own process (see above)

    def share(self, spec: Any, folder: Path, *, local: bool) -> Any:
        """Workers open the source from `spec` as it is."""
        return spec

    def render(self, spec: Any, item: np.ndarray) -> Rendered:
        raise NotImplementedError(f"{type(self).__name__} defines neither render nor render_batch")

    def render_batch(self, spec: Any, items: np.ndarray) -> Iterator[Rendered]:
        """One sample per planned item row, through `render`."""
        return (self.render(spec, item) for item in items)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        """No per-sample classes to count."""
        return []
