"""`segshards stats SET`: class statistics per split a person can look at: pixel share per class, images
holding each class, instances per image (where the samples' JSON counts them, as COCO's does) and how much
of an image each class covers, as PNG charts with class names (`stats_chart`) and as JSON.

Every shard is read once, its masks decoded on all cores (`map_in_order`); a split's statistics are a few
fixed-size arrays, whatever the number of images."""

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segshards.writer.errors import ConfigError, SegshardsError, ShardFormatError, StorageError
from segshards.writer.format.images import decode_image
from segshards.writer.format.manifest import shard_entries, split_names
from segshards.writer.format.sample import class_counts, parse_meta
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.process_pool import map_in_order
from segshards.writer.share.audit import workers_for
from segshards.writer.storage.urls import join_url, open_url, read_set_manifest

VALUES = 256  # mask values
AREA_BINS = np.array([0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9])  # share of the image
MAX_INSTANCES = 50  # instances per image counted exactly up to this; more go in the last bin
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class StatsTask:
    location: str
    name: str
    size: int
    count: int
    mask: str
    meta: str


@dataclass
class SplitStats:
    """One split's (or shard's) counts: images, pixels per value, images holding each value, a histogram
    of each value's share of an image, and of instances per image (when the JSON counts them)."""

    images: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(VALUES, np.int64))
    holding: np.ndarray = field(default_factory=lambda: np.zeros(VALUES, np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros((VALUES, len(AREA_BINS) - 1), np.int64))
    instances: np.ndarray = field(default_factory=lambda: np.zeros(MAX_INSTANCES + 1, np.int64))
    counted_instances: int = 0  # images whose JSON gave an instance count
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: "SplitStats") -> None:
        self.images += other.images
        self.pixels += other.pixels
        self.holding += other.holding
        self.area += other.area
        self.instances += other.instances
        self.counted_instances += other.counted_instances
        self.unreadable += other.unreadable
        self.problems.extend(other.problems[: max(MAX_PROBLEMS - len(self.problems), 0)])

    def add_mask(self, mask: np.ndarray) -> None:
        counts = class_counts(mask)
        present = counts > 0
        self.images += 1
        self.pixels += counts
        self.holding += present
        bins = np.digitize(counts[present] / mask.size, AREA_BINS) - 1
        self.area[np.flatnonzero(present), bins] += 1

    def add_meta(self, meta: dict[str, Any]) -> None:
        """Instances per image from COCO-style JSON: `categories: [{instances, crowd}, ...]`."""
        categories = meta.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, dict) for c in categories):
            return
        n = sum(int(c.get("instances", 0)) + int(c.get("crowd", 0)) for c in categories)
        self.instances[min(n, MAX_INSTANCES)] += 1
        self.counted_instances += 1


def shard_stats(task: StatsTask) -> SplitStats:
    """The counts of one shard's readable samples (in a worker); the rest counted with why."""
    where = join_url(task.location, task.name)
    stats = SplitStats()
    try:
        with open_url(where) as stream:
            for sample in iter_samples(stream, where, max_bytes=task.size):
                at = f"{where}:{sample['__key__']}"
                try:
                    mask = decode_image(sample[task.mask], "png", at)
                    meta = parse_meta(sample[task.meta], at)
                except (KeyError, ShardFormatError) as exc:
                    stats.problems.append(
                        str(exc) if isinstance(exc, ShardFormatError) else f"{at}: no {exc}"
                    )
                    continue
                if mask.ndim != 2:
                    stats.problems.append(f"{at}: mask has {mask.shape[2]} channels, expected one")
                    continue
                stats.add_mask(mask)
                stats.add_meta(meta)
    except (OSError, SegshardsError) as exc:
        stats.problems.append(
            str(exc) if isinstance(exc, StorageError | ShardFormatError) else f"{where}: {exc}"
        )
    stats.unreadable = max(task.count - stats.images, len(stats.problems))
    stats.problems = stats.problems[:MAX_PROBLEMS]
    return stats


