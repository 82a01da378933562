"""Resolving a loader source into a shard list: a set's folder (local, http(s), s3) or brace-expanded URLs.

A folder source is read through its `manifest.json`, which gives the split's shards in order, the sample
count of each (hence the epoch length), the recipe (hence the targets) and the image member's extension.
A source ending in `.tar`, e.g. `s3://bucket/set/train-{000000..000003}.tar`, is a list of shard URLs
without a manifest: the split argument is not used, the epoch length is unknown (`len(loader)` raises
TypeError), shard sample counts are not checked, and the recipe's targets are only produced when the
recipe is named (`make_loader(..., recipe="mnist-grid")`).
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
from segshards.loaders.storage import RetryPolicy, join_url, read_url, scheme_of
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.manifest import MANIFEST, parse_manifest, shard_entries


@dataclass(frozen=True)
class ShardSet:
    """The shards one loader reads, in canonical order, with what the manifest says about them."""

    source: str
    urls: tuple[str, ...]
    counts: tuple[int, ...] | None  # samples per shard; None without a manifest
    recipe: str | None
    image_ext: str | None
    num_classes: int | None

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)

    def names(self) -> list[str]:
        """Shard file names (what identifies the set wherever it is stored)."""
        return [url.rstrip("/").rsplit("/", 1)[-1] for url in self.urls]


def is_shard_pattern(source: str) -> bool:
    """True for a shard URL or brace pattern (`...tar`), false for a set's folder."""
    return source.rstrip("/").endswith((".tar", ".tar.gz", ".tgz"))


def refuse_special_files(urls: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse local shard paths that exist but are not regular files: a FIFO would block the loader's
    open(), a device such as /dev/zero (or a link to one) never ends. Missing files are left to the reader."""
    for url in urls:
        if scheme_of(url) != "file":
            continue
        path = url2pathname(urlparse(url).path) if url.startswith("file:") else url
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise ShardFormatError(f"{url}: not a regular file (a shard must be one)")
    return urls


def resolve(
    source: str | Path, split: str, *, recipe: str | None = None, retry: RetryPolicy | None = None
) -> ShardSet:
    """The ShardSet of `split` in `source` (see the module docstring for the accepted forms)."""
    text = str(source)
    if not text:
        raise ConfigError("source: empty; give a shard-set folder, an http(s)/s3 URL, or shard URLs")
    if is_shard_pattern(text):
        urls = refuse_special_files(tuple(braceexpand.braceexpand(text)))
        return ShardSet(text, urls, None, recipe, None, None)
    if scheme_of(text) == "file" and not text.startswith("file:") and not Path(text).is_dir():
        raise ConfigError(f"source {text}: not a folder (expected a shard-set folder holding {MANIFEST})")
    folder = text.removesuffix(MANIFEST).rstrip("/") if text.endswith(MANIFEST) else text
    manifest_url = join_url(folder, MANIFEST)
    manifest = parse_manifest(read_url(manifest_url, retry), manifest_url)
    entries = shard_entries(manifest, split)
    if not entries:
        raise ShardFormatError(f"{manifest_url}: split {split!r} has no shards")
    layout: dict[str, Any] = manifest.get("sample", {})
    mask: dict[str, Any] = manifest.get("mask", {})
    return ShardSet(
        source=text,
        urls=refuse_special_files(tuple(join_url(folder, e["name"]) for e in entries)),
        counts=tuple(int(e["count"]) for e in entries),
        recipe=recipe or manifest["recipe"],
        image_ext=layout.get("image") if isinstance(layout.get("image"), str) else None,
        num_classes=mask.get("num_classes") if isinstance(mask.get("num_classes"), int) else None,
    )
