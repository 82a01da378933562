"""What a training run reads from a set's manifest before any sample: recipe, schema, split sizes, palette."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segshards.loaders import RetryPolicy, Stream
from segshards.loaders.source import read_set_manifest
from segshards.train.errors import ConfigError
from segshards.writer.format.palette import manifest_palette
from segshards.writer.format.schema import SampleSchema, schema_of


@dataclass(frozen=True)
class SetInfo:
    """A shard set as `segshards train` and `eval` see it."""

    data: str
    recipe: str  # for reports and for checking that `eval` scores the set a run was trained on
    schema: SampleSchema
    split_counts: dict[str, int]  # samples per split, as the manifest records them
    palette: np.ndarray  # (256, 3) uint8 RGB class colours to draw in (`manifest_palette`)

    def has_split(self, split: str) -> bool:
        """True when the manifest lists `split` with at least one sample."""
        return self.split_counts.get(split, 0) > 0

    def training_size(self) -> tuple[int, int] | None:
        """The (H, W) variable-size images train at by default (the schema's hint); None for fixed sizes."""
        size = self.schema.training.get("size")
        if self.schema.size is not None or size is None:
            return None
        if not isinstance(size, list | tuple) or len(size) != 2 or not all(type(v) is int for v in size):
            raise ConfigError(
                f"--data {self.data}: manifest schema.training.size {str(size)[:40]} is not [H, W]"
            )
        return size[0], size[1]


WEIGHT = re.compile(r"^(?P<source>.+):(?P<repeat>\d+(\.\d*)?|\.\d+)$")


def parse_mix(values: Sequence[str]) -> tuple[str, list[dict[str, Any]] | None]:
    """`--data A [--data B:0.3 ...]`: the first set (val, eval, the model's schema) and, for more than one,
    the mix: each `SOURCE[:R]` read as `Stream(SOURCE, repeat=R)` (R samples per sample of its train split
    per epoch; without R, every sample once)."""
    streams: list[dict[str, Any]] = []
    for value in values:
        match = WEIGHT.match(value)
        stream: dict[str, Any] = {"source": match["source"] if match else value}
        if match:
            stream["repeat"] = float(match["repeat"])
        streams.append(stream)
    if len(streams) == 1 and "repeat" not in streams[0]:
        return streams[0]["source"], None
    return streams[0]["source"], streams


def mix_streams(mix: Sequence[dict[str, Any]]) -> list[Stream]:
    """The loader's Streams of a run's recorded mix."""
    return [Stream(s["source"], repeat=s.get("repeat")) for s in mix]


def read_set(data: str) -> SetInfo:
    """The SetInfo of the set at `data` (a folder, or an http(s)/s3 URL of one), read through the loaders."""
    if data.rstrip("/").endswith((".tar", ".tgz", ".tar.gz")):
        raise ConfigError(f"--data {data}: give the set's folder (with its manifest.json), not shard URLs")
    _, where, manifest = read_set_manifest(data, RetryPolicy())
    counts = {name: int(info["count"]) for name, info in manifest["splits"].items()}
    palette = np.ascontiguousarray(manifest_palette(manifest)[:, ::-1])  # BGR -> RGB
    return SetInfo(data, manifest["recipe"], schema_of(manifest, where), counts, palette)