@dataclass
class SetStats:
    """A set's statistics per split, with what names its classes."""

    location: str
    schema: SampleSchema
    splits: dict[str, SplitStats]
    manifest: dict[str, Any]

    def names(self) -> dict[int, str]:
        names = dict(enumerate(self.schema.classes))
        if self.schema.ignore is not None:
            names[self.schema.ignore] = "ignore"
        return names


def set_stats(location: str, *, splits: tuple[str, ...] = (), jobs: int = 0) -> SetStats:
    """Read every shard of the set's splits (all, or `splits`) once; SegshardsError when it cannot."""
    url, manifest_url, manifest = read_set_manifest(location)
    schema = schema_of(manifest, manifest_url)
    have = split_names(manifest)
    missing = [s for s in splits if s not in have]
    if missing:
        raise ConfigError(f"{location}: no split {', '.join(map(repr, missing))} (it has {', '.join(have)})")
    chosen = [s for s in have if not splits or s in splits]
    tasks = [
        (split, StatsTask(url, e["name"], e["bytes"], e["count"], schema.mask, schema.meta))
        for split in chosen
        for e in shard_entries(manifest, split)
    ]
    out = {split: SplitStats() for split in chosen}
    workers = workers_for(jobs)
    results = map_in_order(shard_stats, [t for _, t in tasks], workers=workers, ahead=max(2 * workers, 1))
    for (split, _), found in zip(tasks, results, strict=True):
        out[split].add(found)
    return SetStats(url, schema, out, manifest)


def values_seen(stats: SetStats) -> list[int]:
    """The mask values present in any split, classes first, ignore last."""
    seen = np.zeros(VALUES, bool)
    for s in stats.splits.values():
        seen |= s.pixels > 0
    values = [int(v) for v in np.flatnonzero(seen)]
    return sorted(values, key=lambda v: (v == stats.schema.ignore, v))


def to_json(stats: SetStats) -> dict[str, Any]:
    """The statistics as one JSON object: per split, per mask value named by the schema."""
    names = stats.names()
    out: dict[str, Any] = {"set": stats.location, "classes": list(stats.schema.classes), "splits": {}}
    for split, s in stats.splits.items():
        total = int(s.pixels.sum()) or 1
        out["splits"][split] = {
            "images": s.images,
            "unreadable": s.unreadable,
            "problems": s.problems,
            "classes": {
                names.get(v, str(v)): {
                    "value": v,
                    "pixel_share": int(s.pixels[v]) / total,
                    "images": int(s.holding[v]),
                    "area_share_histogram": s.area[v].tolist(),
                }
                for v in values_seen(stats)
            },
            "instances_per_image": s.instances.tolist() if s.counted_instances else None,
        }
    out["area_bins"] = AREA_BINS[:-1].tolist() + [1.0]
    return out


def dumps(stats: SetStats) -> bytes:
    return (json.dumps(to_json(stats), indent=2, sort_keys=True) + "\n").encode()


def summary_lines(stats: SetStats) -> list[str]:
    """Per split: images, and the classes by pixel share with the images holding each."""
    names = stats.names()
    lines = [f"stats: {stats.location}"]
    for split, s in stats.splits.items():
        bad = f", {s.unreadable:,} unreadable" if s.unreadable else ""
        lines.append(f"  {split}: {s.images:,} image{'s' * (s.images != 1)}{bad}")
        if not s.images:
            continue
        total = int(s.pixels.sum()) or 1
        for v in values_seen(stats):
            share = 100 * int(s.pixels[v]) / total
            held = 100 * int(s.holding[v]) / max(s.images, 1)
            lines.append(
                f"    {names.get(v, str(v)):<20.20s} {share:6.2f}% of pixels, in {held:5.1f}% of images"
            )
        lines.extend(f"    {p}" for p in s.problems[:3])
    return lines
