"""What a training run reads from a set's manifest before any sample: recipe, schema, split sizes, palette."""

from dataclasses import dataclass

import numpy as np

from segshards.loaders import RetryPolicy
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


def read_set(data: str) -> SetInfo:
    """The SetInfo of the set at `data` (a folder, or an http(s)/s3 URL of one), read through the loaders."""
    if data.rstrip("/").endswith((".tar", ".tgz", ".tar.gz")):
        raise ConfigError(f"--data {data}: give the set's folder (with its manifest.json), not shard URLs")
    _, where, manifest = read_set_manifest(data, RetryPolicy())
    counts = {name: int(info["count"]) for name, info in manifest["splits"].items()}
    palette = np.ascontiguousarray(manifest_palette(manifest)[:, ::-1])  # BGR -> RGB
    return SetInfo(data, manifest["recipe"], schema_of(manifest, where), counts, palette)
