"""`make_loader`: batches of a shard set for training, with epochs, rank/worker splitting and mid-epoch resume.

Epochs. The shard order of epoch e is a permutation seeded by (seed, e), identical on every rank; rank r
takes shards r, r+R, r+2R ... of it and its worker w every W-th of those, so with W workers on each of R
ranks every sample is read exactly once per epoch. When the shards do not divide evenly (or hold unequal
counts) that stays true, but ranks and workers get unequal numbers of samples, so ranks may run different
numbers of batches: for DistributedDataParallel use `resampled=True`, or shards that divide evenly. Each
worker shuffles through a buffer seeded by (seed, epoch, rank, worker) and batches on its own, so each
worker ends with a short batch unless `drop_last=True`. In resampled mode every worker draws shards with
replacement (seeded by seed, epoch, rank, worker) and an "epoch" is `epoch_batches` batches per rank (by
default the split's size divided by world_size * batch_size): an endless stream cut into equal epochs, so
every rank runs the same number of steps and checkpoints still fall on epochs.

Iterating the loader continues from its position: a full pass ends the epoch and moves to the next one
(`set_epoch(e)` chooses another; setting the current epoch again keeps the position, so a resumed loader
stays mid-epoch). `state_dict()` after k batches records (epoch, batches delivered per worker, the worker
due next); `load_state_dict` on a loader with the same settings and shards makes it yield exactly the
remaining batches of that epoch in the uninterrupted order. Resuming re-reads, without decoding, the
samples each worker had delivered: the shuffle buffers are replayed rather than stored.

A consumer that reads one batch ahead of what it hands on (`DevicePrefetcher`) says so with `hold_last`:
while it holds the last batch, `state_dict()` is the position before that batch, so the state a training
loop saves inside `for batch in DevicePrefetcher(loader, ...)` resumes at the batch it has not trained on,
and an iteration closed while it holds one leaves the loader before that batch.

Batches are dicts: `image` uint8 (N, C, H, W), `mask` uint8 (N, H, W), `key` list[str], one tensor (N, *shape)
per target of the set's schema (mnist-circle: `label` int64 (N,), `circle` float32 (N, 3)), `meta`
list[dict] with `with_meta=True`; shard URLs without a manifest yield targets given `schema`.

Options of `make_loader`. rank/world_size default to torch.distributed's when it is initialised.
`size=(H, W)` letterboxes images (see `segshards.loaders.decode`); for a set whose images vary in size it
defaults to the size its schema suggests for training (`schema.training.size`), so every batch has one
shape. `on_error="skip"` counts and reports corrupt shards and samples (`loader.stats`, a
SkippedDataWarning at the end of the epoch) instead of raising. Each shard's byte count is checked
against the manifest, and its sha256 as `verify` says: "stream" (the default) hashes the bytes as they are
read, so the check ends with the shard, after its samples were handed on (a mismatch then raises a
ShardFormatError naming the URL, or in skip mode is counted: samples of that shard may already be in
batches); "before" reads and checks the whole shard (at most the manifest's byte count, held in memory)
before any of its samples, so a shard that fails delivers none; "off" skips the sha256. Shard URLs
without a manifest have no byte counts or hashes: nothing to check. `limits` (a
`segshards.writer.format.limits.DecodeLimits`; default: the defaults and SEGSHARDS_MAX_* environment
variables) bound members, images and batches. pin_memory defaults to torch.cuda.is_available(). A worker
sends its batches to the main process in items of about `transfer_bytes` (several small batches per item;
`prefetch_factor` items per worker in flight). `augment=Augment()` replaces the letterbox of JPEG photographs
by torchvision's segmentation train transform, seeded per (seed, epoch, key) (`segshards.loaders.augment`);
`transform=fn` runs the user's callable on each decoded pair in the workers, seeded likewise
(`segshards.loaders.transform`). `decode_device="cuda"` (or "cpu") has the workers hand on the JPEG bytes
of photographs (checked, masks decoded) and decodes and letterboxes each batch's images on that device in
the main process (`segshards.loaders.device_decode`).
"""

import hashlib
import math
import operator
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from segshards.loaders.augment import Augment
from segshards.loaders.dataset import LoaderConfig, ShardStream
from segshards.loaders.decode import unpack
from segshards.loaders.device_decode import BatchDecoder, check_decode_options, device_of
from segshards.loaders.errors import ResumeError, SkippedDataWarning
from segshards.loaders.integrity import VERIFY_MODES, Verify
from segshards.loaders.messages import WorkerEnd
from segshards.loaders.mix import MixPlan, MixStream, resolve_sources
from segshards.loaders.photo import JPEG_MEMBERS
from segshards.loaders.position import EpochPosition
from segshards.loaders.source import ShardSet
from segshards.loaders.stages import OnError, Stats
from segshards.loaders.storage import RetryPolicy
from segshards.loaders.streams import Stream
from segshards.loaders.transform import NAMED_ARRAYS, Transform, takes_named_arrays
from segshards.loaders.transport import receive
from segshards.loaders.worker_pool import PositionBoard, WorkerPool, original_error
from segshards.writer.errors import ConfigError, SegshardsError
from segshards.writer.format.limits import DecodeLimits, default_limits
from segshards.writer.format.schema import SampleSchema

