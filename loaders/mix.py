"""Mixing shard sets: each stream's share of an epoch fixed up front, split and resumed like one set.

Epoch e of a mix is a fixed multiset in a fixed order. For each stream, a generator seeded by
(seed, e, stream) decides how often each sample of its split appears (`Stream.wanted` samples: a choice
without replacement, plus every sample `wanted // size` times when it asks for more than the split holds).
The units of the epoch are the (stream, shard) pairs with at least one chosen sample, in an order seeded by
(seed, e) that every rank shares; rank r takes units r, r+R, ... and its worker w every W-th of those, as
one set's shards are split (`segshards.loaders.loader`). A worker reads its units of each stream in order
and interleaves the streams through a seeded order of stream ids (seeded by seed, e, rank, worker; evenly
spread when `shuffle=False`), then shuffles and batches as for one set. So the ranks together deliver
exactly the epoch's multiset, and a saved position (batches per worker) replays to the same point.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np

from segshards.loaders.dataset import LoaderConfig, ShardStream
from segshards.loaders.decode import BUFFER, FIELDS, unpack_arrays
from segshards.loaders.mix_schema import Lut, mix_schema
from segshards.loaders.source import ShardSet, resolve
from segshards.loaders.stages import SHARD_ORDER, Stats, derive_seed, read_shards, take_share
from segshards.loaders.streams import Stream
from segshards.writer.errors import ConfigError
from segshards.writer.format.schema import SampleSchema
from segshards.writer.format.tar_writer import Sample
from segshards.writer.storage.retry import RetryPolicy

CHOOSE, INTERLEAVE = 11, 12  # purposes of the mix's generators (see segshards.loaders.stages)
Unit = tuple[int, int]  # (stream, shard of that stream)


@dataclass
class MixStats(Stats):
    """Stats with per-stream counts: samples read into the epoch and shards that failed, by stream."""

    streams: list[dict[str, int]] = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        super().merge(other)
        for mine, theirs in zip(self.streams, getattr(other, "streams", []), strict=False):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value


@dataclass(frozen=True)
class MixPlan:
    """The resolved streams of a mix: their shard sets, mask tables and per-epoch sample counts."""

    streams: tuple[Stream, ...]
    sets: tuple[ShardSet, ...]
    luts: tuple[Lut | None, ...]
    wanted: tuple[int, ...]  # samples per epoch, by stream

    def multiplicity(self, stream: int, seed: int, epoch: int) -> np.ndarray:
        """How often each sample of `stream`'s split appears in `epoch` (int64, one per sample)."""
        size = sum(self.sets[stream].counts or ())
        wanted = self.wanted[stream]
        times = np.full(size, wanted // size if size else 0, dtype=np.int64)
        rest = wanted - int(times.sum())
        if rest:
            rng = np.random.default_rng(derive_seed(seed, epoch, stream, CHOOSE))
            times[rng.choice(size, rest, replace=False)] += 1
        return times

    def units(self, seed: int, epoch: int, shuffle: bool) -> tuple[list[Unit], dict[Unit, np.ndarray]]:
        """The epoch's (stream, shard) units in the order every rank shares, and each one's multiplicities."""
        units: list[Unit] = []
        times: dict[Unit, np.ndarray] = {}
        for s, shards in enumerate(self.sets):
            per_sample = self.multiplicity(s, seed, epoch)
            bounds = np.cumsum((0, *(shards.counts or ())))
            for j in range(len(shards.urls)):
                part = per_sample[bounds[j] : bounds[j + 1]]
                if part.any():
                    units.append((s, j))
                    times[(s, j)] = part
        if shuffle:
            order = np.random.default_rng(derive_seed(seed, epoch, SHARD_ORDER)).permutation(len(units))
            units = [units[int(i)] for i in order]
        return units, times

    def describe(self) -> list[dict[str, object]]:
        """What a run records of the mix: each stream's options and samples per epoch."""
        return [{**s.describe(), "samples": n} for s, n in zip(self.streams, self.wanted, strict=True)]


def interleave(counts: Sequence[int], rng: np.random.Generator | None) -> np.ndarray:
    """Stream ids, `counts[s]` of each: a seeded permutation, or evenly spread without `rng`."""
    ids = np.repeat(np.arange(len(counts)), counts)
    if rng is not None:
        return rng.permutation(ids)
    spread = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n] or [np.zeros(0)])
    return ids[np.argsort(spread, kind="stable")]


