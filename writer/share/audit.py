"""`segshards audit SET [SET ...]`: near-duplicate images within a split, leaks across the splits of a set,
and overlap between sets, wherever the sets lie (a folder, `https://` or `s3://`), in one streaming pass
per set.

Each shard is read and its images hashed in a worker process (`map_in_order`: every core, results in
order); what is kept per image is its set, split, shard, pixel key and perceptual codes (~120 bytes), so
memory grows with the images and never with their pixels. `near_duplicates` finds and groups the pairs;
`audit_report` classifies, prints and records them; `audit_sheet` draws the largest groups.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from joblib import cpu_count

from segshards.writer.errors import ConfigError, SegshardsError, ShardFormatError, StorageError
from segshards.writer.format.keys import is_key
from segshards.writer.format.manifest import shard_entries, split_names
from segshards.writer.format.sample import Layout, image_member
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.process_pool import map_in_order
from segshards.writer.share.near_duplicates import (
    MAX_THRESHOLD,
    THRESHOLD,
    VIEWS,
    Group,
    groups,
    payload_codes,
)
from segshards.writer.share.near_duplicates import near_pairs as perceptual_pairs
from segshards.writer.storage.urls import join_url, open_url, read_set_manifest

MODES = ("auto", "perceptual", "exact")
MAX_PROBLEMS = 20  # unreadable samples named per set; the rest are counted
CODE_SHAPE = (2, len(VIEWS))


@dataclass(frozen=True)
class AuditConfig:
    """What `segshards audit` compares and how."""

    sets: tuple[str, ...]
    threshold: int = THRESHOLD
    mode: str = "auto"  # auto: perceptual for colour photographs, exact (pixel keys) otherwise
    splits: tuple[str, ...] = ()  # empty: every split
    jobs: int = 0  # 0: all cores


@dataclass(frozen=True)
class ShardTask:
    """One shard to hash, in a worker: where it is and how its samples are laid out."""

    location: str
    name: str
    size: int
    count: int
    image: str | None
    perceptual: bool


@dataclass
class ShardHashes:
    """What one shard gave: the keys (16 bytes each, concatenated), codes (n, 2, 6), and its problems."""

    keys: bytes
    codes: np.ndarray
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditedSet:
    """One SET argument: where it is, its schema, how it is compared, and what its reading found."""

    name: str  # the argument as given
    url: str
    schema: SampleSchema
    perceptual: bool
    splits: list[str]
    tasks: dict[str, list[ShardTask]]
    images: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def why(self) -> str:
        if self.perceptual:
            return "perceptual codes (photographs)"
        return "pixel keys only: perceptual hashing is the wrong notion for these images (exact mode)"


@dataclass
class ImageTable:
    """Every image read, as parallel arrays: set, split, shard (indices), pixel key, perceptual codes."""

    sets: np.ndarray  # (N,) int16
    splits: np.ndarray  # (N,) int16, index into the set's `splits`
    shards: np.ndarray  # (N,) int32, index into the set's shard tasks of that split
    keys: np.ndarray  # (N, 16) uint8
    codes: np.ndarray  # (N, 2, 6) uint64; zeros for exact-mode images
    perceptual: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.sets)

    def key(self, i: int) -> str:
        return bytes(self.keys[i]).hex()


@dataclass
class AuditResult:
    """The sets, their images, and the near-duplicate groups found among them."""

    config: AuditConfig
    sets: list[AuditedSet]
    table: ImageTable
    groups: list[Group]


def parse_threshold(text: str) -> int:
    """`--threshold`: bits of difference in 0..MAX_THRESHOLD; ConfigError otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_THRESHOLD:
        raise ConfigError(
            f"--threshold {text}: not a number of bits in 0..{MAX_THRESHOLD} (default {THRESHOLD}; larger "
            "links unrelated photographs)"
        )
    return value


def open_set(name: str, config: AuditConfig) -> AuditedSet:
    """The set at `name` with its shards to read; SegshardsError naming it when it cannot be audited."""
    url, manifest_url, manifest = read_set_manifest(name)
    schema = schema_of(manifest, manifest_url)
    perceptual = config.mode == "perceptual" or config.mode == "auto" and schema.channels >= 3
    have = split_names(manifest)
    missing = [s for s in config.splits if s not in have]
    if missing:
        raise ConfigError(f"{name}: no split {', '.join(map(repr, missing))} (it has {', '.join(have)})")
    splits = [s for s in have if not config.splits or s in config.splits]
    tasks = {
        split: [
            ShardTask(url, e["name"], e["bytes"], e["count"], schema.image, perceptual)
            for e in shard_entries(manifest, split)
        ]
        for split in splits
    }
    return AuditedSet(name, url, schema, perceptual, splits, tasks, images=dict.fromkeys(splits, 0))


def hash_shard(task: ShardTask) -> ShardHashes:
    """Keys and codes of every readable sample of one shard (in a worker); the rest counted with why."""
    where = join_url(task.location, task.name)
    keys: list[bytes] = []
    codes: list[np.ndarray] = []
    problems: list[str] = []
    try:
        with open_url(where) as stream:
            for sample in iter_samples(stream, where, max_bytes=task.size):
                problem = _hash_sample(sample, task, where, keys, codes)
                if problem:
                    problems.append(problem)
    except (OSError, SegshardsError) as exc:
        reason = str(exc) if isinstance(exc, StorageError | ShardFormatError) else f"{where}: {exc}"
        problems.append(reason)
    unreadable = max(task.count - len(keys), len(problems))
    stacked = np.stack(codes) if codes else np.zeros((len(keys), *CODE_SHAPE), np.uint64)
    return ShardHashes(b"".join(keys), stacked, unreadable, problems[:MAX_PROBLEMS])


