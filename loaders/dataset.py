"""The IterableDataset each DataLoader worker runs: its share of the epoch's shards, shuffled, batched, decoded.

Workers are numbered logically. DataLoader hands items out round-robin over its worker slots, starting at
slot 0 and passing over workers that have finished; slot s runs logical worker (s + next_worker) % W, so a
resumed epoch can start the round-robin at the worker that was next (`segshards.loaders.position`), and each
logical worker first skips the batches it had already delivered (reading them, to replay its shuffle,
without decoding them).

A `Chunk` message carries several consecutive batches of one worker (about `transfer_bytes` of arrays: k
batches, k fixed per worker by its first decoded batch), since each item crossing from a worker costs the
same whatever its size (the arrays themselves travel in reused shared memory: `segshards.loaders.transport`).
Chunks start at multiples of k in the worker's batch sequence, so a resumed worker sends the rest of an
interrupted chunk first. Every worker ends its stream with a `WorkerEnd` carrying its error statistics; the
loader consumes it and never shows it to the user (`segshards.loaders.messages`).
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
from torch.utils.data import IterableDataset

from segshards.loaders.augment import Augment, Augmenting
from segshards.loaders.decode import BUFFER, BatchAssembler
from segshards.loaders.device_decode import BytesAssembler
from segshards.loaders.integrity import Verify
from segshards.loaders.messages import Chunk, Message, Parcel, WorkerEnd
from segshards.loaders.position import EpochPosition
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
from segshards.loaders.transform import Transform, Transforming
from segshards.loaders.transport import WorkerRing, plain_buffer, shared_buffer
from segshards.loaders.worker_pool import PositionBoard, worker_slot
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.limits import DecodeLimits
from segshards.writer.format.tar_writer import Sample
from segshards.writer.storage.retry import RetryPolicy

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
    verify: Verify = "stream"  # the shards' sha256 against the manifest (segshards.loaders.integrity)
    limits: DecodeLimits | None = None  # None: default_limits() (segshards.writer.format.limits)
    augment: Augment | None = None  # seeded per (seed, epoch, key): segshards.loaders.augment
    transform: Transform | None = None  # the user's, seeded likewise: segshards.loaders.transform
    decode_device: str | None = None  # JPEG bytes handed on, decoded there: segshards.loaders.device_decode

    @property
    def workers(self) -> int:
        """Logical workers: the main process counts as one when num_workers is 0."""
        return max(1, self.num_workers)

    def worker_quota(self, worker: int) -> int:
        """Batches logical `worker` yields per epoch in resampled mode."""
        assert self.epoch_batches is not None
        return self.epoch_batches // self.workers + (worker < self.epoch_batches % self.workers)


class ShardStream(IterableDataset):
    """Batches of one rank's epoch from `position`, which the loader sets before each iteration (persistent
    worker processes read it from `board`: their copy of this object is the one made when they started)."""

    def __init__(self, shards: ShardSet, config: LoaderConfig) -> None:
        super().__init__()
        self.shards, self.config = shards, config
        self.position = EpochPosition.start(0, config.workers)
        self.use_rings = False  # whether worker processes send batches through a ring (set by the loader)
        self.ring: WorkerRing | None = None  # a worker process's ring, kept from one iteration to the next
        self.board: PositionBoard | None = None  # the position, for persistent worker processes

    def worker_shards(self, worker: int, epoch: int) -> list[int]:
        """Shard indices of a logical worker in `epoch` (not resampled): ranks first, then workers."""
        c = self.config
        order = shard_order(len(self.shards.urls), seed=c.seed, epoch=epoch, shuffle=c.shuffle)
        return take_share(take_share(order, c.rank, c.world_size), worker, c.workers)

    def worker_samples(self, worker: int, epoch: int) -> int:
        """Samples a logical worker reads in `epoch` (not resampled; needs the manifest's counts)."""
        counts = self.shards.counts
        assert counts is not None
        return sum(counts[i] for i in self.worker_shards(worker, epoch))

    def new_stats(self) -> Stats:
        """An empty record of what skip mode left out (a mix's also counts by stream)."""
        return Stats()

    def after_assembly(self, group: list[Sample], batch: dict) -> None:
        """A hook for a batch once decoded (a mix rewrites masks into its classes): nothing for one set."""

    def samples(self, worker: int, stats: Stats) -> Iterator[Sample]:
        """The raw samples of a logical worker, in order, before its shuffle buffer."""
        c, epoch = self.config, self.position.epoch
        n = len(self.shards.urls)
        if c.resampled:
            rng = np.random.default_rng(derive_seed(c.seed, epoch, c.rank, worker, RESAMPLE))
            order: Iterator[int] | list[int] = resampled(n, rng)
        else:
            order = self.worker_shards(worker, epoch)
        return read_shards(
            self.shards.urls,
            order,
            counts=self.shards.counts,
            retry=c.retry,
            on_error=c.on_error,
            stats=stats,
            give_up_after=n + 10,
            sizes=self.shards.sizes,
            sha256=self.shards.sha256,
            verify=c.verify,
            limits=c.limits,
        )

    def worker_groups(self, worker: int, stats: Stats) -> Iterator[list[Sample]]:
        """The raw sample groups (future batches) of a logical worker, in order."""
        c, epoch = self.config, self.position.epoch
        samples = self.samples(worker, stats)
        if c.shuffle:
            rng_buffer = random.Random(derive_seed(c.seed, epoch, c.rank, worker, SHUFFLE_BUFFER))
            samples = shuffle_buffer(samples, c.shuffle_buffer, rng_buffer)
        batches = groups(samples, c.batch_size, drop_last=c.drop_last)
        return islice(batches, c.worker_quota(worker)) if c.resampled else batches

    def __iter__(self) -> Iterator[Message]:
        slot = worker_slot()
        if slot is not None and self.board is not None:
            self.position = EpochPosition.from_row(self.board.read())
        logical = ((slot or 0) + self.position.next_worker) % self.config.workers
        return self.worker_items(logical, in_worker=slot is not None)

    def worker_items(self, worker: int, *, in_worker: bool) -> Iterator[Message]:
        """Chunks of `worker`'s decoded batches after the ones it already delivered, then its WorkerEnd."""
        c = self.config
        stats = self.new_stats()
        if in_worker and self.use_rings and self.ring is None:
            self.ring = WorkerRing(c.ring_slots)
        ring = self.ring if in_worker else None
        if ring is not None:
            ring.begin_iteration()
        assembler = (BytesAssembler if c.decode_device else BatchAssembler)(
            schema=self.shards.schema,
            size=c.size,
            with_meta=c.with_meta,
            allocate=ring.allocate if ring else shared_buffer if in_worker else plain_buffer,
            limits=c.limits,
            augmenting=Augmenting(c.augment, c.seed, self.position.epoch) if c.augment else None,
            transforming=Transforming(c.transform, c.seed, self.position.epoch) if c.transform else None,
        )

        def on_error(exc: ShardFormatError) -> None:
            if c.on_error == "raise":
                raise exc
            stats.add(str(exc), shard=False)

        mine = self.position.workers[worker]
        skip, per_item = mine.delivered, mine.per_item if in_worker else 1
        chunk = Chunk(worker)
        for index, group in enumerate(self.worker_groups(worker, stats)):
            if index < skip:
                continue  # delivered before the checkpoint: read (to replay the shuffle) but not decoded
            if ring is not None and not chunk.parcels:
                ring.begin_item()
            batch = assembler(group, on_error)
            self.after_assembly(group, batch)
            if per_item is None and BUFFER in batch:
                per_item = batches_per_item(batch[BUFFER].numel(), c.transfer_bytes)
            chunk.parcels.append(Parcel(batch))
            if per_item is None or (index + 1) % per_item == 0:
                chunk.per_item = per_item
                yield ring.seal(chunk) if ring is not None else chunk
                chunk = Chunk(worker)
        if chunk.parcels:
            chunk.per_item = per_item
            yield ring.seal(chunk) if ring is not None else chunk
        if not mine.ended:
            yield WorkerEnd(worker, stats)


def batches_per_item(batch_bytes: int, transfer_bytes: int) -> int:
    """How many batches of `batch_bytes` make one item of about `transfer_bytes` (1 to MAX_PER_ITEM)."""
    return max(1, min(MAX_PER_ITEM, transfer_bytes // max(1, batch_bytes)))
