"""Random access: one `wids` index per split beside its shards, written with the set and listed in its manifest.

`wids.ShardListDataset("SPLIT.wids.json")` opens a split for indexing by sample number. The index is
`{"wids_version": 1, "name": ..., "shardlist": [{"url", "nsamples", "filesize"}]}` with shard URLs relative
to the index, so a copied or published set needs no rewrite. The manifest lists each index under
`splits.SPLIT.index` as `{"name", "bytes", "sha256"}`; `segshards verify` checks both against the shards.
"""

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from segshards.writer.format.manifest import split_names

INDEX_SUFFIX = ".wids.json"
INDEX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.wids\.json")


def index_name(split: str) -> str:
    """The index file of `split`, e.g. `train.wids.json`."""
    return f"{split}{INDEX_SUFFIX}"


def render_index(recipe: str, split: str, shards: list[dict[str, Any]]) -> bytes:
    """Deterministic index bytes for `split` from its manifest shard entries."""
    index = {
        "wids_version": 1,
        "name": f"{recipe} {split}",
        "shardlist": [{"url": e["name"], "nsamples": e["count"], "filesize": e["bytes"]} for e in shards],
    }
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_indexes(write: Callable[[str, bytes], None], manifest: dict[str, Any]) -> None:
    """Write the index of every split that has shards and record each in `manifest` (before it is written).

    wids cannot open an empty shard list, so an empty split gets no index.
    """
    for split in split_names(manifest):
        info = manifest["splits"][split]
        if not info["shards"]:
            continue
        data = render_index(manifest["recipe"], split, info["shards"])
        name = index_name(split)
        write(name, data)
        info["index"] = {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def index_entries(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(split, index entry) for every split whose manifest entry lists an index (older sets have none)."""
    return [
        (s, manifest["splits"][s]["index"]) for s in split_names(manifest) if "index" in manifest["splits"][s]
    ]


def entry_problem(entry: Any, split: str, where: str) -> str | None:
    """What is wrong with a manifest's `splits.SPLIT.index` entry before its file is opened, if anything."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return f"{where}: splits.{split}.index is not an object with a name"
    if not INDEX_NAME.fullmatch(entry["name"]):
        return f"{where}: splits.{split}.index name {entry['name'][:80]!r} is not a plain *.wids.json name"
    return None


def check_index(
    data: bytes, entry: dict[str, Any], recipe: str, split: str, shards: list[dict[str, Any]], where: str
) -> list[str]:
    """Problems of one split's index file: bytes that differ from its manifest entry, or content that does
    not describe the split's shards as the manifest does."""
    problems = []
    if len(data) != entry.get("bytes"):
        problems.append(f"{where}: {len(data)} bytes, manifest says {entry.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        problems.append(f"{where}: sha256 differs from the manifest")
    if data != render_index(recipe, split, shards):
        problems.append(f"{where}: does not list the split's shards as the manifest does")
    return problems
