"""What a training run reads from a set's manifest before any sample: recipe, schema, split sizes, palette."""

import json
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


def parse_mix(
    values: Sequence[str], class_maps: Sequence[str] = ()
) -> tuple[str, list[dict[str, Any]] | None]:
    """`--data A [--data B:0.3 ...] [--class-map B=FILE ...]`: the first set (val, the model's schema) and,
    for more than one set or any class map, the mix: each `SOURCE[:R]` read as `Stream(SOURCE, repeat=R)`
    (R samples per sample of its train split per epoch; without R, every sample once), with the class map
    given for its source."""
    streams: list[dict[str, Any]] = []
    for value in values:
        match = WEIGHT.match(value)
        stream: dict[str, Any] = {"source": match["source"] if match else value}
        if match:
            stream["repeat"] = float(match["repeat"])
        streams.append(stream)
    maps = read_class_maps(class_maps, [s["source"] for s in streams])
    for stream in streams:
        if stream["source"] in maps:
            stream["class_map"] = maps[stream["source"]]
    if len(streams) == 1 and set(streams[0]) == {"source"}:
        return streams[0]["source"], None
    return streams[0]["source"], streams


def read_class_maps(values: Sequence[str], sources: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """`--class-map SOURCE=FILE` values: each a JSON object of the set's class names -> the mix's class
    names (or null: ignore, 255), keyed by the `--data` source it is for (as given, without `:R`)."""
    maps: dict[str, dict[str, str | None]] = {}
    for value in values:
        source = next((x for x in sources if value.startswith(f"{x}=")), None)
        if source is None:
            raise ConfigError(
                f"--class-map {value}: expected SOURCE=FILE with SOURCE one of the --data sources "
                f"({', '.join(sources)})"
            )
        if source in maps:
            raise ConfigError(f"--class-map {value}: {source} already has a class map")
        maps[source] = read_class_map(value[len(source) + 1 :], f"--class-map {value}")
    return maps


def read_class_map(path: str, where: str) -> dict[str, str | None]:
    """One class-map file: a JSON object of class name -> class name or null, checked."""
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {path} is not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: {path} must hold a JSON object of class name -> class name or null")
    for key, target in mapping.items():
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"{where}: {path}: class {key!r} maps to {target!r}, not a class name or null")
    return mapping


def mix_streams(mix: Sequence[dict[str, Any]]) -> list[Stream]:
    """The loader's Streams of a run's recorded mix."""
    return [Stream(s["source"], repeat=s.get("repeat"), class_map=s.get("class_map")) for s in mix]


def read_set(data: str) -> SetInfo:
    """The SetInfo of the set at `data` (a folder, or an http(s)/s3 URL of one), read through the loaders."""
    if data.rstrip("/").endswith((".tar", ".tgz", ".tar.gz")):
        raise ConfigError(f"--data {data}: give the set's folder (with its manifest.json), not shard URLs")
    _, where, manifest = read_set_manifest(data, RetryPolicy())
    counts = {name: int(info["count"]) for name, info in manifest["splits"].items()}
    palette = np.ascontiguousarray(manifest_palette(manifest)[:, ::-1])  # BGR -> RGB
    return SetInfo(data, manifest["recipe"], schema_of(manifest, where), counts, palette)
