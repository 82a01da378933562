"""`segshards verify`: check every shard of a set against its manifest, and keys against the pixels."""

import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from segshards.writer.errors import SegshardsError, ShardFormatError, StorageError
from segshards.writer.format.manifest import MANIFEST, SHARD_NAME, shard_entries, split_names
from segshards.writer.format.sample import Layout, check_sample
from segshards.writer.format.schema import schema_of
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.format.wids_index import check_index, entry_problem, index_entries
from segshards.writer.storage.store import open_store
from segshards.writer.storage.urls import join_url, open_url, read_set_manifest, scheme_of

Opener = Callable[[str], bytes]


def check_shard(
    data: bytes, entry: dict[str, Any], layout: Layout, where: str, seen: set[str]
) -> Iterator[str]:
    """Problems with one shard's bytes against its manifest entry; adds its keys to `seen`."""
    if len(data) != entry["bytes"]:
        yield f"{where}: {len(data)} bytes, manifest says {entry['bytes']}"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        yield f"{where}: sha256 differs from the manifest"
    count = 0
    try:
        for sample in iter_samples(io.BytesIO(data), where):
            count += 1
            key = str(sample["__key__"])
            if key in seen:
                yield f"{where}: duplicate key {key}"
            seen.add(key)
            yield from check_sample(sample, layout, where)
    except SegshardsError as exc:
        yield str(exc)
    if count != entry["count"]:
        yield f"{where}: {count} samples, manifest says {entry['count']}"


def verify_set(manifest: dict[str, Any], opener: Opener, where: str) -> tuple[list[str], int, int]:
    """All problems of a set; returns (problems, shards checked, samples checked)."""
    problems: list[str] = []
    seen: set[str] = set()
    shards = 0
    try:
        schema = schema_of(manifest, f"{where}/{MANIFEST}")
        layout = Layout(schema.image, schema.mask, schema.meta)
    except ShardFormatError as exc:
        problems.append(str(exc))
        layout = Layout(None)
    for split in split_names(manifest):
        for entry in shard_entries(manifest, split):
            shard_where = f"{where}/{entry['name']}"
            try:
                data = opener(entry["name"])
            except StorageError as exc:  # its message names the object already
                problems.append(str(exc))
                continue
            except (OSError, SegshardsError) as exc:
                problems.append(f"{shard_where}: cannot read ({exc})")
                continue
            shards += 1
            problems.extend(check_shard(data, entry, layout, shard_where, seen))
    return problems, shards, len(seen)


def verify_location(location: str | Path) -> tuple[list[str], int, int]:
    """Verify a local folder, an `s3://bucket/prefix` or an `http(s)://` set, also flagging shards the
    manifest does not list (where the location can be listed: a web server cannot)."""
    if scheme_of(str(location)) in ("http", "https"):
        return verify_url(str(location))
    store = open_store(location)
    store.check()
    _, _, manifest = read_set_manifest(store.url)
    sizes = {e["name"]: e["bytes"] for s in manifest["splits"].values() for e in s["shards"]}
    problems, shards, samples = verify_set(manifest, lambda name: store.read(name, sizes[name]), store.url)
    problems.extend(verify_indexes(manifest, store.read, store.url))
    listed = {e["name"] for s in manifest["splits"].values() for e in s["shards"]}
    for name in store.names():
        if name not in listed and SHARD_NAME.fullmatch(name):
            problems.append(f"{store.url}/{name}: shard not listed in the manifest")
    return problems, shards, samples


def verify_url(location: str) -> tuple[list[str], int, int]:
    """Verify a set served over http(s): every shard and index the manifest lists, read by URL."""
    folder, _, manifest = read_set_manifest(location)
    sizes = {e["name"]: e["bytes"] for s in manifest["splits"].values() for e in s["shards"]}

    def read(name: str) -> bytes:
        return read_at_most(join_url(folder, name), sizes.get(name))

    where = folder.rstrip("/")
    problems, shards, samples = verify_set(manifest, read, where)
    return [*problems, *verify_indexes(manifest, read, where)], shards, samples


def read_at_most(url: str, size: int | None) -> bytes:
    """The object at `url`, or its first `size` + 1 bytes when longer (enough to say it is too long)."""
    chunks, total = [], 0
    with open_url(url) as stream:
        while (size is None or total <= size) and (chunk := stream.read(1 << 20)):
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)[: None if size is None else size + 1]


def verify_indexes(manifest: dict[str, Any], read: Opener, where_set: str) -> list[str]:
    """Problems with the splits' wids indexes that the manifest lists."""
    problems: list[str] = []
    for split, entry in index_entries(manifest):
        bad = entry_problem(entry, split, f"{where_set}/{MANIFEST}")
        if bad:
            problems.append(bad)
            continue
        where = f"{where_set}/{entry['name']}"
        try:
            data = read(entry["name"])
        except (OSError, SegshardsError) as exc:
            problems.append(str(exc) if isinstance(exc, StorageError) else f"{where}: cannot read ({exc})")
            continue
        shards = manifest["splits"][split]["shards"]
        problems.extend(check_index(data, entry, manifest["recipe"], split, shards, where))
    return problems