class MixStream(ShardStream):
    """ShardStream over a mix: one worker's units of every stream, interleaved, then shuffled and batched."""

    def __init__(self, shards: ShardSet, config: LoaderConfig, plan: MixPlan) -> None:
        super().__init__(shards, config)
        self.plan = plan
        self.remap = any(lut is not None for lut in plan.luts)

    def worker_units(self, worker: int, epoch: int) -> tuple[list[Unit], dict[Unit, np.ndarray]]:
        c = self.config
        units, times = self.plan.units(c.seed, epoch, c.shuffle)
        return take_share(take_share(units, c.rank, c.world_size), worker, c.workers), times

    def worker_samples(self, worker: int, epoch: int) -> int:
        units, times = self.worker_units(worker, epoch)
        return int(sum(int(times[u].sum()) for u in units))

    def new_stats(self) -> Stats:
        return MixStats(streams=[{"samples": 0, "shards_failed": 0} for _ in self.plan.sets])

    def samples(self, worker: int, stats: Stats) -> Iterator[Sample]:
        """The worker's samples of every stream, interleaved. No Python frame runs per sample beyond the
        shard reader's, as for one set: the interleaving is `map(next, ...)` over the streams' chains of
        shard readers (with on_error="skip", where a damaged shard may end a stream early, a loop)."""
        c, epoch = self.config, self.position.epoch
        units, times = self.worker_units(worker, epoch)
        counts = [sum(int(times[u].sum()) for u in units if u[0] == s) for s in range(len(self.plan.sets))]
        rng = (
            np.random.default_rng(derive_seed(c.seed, epoch, c.rank, worker, INTERLEAVE))
            if c.shuffle
            else None
        )
        readers = [
            self.stream_samples(s, [u for u in units if u[0] == s], times, stats) for s in range(len(counts))
        ]
        order = interleave(counts, rng).tolist()
        short = [0] * len(counts)
        if c.on_error == "raise":  # a stream cannot end early: a short shard raises at its end
            mixed: Iterator[Sample] = map(next, map(readers.__getitem__, order))
        else:
            mixed = skipping(readers, order, short)
        return chain(mixed, drained(readers), counted(stats, counts, short))

    def stream_samples(
        self, stream: int, units: list[Unit], times: dict[Unit, np.ndarray], stats: Stats
    ) -> Iterator[Sample]:
        """One stream's chosen samples in this worker's units, each as often as the epoch takes it."""
        return chain.from_iterable(self.unit_samples(stream, u, times[u], stats, len(units)) for u in units)

    def unit_samples(
        self, stream: int, unit: Unit, times: np.ndarray, stats: Stats, units: int
    ) -> Iterator[Sample]:
        """One shard's chosen samples, each `times[k]` times, then the rest of the shard read (its count
        and sha256 are checked at its end) and its failures counted for the stream. A shard whose samples
        are each taken once and need no mask table is read with no Python code per sample."""
        c, shards = self.config, self.plan.sets[stream]
        mine = Stats()  # this shard's failure alone: other streams' shards are open meanwhile
        shard_samples = read_shards(
            shards.urls,
            [unit[1]],
            counts=shards.counts,
            retry=c.retry,
            on_error=c.on_error,
            stats=mine,
            give_up_after=units + 10,
            sizes=shards.sizes,
            sha256=shards.sha256,
            verify=c.verify,
            limits=c.limits,
        )
        if not self.remap and len(times) and times.min() == 1 and times.max() == 1:
            chosen: Iterator[Sample] = islice(shard_samples, len(times))
        else:
            chosen = repeated(shard_samples, times.tolist(), stream)
        return chain(chosen, finished(shard_samples, mine, stats, stream))

    def after_assembly(self, group: list[Sample], batch: dict) -> None:
        """Rewrite each row's mask into the mix's classes (rows are the group's samples that decoded)."""
        if not self.remap or BUFFER not in batch:
            return
        rows, fields = batch[FIELDS]
        masks = dict(unpack_arrays(batch[BUFFER].numpy(), fields, rows))["mask"]
        p = 0
        for r, key in enumerate(batch["key"]):
            while str(group[p]["__key__"]) != key:
                p += 1
            lut = self.plan.luts[group[p]["__stream__"]]
            if lut is not None:
                masks[r] = lut[masks[r]]
            p += 1


def repeated(shard_samples: Iterator[Sample], wanted: list[int], stream: int) -> Iterator[Sample]:
    """A shard's samples, the k-th `wanted[k]` times, tagged with their stream (for `after_assembly`)."""
    for k, sample in enumerate(islice(shard_samples, len(wanted))):
        sample["__stream__"] = stream
        for _ in range(wanted[k]):
            yield sample


