"""Shard tasks: render a planned list of samples into one tar shard, or account for one already written."""

import contextlib
import ctypes
import functools
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segshards.writer.build.near_dup_codes import NO_CODES, sample_codes, stored_codes
from segshards.writer.errors import PlanError, ShardFormatError
from segshards.writer.format.images import decode_image
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.sample import Layout, class_counts, read_sample, sample_members
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.format.tar_writer import TarWriter
from segshards.writer.recipes.contract import Recipe, Rendered
from segshards.writer.recipes.registry import load_ref
from segshards.writer.storage.atomic import atomic_stream

RENDER_SLICE = 1024  # samples a batch renderer composes at a time
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def shard_name(split: str, index: int) -> str:
    """Deterministic, zero-padded shard file name."""
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to produce one shard; small and picklable."""

    recipe: str  # import reference of the recipe (`recipe_ref`)
    spec: Any
    out_dir: str
    split: str
    index: int
    items: np.ndarray  # (n, k) source record indices, in sample order
    keys: tuple[str, ...]  # the planned key of each sample
    codes: bool = False  # compute each sample's near-duplicate codes (`--near-duplicates report`)

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class ShardResult:
    """What the manifest needs from a finished shard, plus its class statistics."""

    split: str
    index: int
    name: str
    count: int
    bytes: int
    sha256: str
    keys: list[str]
    pixels: dict[int, int] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)
    images: dict[int, int] = field(default_factory=dict)  # class -> samples whose mask holds it
    reused: bool = False
    codes: np.ndarray | None = None  # (count, 2, 6) near-duplicate codes in sample order, when asked

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "bytes": self.bytes, "sha256": self.sha256}


def add_stats(result: ShardResult, masks: Iterable[np.ndarray], labels: list[int]) -> None:
    """Accumulate per-class pixel counts of `masks` and the counts of `labels` into `result`."""
    counts = np.zeros(256, np.int64)
    holding = np.zeros(256, np.int64)
    for mask in masks:
        found = class_counts(mask)
        counts += found
        holding += found > 0
    add_counts(result, counts, labels, holding)


def add_counts(result: ShardResult, counts: np.ndarray, labels: list[int], holding: np.ndarray) -> None:
    """Accumulate a (256,) pixel count per class, a list of labels and a (256,) count of masks holding
    each class into `result`."""
    for cls in np.flatnonzero(counts):
        result.pixels[int(cls)] = result.pixels.get(int(cls), 0) + int(counts[cls])
        result.images[int(cls)] = result.images.get(int(cls), 0) + int(holding[cls])
    for label in labels:
        result.labels[label] = result.labels.get(label, 0) + 1


def render_samples(recipe: Recipe, task: ShardTask) -> Iterator[Rendered]:
    """The task's samples in order, through the recipe's batch renderer, in slices."""
    # Slices keep the renderer's arrays small enough to be reused from one slice to the next, instead of
    # a whole shard's worth of fresh memory (and its page faults) for every shard.
    slices = range(0, len(task.items), RENDER_SLICE)
    return (
        r
        for start in slices
        for r in recipe.render_batch(task.spec, task.items[start : start + RENDER_SLICE])
    )


def checked_key(sample: Rendered, task: ShardTask, index: int) -> str:
    """The planned key of the task's `index`-th sample, once the key of the pixels rendered is the same.

    Determinism is what makes a plan, resumed builds and dedup hold: a recipe that renders another image
    than it planned (a random draw outside the seeded generator, a source file changed since) fails here,
    with one line naming shard and sample. An image stored as given (`image_bytes`, e.g. a photograph's
    file; `planned_keys` recipes) is decoded by the format's own decoder to be hashed, unless the recipe
    vouches for its key (`bytes_key`: its walk decoded those bytes, proven the same by their digest).
    """
    planned = task.keys[index]
    where = f"{Path(task.out_dir) / task.name}: sample {index} ({planned})"
    key = sample.bytes_key or stored_key(sample, where)
    if key != planned:
        raise PlanError(
            f"{where}: rendered image has key {key}, not the planned one (is {task.recipe} deterministic?)"
        )
    return key


def stored_key(sample: Rendered, where: str) -> str:
    """The pixel key of what the sample stores: its pixels, or its image bytes decoded."""
    if sample.image_bytes is None:
        return pixel_key(sample.image)
    try:
        return pixel_key(decode_image(sample.image_bytes, sample.image_ext, where))
    except ShardFormatError as exc:
        raise PlanError(f"{exc}; the recipe stored an image it cannot have planned") from None


def render_shard(task: ShardTask) -> ShardResult:
    """Render the task's samples and stream them into the shard, written atomically."""
    recipe = load_ref(task.recipe)
    result = ShardResult(task.split, task.index, task.name, 0, 0, "", [])
    counts = np.zeros(256, np.int64)
    holding = np.zeros(256, np.int64)
    labels: list[int] = []
    codes: list[np.ndarray] = []
    with atomic_stream(Path(task.out_dir) / task.name) as out:
        tar = TarWriter(out)
        for i, sample in enumerate(render_samples(recipe, task)):
            key, parts = sample_members(sample, checked_key(sample, task, i))
            for name, payload in parts:
                tar.add(name, payload)
            found = class_counts(sample.mask)
            counts += found
            holding += found > 0
            labels.extend(recipe.labels(sample.meta))
            if task.codes:
                codes.append(sample_codes(sample, f"{Path(task.out_dir) / task.name}: sample {i} ({key})"))
        tar.close()
        out.flush()
        result.bytes, result.sha256 = out.raw.size, out.raw.sha256.hexdigest()
    add_counts(result, counts, labels, holding)
    result.count = len(task.items)
    result.codes = stacked(codes) if task.codes else None
    return result


