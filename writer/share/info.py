"""`segshards info SET`: what a set holds (splits, classes, schema, size, location), read from its manifest
alone, wherever the set lies (a folder, `s3://`, `https://`)."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segshards.writer.format.manifest import split_names
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.format.wids_index import index_entries
from segshards.writer.storage.store import open_store
from segshards.writer.storage.urls import read_set_manifest, scheme_of


@dataclass(frozen=True)
class SetInfo:
    """A set's facts as `info` prints them: where it is, its manifest, and its schema."""

    location: str
    manifest: dict[str, Any]
    schema: SampleSchema

    @property
    def shard_bytes(self) -> int:
        return sum(e["bytes"] for s in self.manifest["splits"].values() for e in s["shards"])

    @property
    def shards(self) -> int:
        return sum(len(s["shards"]) for s in self.manifest["splits"].values())

    @property
    def samples(self) -> int:
        return sum(s["count"] for s in self.manifest["splits"].values())

    def summary(self) -> dict[str, Any]:
        """The facts as one JSON-ready object (`info --json`)."""
        m = self.manifest
        return {
            "location": self.location,
            "recipe": m.get("recipe"),
            "format_version": m.get("format_version"),
            "segshards_version": m.get("segshards_version"),
            "seed": m.get("seed"),
            "splits": {
                s: {"samples": m["splits"][s]["count"], "shards": len(m["splits"][s]["shards"])}
                for s in split_names(m)
            },
            "samples": self.samples,
            "shards": self.shards,
            "bytes": self.shard_bytes + self.index_bytes,
            "shard_bytes": self.shard_bytes,
            "classes": list(self.schema.classes),
            "schema": self.schema.to_json(),
            "licence": m.get("source", {}).get("licence", {}).get("id"),
            "duplicates_rejected": m.get("duplicates_rejected"),
        }

    @property
    def index_bytes(self) -> int:
        sizes = [e.get("bytes") for _, e in index_entries(self.manifest) if isinstance(e, dict)]
        return sum(n for n in sizes if isinstance(n, int) and n >= 0)


def set_info(location: str | Path) -> SetInfo:
    """The facts of the set at `location` (a folder, `s3://` or `http(s)://`), from its manifest, validated
    as `verify` and the loaders read it."""
    if scheme_of(str(location)) == "s3":
        open_store(location).check()  # a missing bucket or refused credentials said as such
    folder, manifest_url, manifest = read_set_manifest(location)
    return SetInfo(folder.rstrip("/") or folder, manifest, schema_of(manifest, manifest_url))


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB ({n:,} bytes)"


def describe_schema(schema: SampleSchema) -> list[str]:
    """The schema's lines: image, mask, targets, suggested training."""
    size = "x".join(map(str, schema.size[::-1])) if schema.size else "sizes vary"
    channels = {1: "grey", 3: "colour"}.get(schema.channels, f"{schema.channels} channels")
    ignore = "none" if schema.ignore is None else str(schema.ignore)
    lines = [
        f"image     {schema.image}, {channels}, {size}",
        f"mask      {schema.mask}, {schema.num_classes} classes, background {schema.background}, ignore {ignore}",
    ]
    for t in schema.targets:
        named = f", {len(t.classes)} classes" if t.classes else ""
        shape = f"[{', '.join(map(str, t.shape))}]" if t.shape else ""
        lines.append(f"target    {t.name}: {t.role}, {t.dtype}{shape}{named}")
    return [*lines, f"training  {describe_training(schema.training)}"]


def describe_training(training: Mapping[str, Any]) -> str:
    """The recipe's suggested training options as recorded (`segshards train` takes those left out from
    here), each `name value` with the value as compact JSON, so a list's commas never read as separators."""
    if not training:
        return "none suggested"
    return ", ".join(f"{k} {json.dumps(v, separators=(',', ':'))}" for k, v in sorted(training.items()))


def info_lines(info: SetInfo) -> list[str]:
    """What `segshards info` prints: one fact per line, each led by its name."""
    m = info.manifest
    splits = ", ".join(
        f"{s} {m['splits'][s]['count']:,} ({len(m['splits'][s]['shards'])} shard"
        f"{'s' * (len(m['splits'][s]['shards']) != 1)})"
        for s in split_names(m)
    )
    classes = ", ".join(f"{i} {json.dumps(name)}" for i, name in enumerate(info.schema.classes))
    licence = m.get("source", {}).get("licence", {}).get("id", "not recorded")
    return [
        f"location  {info.location}",
        f"recipe    {m.get('recipe', '?')} (seed {m.get('seed', '?')}; segshards {m.get('segshards_version', '?')}, "
        f"format {m.get('format_version', '?')})",
        f"splits    {splits}; {info.samples:,} samples",
        f"size      {megabytes(info.shard_bytes + info.index_bytes)} in {info.shards} shards"
        + (f" and {len(index_entries(m))} wids indexes" if index_entries(m) else ""),
        *describe_schema(info.schema),
        f"classes   {classes}",
        f"licence   {licence}; {m.get('duplicates_rejected', 0):,} duplicates rejected",
    ]
