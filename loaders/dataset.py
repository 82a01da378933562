"""The IterableDataset each DataLoader worker runs: its share of the epoch's shards, shuffled, batched, decoded.

Workers are numbered logically. DataLoader hands batches out round-robin over its worker slots, starting at
slot 0 and passing over workers that have finished; slot s runs logical worker (s + rotation) % W, so a
resumed epoch can start the round-robin at the worker that was next, and each logical worker first skips
the items it had already delivered (without decoding them). Every worker ends its stream with one
end-of-stream item carrying its error statistics; the loader consumes it and never shows it to the user.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loaders.decode import BatchAssembler
from loaders.source import ShardSet
from loaders.stages import (
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
from loaders.storage import RetryPolicy
from writer.errors import ShardFormatError
from writer.tarformat import Sample

WORKER_TAG, END_TAG, EMPTY_TAG = "_worker", "_end", "_empty"


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

    @property
    def workers(self) -> int:
        """Logical workers: the main process counts as one when num_workers is 0."""
        return max(1, self.num_workers)

    def worker_quota(self, worker: int) -> int:
        """Batches logical `worker` yields per epoch in resampled mode."""
        assert self.epoch_batches is not None
        return self.epoch_batches // self.workers + (worker < self.epoch_batches % self.workers)


def shared_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 buffer in shared memory: a batch crosses from a worker to the main process without a copy."""
    return torch.empty(nbytes, dtype=torch.uint8).share_memory_()


def plain_buffer(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


class ShardStream(IterableDataset):
    """Batches of one rank's epoch; the loader sets `epoch`, `skip` and `rotation` before each iteration."""

    def __init__(self, shards: ShardSet, config: LoaderConfig) -> None:
        super().__init__()
        self.shards, self.config = shards, config
        self.epoch = 0
        self.skip = [0] * config.workers  # items each logical worker already delivered this epoch
        self.rotation = 0

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
        slot = info.id if info is not None else 0
        return self.worker_items((slot + self.rotation) % self.config.workers, in_worker=info is not None)

    def worker_items(self, worker: int, *, in_worker: bool) -> Iterator[dict[str, Any]]:
        """Decoded batches of `worker` after its `skip` first ones, then its end-of-stream item."""
        c = self.config
        stats = Stats()
        assembler = BatchAssembler(
            recipe=self.shards.recipe,
            image_ext=self.shards.image_ext,
            size=c.size,
            with_meta=c.with_meta,
            allocate=shared_buffer if in_worker else plain_buffer,
        )

        def on_error(exc: ShardFormatError) -> None:
            if c.on_error == "raise":
                raise exc
            stats.add(str(exc), shard=False)

        skip, produced = self.skip[worker], 0
        for group in self.worker_groups(worker, stats):
            produced += 1
            if produced <= skip:
                continue  # delivered before the checkpoint: read (to replay the shuffle) but not decoded
            batch = assembler(group, on_error)
            batch[WORKER_TAG] = worker
            if not batch["key"]:
                batch[EMPTY_TAG] = True
            yield batch
        if skip <= produced:
            yield {WORKER_TAG: worker, END_TAG: stats.as_dict()}
