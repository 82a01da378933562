"""How decoded batches cross from DataLoader workers to the main process: reused shared-memory slots.

Sending a fresh shared-memory tensor per batch costs a new mapping on both sides (page faults, ~7 us a page
in a VM: about a quarter of the decode time of a small image), a file descriptor passed through a socket,
and an unmapping later. Instead each worker owns a ring of `slots` shared buffers, sent once; a batch
decoded into slot s travels as a reference (slot, offset, size), and the main process copies it out (into
pinned memory when feeding a GPU, the copy DataLoader's pinning thread would make anyway) and bumps the
worker's release counter, a shared int64 per worker. A worker reuses a slot only once the item that last
used it is released; otherwise, and for its first item, it falls back to a fresh shared buffer, so it
never waits and never holds a slot the main process still needs.
"""

from typing import Any

import torch

from segshards.loaders.decode import BUFFER
from segshards.loaders.messages import Chunk, RingRef

ALIGN = 64


def shared_buffer(nbytes: int) -> torch.Tensor:
    """A fresh uint8 buffer in shared memory."""
    return torch.empty(nbytes, dtype=torch.uint8).share_memory_()


def plain_buffer(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def release_counters(workers: int) -> torch.Tensor:
    """One shared int64 per logical worker: items of that worker the main process has copied out."""
    return torch.zeros(workers, dtype=torch.int64).share_memory_()


class WorkerRing:
    """A worker's side: hands out buffers for the batches of one chunk at a time, from a reused slot."""

    def __init__(self, released: torch.Tensor, worker: int, slots: int) -> None:
        self.released, self.worker, self.slots = released.numpy(), worker, slots
        self.buffer: torch.Tensor | None = None  # (slots, slot_bytes) uint8, created after the first chunk
        self.items = 0  # chunks sealed so far
        self.slot: int | None = None
        self.offset = 0
        self.refs: dict[int, RingRef] = {}

    def begin_item(self) -> None:
        """Pick the slot of the next chunk, if the chunk that last used it has been released."""
        self.offset, self.refs = 0, {}
        free = self.buffer is not None and self.released[self.worker] >= self.items - self.slots + 1
        self.slot = self.items % self.slots if free else None

    def allocate(self, nbytes: int) -> torch.Tensor:
        """A buffer for one batch of the current chunk: a view of its slot, or a fresh shared buffer."""
        if self.slot is not None and self.buffer is not None and self.offset + nbytes <= self.buffer.shape[1]:
            view = self.buffer[self.slot, self.offset : self.offset + nbytes]
            self.refs[id(view)] = RingRef(self.slot, self.offset, nbytes)
            self.offset += -(-nbytes // ALIGN) * ALIGN
            return view
        return shared_buffer(nbytes)

    def seal(self, chunk: Chunk) -> Chunk:
        """Turn slot views into references; the first chunk also carries the new ring, sized from its
        batches."""
        for parcel in chunk.parcels:
            ref = self.refs.get(id(parcel.batch.get(BUFFER)))
            if ref is not None:
                del parcel.batch[BUFFER]
                parcel.ref = ref
        if self.buffer is None and chunk.per_item is not None:
            largest = max((p.batch[BUFFER].numel() for p in chunk.parcels if BUFFER in p.batch), default=0)
            if largest:
                slot_bytes = chunk.per_item * -(-largest // ALIGN) * ALIGN
                self.buffer = torch.zeros((self.slots, slot_bytes), dtype=torch.uint8).share_memory_()
                chunk.ring = self.buffer  # zeros: the pages are touched once, here
        self.items += 1
        return chunk


def receive(
    chunk: Chunk, rings: dict[int, torch.Tensor], released: torch.Tensor | None, *, pin: bool
) -> list[dict[str, Any]]:
    """The main process's side: the chunk's batches with buffers of their own, then the chunk released."""
    worker = chunk.worker
    if chunk.ring is not None:
        rings[worker] = chunk.ring
    batches = []
    for parcel in chunk.parcels:
        batch, ref = parcel.batch, parcel.ref
        if ref is not None:
            batch[BUFFER] = copy(rings[worker][ref.slot, ref.offset : ref.offset + ref.nbytes], pin=pin)
        elif pin and BUFFER in batch:
            batch[BUFFER] = copy(batch[BUFFER], pin=True)
        batches.append(batch)
    if released is not None:
        released.numpy()[worker] += 1
    return batches


def copy(source: torch.Tensor, *, pin: bool) -> torch.Tensor:
    """A private copy of a buffer, in page-locked memory when `pin` (for non-blocking copies to a GPU)."""
    target = torch.empty(source.numel(), dtype=torch.uint8, pin_memory=pin)
    target.numpy()[:] = source.numpy()  # one memcpy: torch's copy_ would wake its intra-op thread pool
    return target
