"""The IterableDataset each DataLoader worker runs: its share of the epoch's shards, shuffled, batched, decoded.

Workers are numbered logically. DataLoader hands items out round-robin over its worker slots, starting at
slot 0 and passing over workers that have finished; slot s runs logical worker (s + rotation) % W, so a
resumed epoch can start the round-robin at the worker that was next, and each logical worker first skips
the batches it had already delivered (reading them, to replay its shuffle, without decoding them).

An item carries several consecutive batches of one worker (about `transfer_bytes` of arrays: k batches,
k fixed per worker by its first decoded batch), since each item crossing from a worker costs the same
whatever its size (the arrays themselves travel in reused shared memory: `segshards.loaders.transport`). Chunks start at multiples of k in the worker's batch sequence, so a resumed worker
sends the rest of an interrupted chunk first. Every worker ends its stream with one end-of-stream item
carrying its error statistics; the loader consumes it and never shows it to the user.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from segshards.loaders.decode import BUFFER, BatchAssembler
from segshards.loaders.source import ShardSet
from segshards.loaders.stages import (
    RESAMPLE,
    SHUFFLE_BUFFER,
    OnError,
    Stats,
    derive_seed,
    groups,
    read_shards,
    resampled,
    shard_order,
    shuffle_buffer,
    take_share,
)
from segshards.loaders.storage import RetryPolicy
from segshards.loaders.transport import BATCHES, WorkerRing, plain_buffer, shared_buffer
from segshards.writer.errors import ShardFormatError
from segshards.writer.tarformat import Sample
from torch.utils.data import IterableDataset, get_worker_info

WORKER_TAG, END_TAG, PER_ITEM = "_worker", "_end", "_per_item"
MAX_PER_ITEM = 64


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides which samples a rank sees and in which order (see `make_loader`)."""

    batch_size: int
    num_workers: int = 0
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    resampled: bool = False
    epoch_batches: int | None = None  # per rank; resampled mode only
    drop_last: bool = False
    shuffle_buffer: int = 1000
    size: tuple[int, int] | None = None
    on_error: OnError = "raise"
    with_meta: bool = False
    retry: RetryPolicy = RetryPolicy()
    transfer_bytes: int = 8 << 20  # arrays per item crossing from a worker (see the module docstring)
    ring_slots: int = 4  # reused shared-memory slots per worker (see segshards.loaders.transport)

    @property
    def workers(self) -> int:
        """Logical workers: the main process counts as one when num_workers is 0."""
        return max(1, self.num_workers)

    def worker_quota(self, worker: int) -> int:
        """Batches logical `worker` yields per epoch in resampled mode."""
        assert self.epoch_batches is not None
        return self.epoch_batches // self.workers + (worker < self.epoch_batches % self.workers)


