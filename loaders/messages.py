"""What DataLoader workers send the main process: chunks of batches, then one end-of-stream message each.

Each is one DataLoader item, pickled across (its tensors travel as shared memory). A chunk's batches are
`segshards.loaders.decode.BatchAssembler`'s packed batches; one whose buffer lies in the worker's ring of
reused shared memory travels without it, as a `RingRef` (see `segshards.loaders.transport`).
"""

from dataclasses import dataclass, field

import torch

from segshards.loaders.stages import Stats


@dataclass(frozen=True)
class RingRef:
    """Where a batch's buffer lies in its worker's ring: the ring, the slot, the worker's item (chunk) that
    holds it, byte offset in the slot, byte size."""

    ring: str
    slot: int
    item: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class RingShare:
    """A worker's ring, sent with the first chunk of each iteration (the main process keeps the first it
    gets): its id, its (slots, slot_bytes) shared buffer and the slots' release marks (shared int64,
    written by the main process)."""

    id: str
    buffer: torch.Tensor
    marks: torch.Tensor
    replaces: str | None = None  # the id of the worker's ring this one replaces


@dataclass
class Parcel:
    """One packed batch in transit: with its own buffer, or without it and with `ref` into the ring."""

    batch: dict
    ref: RingRef | None = None


@dataclass
class Chunk:
    """Consecutive batches of one logical worker; chunks start at multiples of `per_item` in its sequence."""

    worker: int
    parcels: list[Parcel] = field(default_factory=list)
    per_item: int | None = None  # None until the worker's first decoded batch fixes it
    ring: RingShare | None = None  # the worker's ring, with the first chunk of each iteration after it exists


@dataclass
class WorkerEnd:
    """A logical worker's last message of an iteration: what it skipped (on_error="skip")."""

    worker: int
    stats: Stats


Message = Chunk | WorkerEnd