def finished(shard_samples: Iterator[Sample], mine: Stats, stats: Stats, stream: int) -> Iterator[Sample]:
    """Yields nothing: reads the rest of a shard (more samples than the manifest says are dropped, and the
    read ends in its error), then adds its failure (`mine`) to the worker's stats and its stream's."""
    for _ in shard_samples:
        pass
    stats.merge(mine)
    if mine.shards_failed and isinstance(stats, MixStats):
        stats.streams[stream]["shards_failed"] += mine.shards_failed
    yield from ()


def skipping(readers: list[Iterator[Sample]], order: list[int], short: list[int]) -> Iterator[Sample]:
    """Interleave the streams in `order`, counting in `short` the draws of a stream that ended early (a
    damaged shard, skip mode)."""
    for s in order:
        sample = next(readers[s], None)
        if sample is None:
            short[s] += 1
            continue
        yield sample


def drained(readers: list[Iterator[Sample]]) -> Iterator[Sample]:
    """Yields nothing: runs each stream's last shard to its end, where its count and sha256 are checked
    (the interleaving stops drawing from a stream at its last chosen sample)."""
    for reader in readers:
        for _ in reader:
            raise AssertionError("a stream of the mix holds more samples than its plan")
    yield from ()


def counted(stats: Stats, counts: list[int], short: list[int]) -> Iterator[Sample]:
    """Yields nothing: once the worker's samples are through, adds each stream's count to `stats`."""
    if isinstance(stats, MixStats):
        for s, n in enumerate(counts):
            stats.streams[s]["samples"] += n - short[s]
    yield from ()


def resolve_mix(
    streams: Sequence[Stream],
    split: str,
    *,
    retry: RetryPolicy,
    epoch_size: int | None,
    classes: Sequence[str] | None,
) -> tuple[ShardSet, MixPlan]:
    """The mix's combined ShardSet (all shards, the mix's schema) and its plan; refuses bad streams."""
    if not streams or not all(isinstance(s, Stream) for s in streams):
        raise ConfigError("source: give one set, or a non-empty list of Stream(...)")
    if epoch_size is not None and (epoch_size < 1 or not any(s.proportion is not None for s in streams)):
        raise ConfigError(f"epoch_size {epoch_size}: must be >= 1, and is only used by Stream(proportion=)")
    sets = tuple(resolve(s.source, split, retry=retry) for s in streams)
    schema, luts = mix_schema(streams, sets, classes)
    wanted = tuple(s.wanted(shards.total or 0, epoch_size) for s, shards in zip(streams, sets, strict=True))
    for s, shards, n in zip(streams, sets, wanted, strict=True):
        if n and not shards.total:
            raise ConfigError(f"Stream({s.source}): split {split!r} holds no samples to take {n} from")
    plan = MixPlan(tuple(streams), sets, tuple(luts), wanted)
    return combined(sets, schema), plan


def combined(sets: Sequence[ShardSet], schema: SampleSchema) -> ShardSet:
    """One ShardSet naming every stream's shards (for messages and the settings a position is saved with)."""
    return ShardSet(
        source=" + ".join(str(s.source) for s in sets),
        urls=tuple(u for s in sets for u in s.urls),
        counts=tuple(n for s in sets for n in s.counts or ()),
        recipe=sets[0].recipe,
        schema=schema,
    )


def resolve_sources(
    source: "str | Path | Sequence[Stream]",
    split: str,
    schema: SampleSchema | str | Path | None,
    retry: RetryPolicy,
    epoch_size: int | None,
    classes: Sequence[str] | None,
) -> tuple[ShardSet, MixPlan | None]:
    """One set's ShardSet, or a mix's combined one and its plan (a list of one plain Stream is one set)."""
    if isinstance(source, str | Path):
        streams = None
    else:
        streams = list(source)
        if len(streams) == 1 and isinstance(streams[0], Stream) and streams[0].plain and classes is None:
            source, streams = streams[0].source, None
    if streams is None:
        if epoch_size is not None:
            raise ConfigError(f"epoch_size {epoch_size}: only for a mix of Stream(proportion=...)")
        return resolve(source, split, schema=schema, retry=retry), None  # type: ignore[arg-type]
    if schema is not None:
        raise ConfigError("schema: not used with a mix (each stream's manifest gives its schema)")
    return resolve_mix(streams, split, retry=retry, epoch_size=epoch_size, classes=classes)


__all__ = ["MixPlan", "MixStats", "MixStream", "resolve_mix", "resolve_sources"]