class IterationControl:
    """An iteration's starting position in shared memory, for worker processes that persist across iterations.

    int64 slots: epoch, rotation, then per logical worker the batches to skip, whether its end was
    delivered, and its batches per item (-1: not known yet).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.values = torch.zeros(2 + 3 * workers, dtype=torch.int64).share_memory_()

    def write(self, stream: "ShardStream") -> None:
        w = self.workers
        per_item = [-1 if k is None else k for k in stream.per_item]
        row = [stream.epoch, stream.rotation, *stream.skip, *(int(e) for e in stream.ended), *per_item]
        assert len(row) == 2 + 3 * w
        self.values.copy_(torch.tensor(row, dtype=torch.int64))

    def read(self, stream: "ShardStream") -> None:
        w, v = self.workers, self.values.tolist()
        stream.epoch, stream.rotation = v[0], v[1]
        stream.skip = v[2 : 2 + w]
        stream.ended = [bool(e) for e in v[2 + w : 2 + 2 * w]]
        stream.per_item = [None if k < 0 else k for k in v[2 + 2 * w : 2 + 3 * w]]


class ShardStream(IterableDataset):
    """Batches of one rank's epoch; the loader sets `epoch`, `skip` and `rotation` before each iteration
    (in worker processes through `control`, since they persist from one iteration to the next)."""

    def __init__(self, shards: ShardSet, config: LoaderConfig) -> None:
        super().__init__()
        self.shards, self.config = shards, config
        self.epoch = 0
        self.skip = [0] * config.workers  # batches each logical worker already delivered this epoch
        self.ended = [False] * config.workers  # whether its end-of-stream item was delivered
        self.per_item: list[int | None] = [None] * config.workers  # its batches per item, once known
        self.rotation = 0
        self.released: torch.Tensor | None = None  # release counters shared with the main process
        self.control: IterationControl | None = None  # the position, for persistent worker processes

    def worker_shards(self, worker: int) -> list[int]:
        """Shard indices of a logical worker this epoch (not resampled): ranks first, then workers."""
        c = self.config
        order = shard_order(len(self.shards.urls), seed=c.seed, epoch=self.epoch, shuffle=c.shuffle)
        return take_share(take_share(order, c.rank, c.world_size), worker, c.workers)

    def worker_groups(self, worker: int, stats: Stats) -> Iterator[list[Sample]]:
        """The raw sample groups (future batches) of a logical worker, in order."""
        c = self.config
        n = len(self.shards.urls)
        if c.resampled:
            rng = np.random.default_rng(derive_seed(c.seed, self.epoch, c.rank, worker, RESAMPLE))
            order: Iterator[int] | list[int] = resampled(n, rng)
        else:
            order = self.worker_shards(worker)
        samples = read_shards(
            self.shards.urls,
            order,
            counts=self.shards.counts,
            retry=c.retry,
            on_error=c.on_error,
            stats=stats,
            give_up_after=n + 10,
        )
        if c.shuffle:
            rng_buffer = random.Random(derive_seed(c.seed, self.epoch, c.rank, worker, SHUFFLE_BUFFER))
            samples = shuffle_buffer(samples, c.shuffle_buffer, rng_buffer)
        batches = groups(samples, c.batch_size, drop_last=c.drop_last)
        return islice(batches, c.worker_quota(worker)) if c.resampled else batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is not None and self.control is not None:
            self.control.read(self)  # this process's copy of the stream is the one made when it started
        slot = info.id if info is not None else 0
        return self.worker_items((slot + self.rotation) % self.config.workers, in_worker=info is not None)

    def worker_items(self, worker: int, *, in_worker: bool) -> Iterator[dict[str, Any]]:
        """Decoded batches of `worker` after its `skip` first ones, then its end-of-stream item."""
        c = self.config
        stats = Stats()
        ring = (
            WorkerRing(self.released, worker, c.ring_slots)
            if in_worker and self.released is not None
            else None
        )
        assembler = BatchAssembler(
            schema=self.shards.schema,
            size=c.size,
            with_meta=c.with_meta,
            allocate=ring.allocate if ring else shared_buffer if in_worker else plain_buffer,
        )

        def on_error(exc: ShardFormatError) -> None:
            if c.on_error == "raise":
                raise exc
            stats.add(str(exc), shard=False)

        skip, per_item = self.skip[worker], self.per_item[worker] if in_worker else 1
        chunk: list[dict[str, Any]] = []
        for index, group in enumerate(self.worker_groups(worker, stats)):
            if index < skip:
                continue  # delivered before the checkpoint: read (to replay the shuffle) but not decoded
            if ring is not None and not chunk:
                ring.begin_item()
            batch = assembler(group, on_error)
            if per_item is None and BUFFER in batch:
                per_item = batches_per_item(batch[BUFFER].numel(), c.transfer_bytes)
            chunk.append(batch)
            if per_item is None or (index + 1) % per_item == 0:
                item = {WORKER_TAG: worker, BATCHES: chunk, PER_ITEM: per_item}
                yield ring.seal(item, per_item) if ring is not None else item
                chunk = []
        if chunk:
            item = {WORKER_TAG: worker, BATCHES: chunk, PER_ITEM: per_item}
            yield ring.seal(item, per_item) if ring is not None else item
        if not self.ended[worker]:
            yield {WORKER_TAG: worker, END_TAG: stats.as_dict()}


def batches_per_item(batch_bytes: int, transfer_bytes: int) -> int:
    """How many batches of `batch_bytes` make one item of about `transfer_bytes` (1 to MAX_PER_ITEM)."""
    return max(1, min(MAX_PER_ITEM, transfer_bytes // max(1, batch_bytes)))