def _hash_sample(
    sample: dict[str, object], task: ShardTask, where: str, keys: list[bytes], codes: list[np.ndarray]
) -> str | None:
    """Append one sample's key (and codes); the problem that made it unreadable, if any."""
    key = str(sample["__key__"])
    if not is_key(key):
        return f"{where}: member key {key!r} is not a 32-digit hex hash"
    if task.perceptual:
        at = f"{where}:{key}"
        try:
            ext = image_member(sample, Layout(task.image), at)
            payload = sample[ext]
            assert isinstance(payload, bytes)
            codes.append(payload_codes(payload, ext, at))
        except ShardFormatError as exc:
            return str(exc)
    keys.append(bytes.fromhex(key))
    return None


def workers_for(jobs: int) -> int:
    """Worker processes beside this one for `--jobs` (0: all cores)."""
    cores = max(int(cpu_count()), 1)
    return (cores if jobs <= 0 else min(jobs, cores)) - 1


def hash_sets(sets: list[AuditedSet], jobs: int) -> ImageTable:
    """Read every shard of every set once, hashing on all cores; the images as one table."""
    order = [
        (s, si, split, k)
        for si, s in enumerate(sets)
        for split in s.splits
        for k in range(len(s.tasks[split]))
    ]
    tasks = [s.tasks[split][k] for s, _, split, k in order]
    workers = workers_for(jobs)
    parts: list[tuple[int, int, int, ShardHashes]] = []
    results = map_in_order(hash_shard, tasks, workers=workers, ahead=max(2 * workers, 1))
    for (audited, si, split, k), found in zip(order, results, strict=True):
        audited.images[split] = audited.images.get(split, 0) + len(found.keys) // 16
        audited.unreadable += found.unreadable
        audited.problems.extend(found.problems[: max(MAX_PROBLEMS - len(audited.problems), 0)])
        parts.append((si, audited.splits.index(split), k, found))
    return _table(parts, sets)


def _table(parts: list[tuple[int, int, int, ShardHashes]], sets: list[AuditedSet]) -> ImageTable:
    sizes = [len(p[3].keys) // 16 for p in parts]
    keys = np.frombuffer(b"".join(p[3].keys for p in parts), np.uint8).reshape(-1, 16)
    codes = [p[3].codes for p in parts]
    return ImageTable(
        sets=np.repeat(np.array([p[0] for p in parts], np.int16), sizes),
        splits=np.repeat(np.array([p[1] for p in parts], np.int16), sizes),
        shards=np.repeat(np.array([p[2] for p in parts], np.int32), sizes),
        keys=keys,
        codes=np.concatenate(codes) if codes else np.zeros((0, *CODE_SHAPE), np.uint64),
        perceptual=np.repeat(np.array([sets[p[0]].perceptual for p in parts], bool), sizes),
    )


def exact_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of images with the same pixel key (each later one with the first): distance 0."""
    if not len(keys):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    later = np.flatnonzero(first[inverse.ravel()] != np.arange(len(keys)))
    return first[inverse.ravel()[later]], later, np.zeros(len(later), np.int32)


def find_groups(table: ImageTable, threshold: int) -> list[Group]:
    """Near-duplicate groups: identical pixel keys anywhere, perceptual neighbours among photographs."""
    a, b, d = exact_pairs(table.keys)
    photo = np.flatnonzero(table.perceptual)
    pa, pb, pd = perceptual_pairs(table.codes[photo], threshold)
    a = np.concatenate([a, photo[pa]])
    b = np.concatenate([b, photo[pb]])
    d = np.concatenate([d, pd])
    return groups(len(table), a, b, d)


def run_audit(config: AuditConfig) -> AuditResult:
    """Open every set (failing before any work when one cannot be audited), hash them, group."""
    seen = [s for i, s in enumerate(config.sets) if s in config.sets[:i]]
    if seen:
        raise ConfigError(f"{seen[0]}: given twice (each SET once; overlap is looked for between them)")
    sets = [open_set(name, config) for name in config.sets]
    table = hash_sets(sets, config.jobs)
    return AuditResult(config, sets, table, find_groups(table, config.threshold))


def members(result: AuditResult, group: Group) -> Iterator[tuple[AuditedSet, str, str]]:
    """(set, split, key) of each member of a group."""
    t = result.table
    for i in group.members:
        audited = result.sets[int(t.sets[i])]
        yield audited, audited.splits[int(t.splits[i])], t.key(i)


def shown_members(result: AuditResult, group: Group, n: int) -> list[int]:
    """Up to `n` members to show, one from each (set, split) first: a leak shows both of its sides."""
    t = result.table
    first: dict[tuple[int, int], int] = {}
    for i in group.members:
        first.setdefault((int(t.sets[i]), int(t.splits[i])), i)
    picked = list(first.values())[:n]
    rest = [i for i in group.members if i not in picked]
    return sorted(picked + rest[: n - len(picked)])
