"""The loader's pipeline as small generator stages: shard order, rank/worker split, read, shuffle, group.

Every random choice comes from a generator seeded by (seed, epoch[, rank, worker], purpose), so an epoch is
replayed exactly from the same settings; that is what makes mid-epoch resume possible.
"""

import io
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Literal, TypeVar

import numpy as np

from segshards.loaders.integrity import CheckedStream, Verify, read_checked
from segshards.loaders.read_ahead import ReadAhead
from segshards.writer.errors import SegshardsError, ShardFormatError
from segshards.writer.format.limits import DecodeLimits
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.format.tar_writer import Sample
from segshards.writer.storage.retry import RetryPolicy
from segshards.writer.storage.urls import open_url

T = TypeVar("T")
OnError = Literal["raise", "skip"]
MAX_REPORTED = 20

# Purposes, so that the generators drawn from one (seed, epoch, ...) are independent of each other.
SHARD_ORDER, SHUFFLE_BUFFER, RESAMPLE = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from non-negative integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


@dataclass
class Stats:
    """What a skip-mode worker left out: failed shards, skipped samples, and the first messages."""

    shards_failed: int = 0
    samples_skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, message: str, *, shard: bool) -> None:
        if shard:
            self.shards_failed += 1
        else:
            self.samples_skipped += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(message)

    def merge(self, other: "Stats") -> None:
        """Add what another worker left out (the first messages up to MAX_REPORTED)."""
        self.shards_failed += other.shards_failed
        self.samples_skipped += other.samples_skipped
        self.errors.extend(other.errors[: MAX_REPORTED - len(self.errors)])


def shard_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order, the same on every rank and worker: a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(derive_seed(seed, epoch, SHARD_ORDER)).permutation(n)]


def take_share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every `count`-th item from `index`: ranks take their share of the shards, then workers theirs."""
    return list(items[index::count])


def resampled(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Shard indices drawn with replacement, forever."""
    while True:
        yield from (int(i) for i in rng.integers(0, n, size=64))


def read_shards(
    urls: Sequence[str],
    order: Iterable[int],
    *,
    counts: Sequence[int] | None,
    retry: RetryPolicy,
    on_error: OnError,
    stats: Stats,
    give_up_after: int,
    sizes: Sequence[int] | None = None,
    sha256: Sequence[str] | None = None,
    verify: Verify = "stream",
    limits: DecodeLimits | None = None,
) -> Iterator[Sample]:
    """Samples of the shards in `order`, each tagged with `__url__`; a shard whose sample count, byte count
    or sha256 (`verify`, see `segshards.loaders.integrity`) differs from the manifest is an error. With
    on_error="skip", a failing shard is counted and the loader goes on with the next one (the samples read
    before the damage were already yielded), unless `give_up_after` shards in a row failed (in resampled
    mode the order never ends)."""
    failures = 0
    max_member_bytes = limits.max_member_bytes if limits is not None else None
    for index in order:
        url = urls[index]
        seen = 0
        try:
            with open_url(url, retry) as raw:
                stream: IO[bytes] = raw
                checked = None
                if sizes is not None:
                    digest = sha256[index] if sha256 is not None and verify != "off" else None
                    if verify == "before":
                        stream = io.BytesIO(read_checked(raw, url, size=sizes[index], sha256=digest))
                    else:
                        checked = CheckedStream(raw, url, size=sizes[index], sha256=digest)
                        stream = checked  # type: ignore[assignment]
                with ReadAhead(stream, ahead=not isinstance(stream, io.BytesIO)) as ahead:
                    for sample in iter_samples(ahead, url, max_member_bytes=max_member_bytes):  # type: ignore[arg-type]
                        sample["__url__"] = url
                        seen += 1
                        yield sample
                    if checked is not None:
                        ahead.drain()
                if checked is not None:
                    checked.finish()  # the thread has ended: it read (and hashed) every byte
            if counts is not None and seen != counts[index]:
                raise ShardFormatError(f"{url}: {seen} samples, the manifest says {counts[index]}")
            failures = 0
        except SegshardsError as exc:
            failures += 1
            if on_error == "raise" or failures >= give_up_after:
                raise
            stats.add(str(exc), shard=True)


def shuffle_buffer(samples: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Reservoir-style shuffle: fill `size` items, then each new item takes the place of a random one."""
    if size <= 1:
        yield from samples
        return
    buffer: list[T] = []
    draw = rng.random
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = int(draw() * size)
        out, buffer[j] = buffer[j], sample
        yield out
    rng.shuffle(buffer)
    yield from buffer


def groups(samples: Iterable[T], size: int, *, drop_last: bool) -> Iterator[list[T]]:
    """Consecutive lists of `size` items; the last, shorter one unless `drop_last`."""
    iterator = iter(samples)
    while group := list(islice(iterator, size)):
        if len(group) < size and drop_last:
            return
        yield group