def stacked(codes: list[np.ndarray]) -> np.ndarray:
    return np.stack(codes) if codes else NO_CODES


def scan_shard(task: ShardTask, path: Path) -> ShardResult:
    """Account for a shard already on disk (a resumed build) by reading it back and checking every key."""
    recipe = load_ref(task.recipe)
    data = path.read_bytes()
    result = ShardResult(
        task.split, task.index, task.name, 0, len(data), hashlib.sha256(data).hexdigest(), []
    )
    masks: list[np.ndarray] = []
    labels: list[int] = []
    codes: list[np.ndarray] = []
    for sample in iter_samples(io.BytesIO(data), str(path)):
        stored = read_sample(sample, Layout(None), str(path))  # a damaged leftover is rendered again
        masks.append(stored.mask)
        labels.extend(recipe.labels(stored.meta))
        result.keys.append(stored.key)
        if task.codes:
            ext = stored.image_ext
            codes.append(stored_codes(sample[ext], ext, stored.image, f"{path}:{stored.key}"))
    add_stats(result, masks, labels)
    result.count = len(result.keys)
    result.codes = stacked(codes) if task.codes else None
    result.reused = True
    return result


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc serve allocations below 4 MiB from the heap and keep up to 64 MiB of it once freed.

    dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold at
    128 KiB: each PNG's deflate state (a few hundred KiB, allocated and freed per image) was then mapped,
    faulted in and unmapped again, and shards rendered 5x slower than in a plain process. Once per
    process; False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 4 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):
        return False


def run_shard_task(task: ShardTask) -> ShardResult:
    """Produce the task's shard unless a readable one holding exactly the planned keys is already there."""
    keep_freed_memory()
    path = Path(task.out_dir) / task.name
    result = None
    if path.is_file():
        with contextlib.suppress(ShardFormatError):  # an unreadable leftover is simply rendered again
            result = scan_shard(task, path)
    if result is None or tuple(result.keys) != task.keys:
        result = render_shard(task)
    result.keys = []  # checked against the plan here; the parent needn't receive ~40 B a sample
    return result
