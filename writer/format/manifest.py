"""The manifest schema: build it deterministically, write it last, and read others' manifests safely."""

import json
import re
from pathlib import Path
from typing import Any

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.keys import HASH_ALGORITHM
from segshards.writer.format.splits import SPLITS

MANIFEST = "manifest.json"
MARKER = ".segshards-build.json"  # a build in progress (or interrupted) in this folder
WORK_DIR = ".segshards-work"  # its scratch files
RUN_LOG = "build-log.json"  # how the last build ran (not part of the set: never published)
FORMAT = "segshards"
FORMAT_VERSION = 2  # 2: the manifest holds the sample schema (`schema`) and the source licence
SAMPLE_LAYOUT = {"image": "png", "mask": "mask.png", "meta": "json"}
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.tar")
MAX_COUNT = 1 << 62  # counts and byte sizes: any real one, and still a C long wherever it is used
OPTIONAL_OBJECTS = ("sample", "mask", "source", "config", "hash")  # read with .get(...): objects or absent


def dumps(manifest: dict[str, Any]) -> bytes:
    """Canonical manifest bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ShardFormatError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ShardFormatError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def check_shard_entry(entry: Any, where: str) -> None:
    """Refuse a shard entry whose name is not a plain `*.tar` file name or whose fields are malformed."""
    name = _require(entry, "name", str, where)
    if not SHARD_NAME.fullmatch(name):
        raise ShardFormatError(f"{where}: shard name {name!r} is not a plain file name")
    for key in ("count", "bytes"):
        if not 0 <= _require(entry, key, int, where) < MAX_COUNT:
            raise ShardFormatError(f"{where}: shard {name} has {key} out of range")
    if not re.fullmatch(r"[0-9a-f]{64}", _require(entry, "sha256", str, where)):
        raise ShardFormatError(f"{where}: shard {name} has a malformed sha256")


def _check_layout(manifest: dict[str, Any], where: str) -> None:
    """The optional objects others' code reads with `.get`: objects when present, `sample` of strings."""
    for key in OPTIONAL_OBJECTS:
        if key in manifest and not isinstance(manifest[key], dict):
            raise ShardFormatError(
                f"{where}: field {key!r} has the wrong type ({type(manifest[key]).__name__})"
            )
    for key, value in manifest.get("sample", {}).items():
        if not isinstance(value, str) or not value or key not in SAMPLE_LAYOUT:
            raise ShardFormatError(
                f"{where}: field 'sample.{key}' is not one of {sorted(SAMPLE_LAYOUT)} naming an extension"
            )
    if "sample" in manifest and set(manifest["sample"]) != set(SAMPLE_LAYOUT):
        raise ShardFormatError(f"{where}: field 'sample' must name {sorted(SAMPLE_LAYOUT)}")
    classes = manifest.get("mask", {}).get("num_classes")
    if classes is not None and (
        not isinstance(classes, int) or isinstance(classes, bool) or not 0 < classes <= 256
    ):
        raise ShardFormatError(f"{where}: field 'mask.num_classes' is not an integer in 1..256")


def parse_manifest(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse and validate manifest JSON; `where` names it in errors."""
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer over 4,300 digits
        raise ShardFormatError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ShardFormatError(f"{where}: not valid JSON (nested too deeply)") from None
    if _require(manifest, "format", str, where) != FORMAT:
        raise ShardFormatError(f"{where}: not a segshards manifest")
    version = _require(manifest, "format_version", int, where)
    if version > FORMAT_VERSION:
        raise ShardFormatError(
            f"{where}: format_version {version} is newer than this segshards ({FORMAT_VERSION})"
        )
    _require(manifest, "recipe", str, where)
    _check_layout(manifest, where)
    splits = _require(manifest, "splits", dict, where)
    for split, info in splits.items():
        if not 0 <= _require(info, "count", int, f"{where}: splits.{split}") < MAX_COUNT:
            raise ShardFormatError(f"{where}: splits.{split}.count out of range")
        entries = _require(info, "shards", list, f"{where}: splits.{split}")
        for i, entry in enumerate(entries):
            check_shard_entry(entry, f"{where}: splits.{split}.shards[{i}]")
        if sum(e["count"] for e in entries) != info["count"]:
            raise ShardFormatError(f"{where}: splits.{split}.count disagrees with its shards")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and validate `folder/manifest.json`."""
    path = folder / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: no manifest (not a finished segshards set)") from None
    except OSError as exc:
        raise ShardFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_manifest(text, str(path))


def split_names(manifest: dict[str, Any]) -> list[str]:
    """The manifest's splits in canonical order."""
    return [s for s in SPLITS if s in manifest["splits"]] + sorted(set(manifest["splits"]) - set(SPLITS))


def shard_entries(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The shard entries of `split`, or an error naming the splits that exist."""
    if split not in manifest["splits"]:
        raise ShardFormatError(f"split {split!r} not in manifest (has {', '.join(split_names(manifest))})")
    return list(manifest["splits"][split]["shards"])


__all__ = ["HASH_ALGORITHM", "MANIFEST", "SAMPLE_LAYOUT", "SPLITS", "parse_manifest", "read_manifest"]
