"""How decoded batches cross from DataLoader workers to the main process: each worker's ring of reused
shared-memory slots, kept for the worker's life, lent out to the user without a copy.

Sending a fresh shared-memory tensor per batch costs a new mapping on both sides (page faults, ~7 us a page
in a VM: about a quarter of the decode time of a small image), a file descriptor passed through a socket,
and an unmapping later. Instead each worker process owns a ring of `slots` shared buffers and a row of
release marks, both sent once with its first chunk and kept from one epoch to the next (making them anew
each epoch cost ~80 ms a worker for photographs). A chunk decoded into slot s travels as references (ring,
slot, item, offset, size). The main process hands the user views of the slot itself: the slot is marked
released (the item's number written into its mark) once the last tensor over any batch of the chunk is
freed. Feeding a GPU, it copies the batches into pinned memory instead (the copy DataLoader's pinning
thread would make anyway) and marks the slot at once. Copying every batch out, as this did before, cost the
main process half its time with 2 photo workers (~2.4 ms a 13 MB batch).

A worker writes into a slot only once the item that last used it is marked released; when none is (the user
holds on to batches), and for its first chunk, it falls back to a fresh shared buffer. It never waits, and
never writes where a batch the user can still read lies.
"""

import os
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segshards.loaders.decode import BUFFER
from segshards.loaders.messages import Chunk, RingRef, RingShare

ALIGN = 64


def shared_buffer(nbytes: int) -> torch.Tensor:
    """A fresh uint8 buffer in shared memory."""
    return torch.empty(nbytes, dtype=torch.uint8).share_memory_()