STATE_VERSION = 2  # the keys of EpochPosition.state_dict(), "version" and "settings"


def distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, else from torch.distributed when initialised, else (0, 1)."""
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if ready else 0
    if world_size is None:
        world_size = dist.get_world_size() if ready else 1
    return rank, world_size


def validate(config: LoaderConfig, shards: ShardSet) -> None:
    """Refuse impossible settings, naming the option."""
    c = config
    checks = [
        (c.batch_size >= 1, f"batch_size {c.batch_size}: must be >= 1"),
        (c.num_workers >= 0, f"num_workers {c.num_workers}: must be >= 0"),
        (c.world_size >= 1, f"world_size {c.world_size}: must be >= 1"),
        (0 <= c.rank < c.world_size, f"rank {c.rank}: must be in 0..{c.world_size - 1}"),
        (c.seed >= 0, f"seed {c.seed}: must be >= 0"),
        (c.shuffle_buffer >= 0, f"shuffle_buffer {c.shuffle_buffer}: must be >= 0"),
        (c.on_error in ("raise", "skip"), f"on_error {c.on_error!r}: must be 'raise' or 'skip'"),
        (c.size is None or (len(c.size) == 2 and min(c.size) >= 1), f"size {c.size}: must be (H, W) >= 1"),
        (c.epoch_batches is None or c.epoch_batches >= 1, f"epoch_batches {c.epoch_batches}: must be >= 1"),
        (c.retry.attempts >= 1, f"retry.attempts {c.retry.attempts}: must be >= 1"),
        (c.transfer_bytes >= 1, f"transfer_bytes {c.transfer_bytes}: must be >= 1"),
        (
            c.verify in VERIFY_MODES,
            f"verify {c.verify!r}: must be one of {', '.join(map(repr, VERIFY_MODES))}",
        ),
        (
            c.limits is None or isinstance(c.limits, DecodeLimits),
            f"limits {c.limits!r}: must be a DecodeLimits",
        ),
        (c.augment is None or isinstance(c.augment, Augment), f"augment {c.augment!r}: must be an Augment"),
        (c.augment is None or c.size is not None, "augment: needs size=(H, W) (the crop's size)"),
        (c.transform is None or callable(c.transform), f"transform {c.transform!r}: must be callable"),
        (not takes_named_arrays(c.transform), f"transform {c.transform!r}: {NAMED_ARRAYS}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    image_member = shards.schema.image if shards.schema is not None else None
    if c.augment is not None and image_member not in (None, *JPEG_MEMBERS):
        raise ConfigError(
            f"augment: the set stores {image_member} images; only JPEG photographs are augmented"
        )
    check_decode_options(c.decode_device, size=c.size, transform=c.transform, image_member=image_member)
    if c.resampled and c.epoch_batches is None:
        raise ConfigError(f"{shards.source}: resampled mode without a manifest needs epoch_batches")


class ShardLoader:
    """An iterable of batch dicts over one split of a shard set (build it with `make_loader`)."""

    def __init__(
        self,
        shards: ShardSet,
        config: LoaderConfig,
        *,
        pin_memory: bool | None,
        prefetch_factor: int,
        mix: MixPlan | None = None,
    ) -> None:
        validate(config, shards)
        if mix is not None and config.resampled:
            raise ConfigError("resampled: not available for a mix (its epochs are exact; see make_loader)")
        self.shards, self.config, self.mix = shards, config, mix
        self.dataset = ShardStream(shards, config) if mix is None else MixStream(shards, config, mix)
        if config.num_workers:
            # Workers persist across iterations: each iteration's position reaches them through the board.
            self.dataset.board = PositionBoard(EpochPosition.row_size(config.workers))
            self.dataset.use_rings = True
        self.pool = WorkerPool(self.dataset, workers=config.num_workers, prefetch_factor=prefetch_factor)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        device = device_of(config.decode_device)
        fill = config.augment.image_fill if config.augment is not None else 0
        self.decoder = BatchDecoder(device, config.on_error, fill) if device is not None else None
        self.position = EpochPosition.start(0, config.workers)
        self.stats: Stats = self.dataset.new_stats()  # what on_error="skip" left out this (or last) epoch
        self._run = 0  # iterations started: only the latest may advance the position
        self._last: tuple[int, int] | None = None  # (worker, next_worker before it) of the last batch yielded
        self._held = False  # a reader ahead holds that batch and has not handed it on (`hold_last`)
        self._open = False  # an iteration has started and not ended (it may be suspended mid-epoch)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def batches(self) -> int:
        """Batches yielded so far in this epoch."""
        return self.position.batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._run += 1
        run = self._run
        position = self.position
        if not position.started:
            self.stats = self.dataset.new_stats()
        self.dataset.position = position.copy()
        self._forget_held()
        if self._open:
            # An earlier iteration is open mid-epoch: its workers are busy, and DataLoader's reset would drop
            # the chunks they have in flight with the ring slots those hold. Fresh workers replay instead.
            self.pool.stop(None)
        self._open = True
        board = self.dataset.board
        if board is not None:
            # The workers are idle (fresh, or done with the last iteration): they read this when resumed.
            board.write(position.to_row())
        iterator: Iterator[Any] | None = None
        completed = False
        try:
            iterator = self.pool.start()  # may raise: a persistent worker died since the last epoch
            while True:
                self._check_current(run)  # before taking a message: it may belong to a newer iteration
                message = next(iterator, None)
                if message is None:
                    break
                if isinstance(message, WorkerEnd):
                    position.end(message.worker)
                    self.stats.merge(message.stats)
                    continue
                position.workers[message.worker].per_item = message.per_item
                batches = receive(message, self.pool.rings, pin=self.pin_memory)
                for i, batch in enumerate(batches):
                    self._check_current(run)
                    last = (message.worker, position.next_worker)
                    position.deliver(message.worker, mid_item=i + 1 < len(batches))
                    out = unpack(batch) if self.decoder is None else self.decoder(unpack(batch), self.stats)
                    if out["key"]:  # an empty batch: every sample of its group failed (skip mode)
                        position.batches += 1
                        self._last = last
                        yield out
            self._check_current(run)
            completed = True
        except SegshardsError as exc:
            raise original_error(exc) from exc
        finally:
            # An iteration superseded by a newer one leaves the workers (shared with it) alone; one left
            # early stops them now (they may be blocked mid-item), and fresh ones replay the position.
            if self._run == run:
                self._open = False
                if not completed:
                    self.pool.stop(iterator)
                    if self._held and self._last is not None:
                        self.position.undeliver(*self._last)  # never handed on: the next iteration yields it
                    self._forget_held()
        self._finish_epoch()

    def _check_current(self, run: int) -> None:
        """Refuse to go on with an iteration once a newer one of this loader has started."""
        if self._run != run:
            raise RuntimeError("this loader was iterated again while this iteration was running")

    def _finish_epoch(self) -> None:
        s = self.stats
        if s.shards_failed or s.samples_skipped:
            first = s.errors[0] if s.errors else ""
            warnings.warn(
                SkippedDataWarning(
                    f"{self.shards.source}: epoch {self.epoch} skipped {s.shards_failed} shard(s) and "
                    f"{s.samples_skipped} sample(s); first: {first}"
                ),
                stacklevel=3,
            )
        self.position = EpochPosition.start(self.epoch + 1, self.config.workers)
        self._forget_held()

    def hold_last(self, held: bool) -> None:
        """Say whether a consumer reading ahead (DevicePrefetcher) holds the last batch yielded without
        having handed it on; while it does, `state_dict()` reports the position before that batch."""
        self._held = held and self._last is not None

    def _forget_held(self) -> None:
        self._last, self._held = None, False

    def forever(self) -> Iterator[dict[str, Any]]:
        """Batches without end, epoch after epoch: with `resampled=True`, the infinite stream of shard draws
        for multi-GPU training (the position and `state_dict()` keep following epochs and batches)."""
        while True:
            yield from self

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, unless it is the current epoch (then the position is kept)."""
        if epoch < 0:
            raise ConfigError(f"epoch {epoch}: must be >= 0")
        if epoch != self.epoch:
            self.position = EpochPosition.start(epoch, self.config.workers)
            self._forget_held()

    def __len__(self) -> int:
        """Batches this rank yields per epoch (all workers together)."""
        c = self.config
        if c.resampled:
            assert c.epoch_batches is not None
            return c.epoch_batches
        if self.shards.counts is None:
            raise TypeError(f"{self.shards.source}: epoch length unknown without a manifest")
        total = 0
        for worker in range(c.workers):
            n = self.dataset.worker_samples(worker, self.epoch)
            total += n // c.batch_size if c.drop_last else math.ceil(n / c.batch_size)
        return total

    def fingerprint(self) -> dict[str, Any]:
        """The settings a saved position only makes sense with."""
        c = self.config
        names = "\n".join(self.shards.names()) + repr(self.shards.counts)
        if self.mix is not None:
            names += repr(self.mix.describe())
        return {
            "num_workers": c.workers,
            "rank": c.rank,
            "world_size": c.world_size,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "shuffle": c.shuffle,
            "shuffle_buffer": c.shuffle_buffer,
            "resampled": c.resampled,
            "epoch_batches": c.epoch_batches,
            "drop_last": c.drop_last,
            "transfer_bytes": c.transfer_bytes,
            "shards": hashlib.sha256(names.encode()).hexdigest()[:16],
        }

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches handed on so far (yielded, less one a reader ahead still holds):
        save it with a training checkpoint."""
        position = self.position
        if self._held and self._last is not None:
            position = position.copy()
            position.undeliver(*self._last)
        return {"version": STATE_VERSION, **position.state_dict(), "settings": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (the next iteration yields the rest of that epoch)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else state
            raise ResumeError(f"loader state: unknown version {found!r}, this loader reads {STATE_VERSION}")
        saved, mine = state.get("settings"), self.fingerprint()
        if not isinstance(saved, dict):
            raise ResumeError("loader state: no 'settings' recorded with the position")
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ResumeError(
                    f"loader state: saved with {key}={saved.get(key)!r}, this loader has {value!r}; "
                    "the rest of the epoch can only be replayed with the same settings"
                )
        self.position = EpochPosition.from_state_dict(state, self.config.workers)
        self._forget_held()


def letterbox_size(size: tuple[int, int] | None, schema: SampleSchema | None) -> tuple[int, int] | None:
    """The (H, W) images are letterboxed to: `size` as given, else for a set of variable-size images the
    training size its schema suggests, else None (as stored)."""
    if size is not None:
        try:  # two whole numbers (numpy's too); a bool is left out, so that (True, True) falls short of two
            h, w = (operator.index(side) for side in size if not isinstance(side, bool))
        except (TypeError, ValueError):
            raise ConfigError(f"size {size!r}: must be (H, W), two whole numbers >= 1") from None
        return (h, w)
    if schema is None or schema.size is not None:
        return None
    hint = schema.training.get("size")
    return (int(hint[0]), int(hint[1])) if isinstance(hint, list) and len(hint) == 2 else None


def resampled_batches(
    epoch_batches: int | None, resampled: bool, total: int | None, per_step: int
) -> int | None:
    """Batches per rank and epoch: as given, else in resampled mode the split's size over `per_step`
    (world_size * batch_size) samples."""
    if resampled and epoch_batches is None and total is not None:
        return max(1, math.ceil(total / per_step))
    return epoch_batches


def make_loader(
    source: str | Path | Sequence[Stream],
    split: str,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    resampled: bool = False,
    epoch_batches: int | None = None,
    drop_last: bool = False,
    shuffle_buffer: int = 1000,
    size: tuple[int, int] | None = None,
    on_error: OnError = "raise",
    with_meta: bool = False,
    schema: SampleSchema | str | Path | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    retry: RetryPolicy | None = None,
    transfer_bytes: int = 8 << 20,
    verify: Verify = "stream",
    limits: DecodeLimits | None = None,
    epoch_size: int | None = None,
    classes: Sequence[str] | None = None,
    augment: Augment | None = None,
    transform: Transform | None = None,
    decode_device: str | None = None,
) -> ShardLoader:
    """A loader of `split` from `source`: a set's folder (a path, or an http(s):// or s3:// URL), shard URLs,
    or a mix (a list of `Stream`s with `epoch_size`, `classes`). Batches and options: see "Options" above."""
    rank, world_size = distributed_defaults(rank, world_size)
    retry = retry or RetryPolicy()
    shards, mix = resolve_sources(source, split, schema, retry, epoch_size, classes)
    epoch_batches = resampled_batches(epoch_batches, resampled, shards.total, world_size * batch_size)
    config = LoaderConfig(
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        resampled=resampled,
        epoch_batches=epoch_batches,
        drop_last=drop_last,
        shuffle_buffer=shuffle_buffer,
        size=letterbox_size(size, shards.schema),
        on_error=on_error,
        with_meta=with_meta,
        retry=retry,
        transfer_bytes=transfer_bytes,
        ring_slots=prefetch_factor + 3,
        verify=verify,
        limits=limits if limits is not None else default_limits(),
        augment=augment,
        transform=transform,
        decode_device=decode_device,
    )
    return ShardLoader(shards, config, pin_memory=pin_memory, prefetch_factor=prefetch_factor, mix=mix)


__all__ = ["LoaderConfig", "ShardLoader", "Stream", "make_loader"]
