"""Resolving a loader source into a shard list: a set's folder (local, http(s), s3) or brace-expanded URLs.

A folder source is read through its `manifest.json`, which gives the split's shards in order, the sample
count of each (hence the epoch length), their byte counts and sha256 (checked as they are read:
`segshards.loaders.integrity`), and the sample schema (image member, mask classes, targets).
A source ending in `.tar`, e.g. `s3://bucket/set/train-{000000..000003}.tar`, is a list of shard URLs
without a manifest: the split argument is not used, the epoch length is unknown (`len(loader)` raises
TypeError), shard sample counts, byte counts and sha256 are not checked (there is nothing to check them
against), and targets are only produced when a schema is given
(`make_loader(..., schema="s3://bucket/set")`: the set whose manifest holds it, or a `SampleSchema`).
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.manifest import shard_entries
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.storage.retry import RetryPolicy
from segshards.writer.storage.urls import (
    join_url,
    local_path,
    read_set_manifest,
    refuse_credentials,
    scheme_of,
    url_path,
)

__all__ = ["ShardSet", "read_set_manifest", "resolve"]


@dataclass(frozen=True)
class ShardSet:
    """The shards one loader reads, in canonical order, with what the manifest says about them."""

    source: str
    urls: tuple[str, ...]
    counts: tuple[int, ...] | None  # samples per shard; None without a manifest
    recipe: str | None  # the recipe that wrote the set, for reports only: readers go by the schema
    schema: SampleSchema | None  # None for shard URLs given without a schema
    sizes: tuple[int, ...] | None = None  # bytes per shard; None without a manifest
    sha256: tuple[str, ...] | None = None  # hex digest per shard; None without a manifest

    @property
    def image_ext(self) -> str | None:
        return None if self.schema is None else self.schema.image

    @property
    def num_classes(self) -> int | None:
        return None if self.schema is None else self.schema.num_classes

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)

    def names(self) -> list[str]:
        """Shard file names (what identifies the set wherever it is stored)."""
        return [url.rstrip("/").rsplit("/", 1)[-1] for url in self.urls]


def is_shard_pattern(source: str) -> bool:
    """True for a shard URL or brace pattern (`...tar`, before any query string), false for a set's
    folder."""
    return url_path(source).rstrip("/").endswith((".tar", ".tar.gz", ".tgz"))


def given_schema(schema: SampleSchema | str | Path | None, retry: RetryPolicy | None) -> SampleSchema | None:
    """A schema given directly, or read from the set (folder or manifest URL) that `schema` names."""
    if schema is None or isinstance(schema, SampleSchema):
        return schema
    _, manifest_url, manifest = read_set_manifest(str(schema), retry)
    return schema_of(manifest, manifest_url)


def refuse_special_files(urls: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse local shard paths that exist but are not regular files: a FIFO would block the loader's
    open(), a device such as /dev/zero (or a link to one) never ends. Missing files are left to the reader."""
    for url in urls:
        if scheme_of(url) != "file":
            continue
        try:
            mode = os.stat(local_path(url)).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise ShardFormatError(f"{url}: not a regular file (a shard must be one)")
    return urls


def resolve(
    source: str | Path,
    split: str,
    *,
    schema: SampleSchema | str | Path | None = None,
    retry: RetryPolicy | None = None,
) -> ShardSet:
    """The ShardSet of `split` in `source` (see the module docstring for the accepted forms)."""
    text = str(source)
    if not text:
        raise ConfigError("source: empty; give a shard-set folder, an http(s)/s3 URL, or shard URLs")
    if is_shard_pattern(text):
        urls = refuse_special_files(tuple(braceexpand.braceexpand(refuse_credentials(text))))
        return ShardSet(text, urls, None, None, given_schema(schema, retry))
    folder, manifest_url, manifest = read_set_manifest(text, retry)
    entries = shard_entries(manifest, split)
    if not entries:
        raise ShardFormatError(f"{manifest_url}: split {split!r} has no shards")
    return ShardSet(
        source=text,
        urls=refuse_special_files(tuple(join_url(folder, e["name"]) for e in entries)),
        counts=tuple(int(e["count"]) for e in entries),
        recipe=manifest["recipe"],
        schema=given_schema(schema, retry) or schema_of(manifest, manifest_url),
        sizes=tuple(int(e["bytes"]) for e in entries),
        sha256=tuple(str(e["sha256"]) for e in entries),
    )