def plain_buffer(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


class WorkerRing:
    """A worker's side: hands out buffers for the batches of one chunk at a time, from a released slot."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.buffer: torch.Tensor | None = None  # (slots, slot_bytes) uint8, created after the first chunk
        self.share: RingShare | None = None  # the ring as the main process receives it (a random id: pids
        # are reused), made after the first chunk
        self.marks: np.ndarray | None = None  # per slot: 1 + the last item the main process released from it
        self.owner = [-1] * slots  # per slot: the item that last used it (-1: none yet)
        self.items = 0  # chunks sealed so far
        self.shared = False  # whether this iteration's chunks have carried the ring yet
        self.slot: int | None = None
        self.offset = 0
        self.refs: dict[int, tuple[torch.Tensor, RingRef]] = {}  # by id() of a view, kept alive here

    def begin_iteration(self) -> None:
        """The ring goes out again with the iteration's first chunk after it exists (the main process keeps
        the one it has; a chunk that carried it may have been dropped by DataLoader's reset)."""
        self.shared = False

    def begin_item(self) -> None:
        """Pick a slot for the next chunk among those whose last item has been released, if any."""
        self.offset, self.refs, self.slot = 0, {}, None
        if self.marks is None:
            return
        for k in range(self.slots):
            slot = (self.items + k) % self.slots
            if self.owner[slot] < 0 or self.marks[slot] > self.owner[slot]:
                self.slot = slot
                return

    def allocate(self, nbytes: int) -> torch.Tensor:
        """A buffer for one batch of the current chunk: a view of its slot, or a fresh shared buffer."""
        if self.slot is not None and self.buffer is not None and self.offset + nbytes <= self.buffer.shape[1]:
            view = self.buffer[self.slot, self.offset : self.offset + nbytes]
            # The view is kept with its ref: a batch that failed drops its buffer, and a fresh buffer made
            # next could otherwise take over its id() and be sent as this slot's bytes.
            ring = self.share.id if self.share is not None else ""
            self.refs[id(view)] = (view, RingRef(ring, self.slot, self.items, self.offset, nbytes))
            self.offset += -(-nbytes // ALIGN) * ALIGN
            return view
        return shared_buffer(nbytes)

    def seal(self, chunk: Chunk) -> Chunk:
        """Turn slot views into references (the slot is then the chunk's until released); the first chunk
        makes the ring, sized from its batches, and a chunk too large for it a larger one (a resumed epoch
        may start with a short batch); the first chunk of each iteration carries the ring."""
        for parcel in chunk.parcels:
            buffer = parcel.batch.get(BUFFER)
            view, ref = self.refs.get(id(buffer), (None, None))
            if ref is not None and view is buffer:
                del parcel.batch[BUFFER]
                parcel.ref = ref
                self.owner[ref.slot] = self.items
        self.refs = {}
        fresh = [p.batch[BUFFER].numel() for p in chunk.parcels if BUFFER in p.batch]
        if fresh and chunk.per_item is not None:
            slot_bytes = chunk.per_item * -(-max(fresh) // ALIGN) * ALIGN
            if self.buffer is None or slot_bytes > self.buffer.shape[1]:
                self._make(slot_bytes)
        if self.share is not None and not self.shared:
            chunk.ring, self.shared = self.share, True
        self.items += 1
        return chunk

    def _make(self, slot_bytes: int) -> None:
        """A new ring (its slots all free); the main process drops the one it replaces once lent out."""
        replaces = self.share.id if self.share is not None else None
        self.owner, self.shared = [-1] * self.slots, False
        self.buffer = torch.zeros((self.slots, slot_bytes), dtype=torch.uint8).share_memory_()  # touched once
        marks = torch.zeros(self.slots, dtype=torch.int64).share_memory_()
        self.share, self.marks = RingShare(uuid.uuid4().hex, self.buffer, marks, replaces), marks.numpy()


class _Lent(np.ndarray):
    """A view of a ring slot whose `lease` is dropped when the view is freed: torch's `from_numpy` keeps it
    alive as long as any tensor over its memory lives."""

    def __del__(self) -> None:
        lease = self.__dict__.get("lease")
        if lease is not None:
            lease.drop()


@dataclass(eq=False)
class SlotLease:
    """The batches of one chunk lent out of a ring slot: the slot is marked released when the last tensor
    over any of them is freed, in the process that received them (a forked child dropping its copies of the
    parent's batches must not hand the slot back while the parent still reads it), unless the process has
    forked since: the child shares the slot's memory and may still read it, so the slot is never handed
    back (the worker writes to fresh shared memory instead of it)."""

    marks: np.ndarray
    slot: int
    item: int
    lent: int = 0
    pid: int = field(default_factory=os.getpid)
    retired: bool = False

    def lend(self, view: torch.Tensor) -> torch.Tensor:
        array = view.numpy().view(_Lent)
        array.lease = self  # type: ignore[attr-defined]
        self.lent += 1
        return torch.from_numpy(array)

    def drop(self) -> None:
        self.lent -= 1
        if self.lent == 0 and not self.retired and os.getpid() == self.pid:
            self.marks[self.slot] = self.item + 1


_LENT: "weakref.WeakSet[SlotLease]" = weakref.WeakSet()  # leases with batches still lent out
_TRUSTED = threading.local()  # set while the loader forks its own workers


@contextmanager
def trusted_forks() -> Iterator[None]:
    """Forks made inside are the loader's own DataLoader workers, which never read the parent's batches:
    they leave the leases as they are."""
    _TRUSTED.on = True
    try:
        yield
    finally:
        _TRUSTED.on = False


def _retire_lent() -> None:
    """After a fork, in the parent: the slots of batches lent out now are never handed back."""
    if not getattr(_TRUSTED, "on", False):
        for lease in list(_LENT):
            lease.retired = True


os.register_at_fork(after_in_parent=_retire_lent)


def receive(chunk: Chunk, rings: dict[str, RingShare], *, pin: bool) -> list[dict[str, Any]]:
    """The main process's side: the chunk's batches, lent out of the ring (or, with `pin`, copied into
    pinned memory and the slot released at once)."""
    if chunk.ring is not None:
        rings.setdefault(chunk.ring.id, chunk.ring)  # a ring it has is kept: its pages are mapped
    batches, lease, copied = [], None, None
    for parcel in chunk.parcels:
        batch, ref = parcel.batch, parcel.ref
        if ref is not None:
            ring = rings[ref.ring]
            view = ring.buffer[ref.slot, ref.offset : ref.offset + ref.nbytes]
            if pin:
                batch[BUFFER], copied = copy(view, pin=True), (ring, ref)
            else:
                if lease is None:
                    lease = SlotLease(ring.marks.numpy(), ref.slot, ref.item)
                    _LENT.add(lease)
                batch[BUFFER] = lease.lend(view)
        elif pin and BUFFER in batch:
            batch[BUFFER] = copy(batch[BUFFER], pin=True)
        batches.append(batch)
    if copied is not None:
        ring, ref = copied
        ring.marks.numpy()[ref.slot] = ref.item + 1
    if chunk.ring is not None and chunk.ring.replaces is not None:
        # Only this chunk's parcels may still refer to the ring replaced (the one that outgrew it made the
        # new ring); lent batches keep theirs.
        rings.pop(chunk.ring.replaces, None)
    return batches


def copy(source: torch.Tensor, *, pin: bool) -> torch.Tensor:
    """A private copy of a buffer, in page-locked memory when `pin` (for non-blocking copies to a GPU)."""
    target = torch.empty(source.numel(), dtype=torch.uint8, pin_memory=pin)
    target.numpy()[:] = source.numpy()  # one memcpy: torch's copy_ would wake its intra-op thread pool
    return target
