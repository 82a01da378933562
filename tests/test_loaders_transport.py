"""Worker-to-main transport: ring slots lent to the user without a copy and reused only once every tensor
over them is freed, fresh buffers otherwise, pinned copies released at once."""

import gc
from pathlib import Path
from typing import Any

import pytest

from segshards.loaders.decode import BUFFER
from segshards.loaders.messages import Chunk, Parcel, RingShare
from segshards.loaders.transport import WorkerRing, receive


def item_of(ring: WorkerRing, nbytes: int, value: int, batches: int = 2) -> Chunk:
    ring.begin_item()
    chunk = Chunk(0, per_item=batches)
    for _ in range(batches):
        buffer = ring.allocate(nbytes)
        buffer.fill_(value)
        chunk.parcels.append(Parcel({BUFFER: buffer, "key": ["k"]}))
    return ring.seal(chunk)


def values(batches: list[dict[str, Any]]) -> list[int]:
    return [int(b[BUFFER][0]) for b in batches]


def test_the_first_chunk_travels_in_fresh_buffers_with_the_ring() -> None:
    ring = WorkerRing(slots=3)
    first = item_of(ring, 100, value=1)
    assert isinstance(first.ring, RingShare) and all(
        p.ref is None and BUFFER in p.batch for p in first.parcels
    )
    assert ring.buffer is not None and ring.buffer.shape == (3, 2 * 128) and ring.buffer.is_shared()
    second = item_of(ring, 100, value=2)
    assert second.ring is None and [p.ref.slot for p in second.parcels if p.ref] == [1, 1]
    rings: dict[Any, RingShare] = {}
    assert values(receive(first, rings, pin=False)) == [1, 1]
    assert values(receive(second, rings, pin=False)) == [2, 2]


def test_a_lent_slot_is_reused_only_once_every_tensor_over_it_is_freed() -> None:
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 100, value=1), rings, pin=False)
    held = receive(item_of(ring, 100, value=2), rings, pin=False)  # item 1 in slot 1
    kept = held[1][BUFFER][10:20]  # a view of the second batch outlives the batch dicts
    del held
    taken = item_of(ring, 100, value=3)  # item 2: slot 0 was never used, so it is free
    assert [p.ref.slot for p in taken.parcels if p.ref] == [0, 0]
    busy = item_of(ring, 100, value=4)  # item 3: slot 0 not received yet, slot 1 still lent: fresh
    assert all(p.ref is None and BUFFER in p.batch for p in busy.parcels)
    assert int(kept.sum()) == 2 * 10  # never overwritten
    del kept
    gc.collect()
    again = item_of(ring, 100, value=5)  # slot 1 released with its last view
    assert [p.ref.slot for p in again.parcels if p.ref] == [1, 1]


def test_slots_are_released_out_of_order() -> None:
    ring = WorkerRing(slots=3)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)  # fresh: makes the ring
    first = receive(item_of(ring, 64, value=2, batches=1), rings, pin=False)  # slot 1
    second = receive(item_of(ring, 64, value=3, batches=1), rings, pin=False)  # slot 2
    third = receive(item_of(ring, 64, value=4, batches=1), rings, pin=False)  # slot 0
    del second  # the user frees the middle one first
    nxt = item_of(ring, 64, value=5, batches=1)
    assert nxt.parcels[0].ref is not None and nxt.parcels[0].ref.slot == 2
    assert values(first) == [2] and values(third) == [4]


def test_pinned_batches_are_copied_and_their_slot_released_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from segshards.loaders import transport

    plain_copy = transport.copy
    monkeypatch.setattr(transport, "copy", lambda source, *, pin: plain_copy(source, pin=False))  # no CUDA
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 100, value=1), rings, pin=True)
    copied = receive(item_of(ring, 100, value=2), rings, pin=True)  # item 1 in slot 1
    assert ring.marks is not None and ring.marks[1] == 2  # released while the copies are held
    assert ring.buffer is not None
    ring.buffer.fill_(9)
    assert values(copied) == [2, 2]


def test_batches_larger_than_a_slot_fall_back_to_fresh_buffers() -> None:
    ring = WorkerRing(slots=2)
    item_of(ring, 64, value=1, batches=1)
    big = item_of(ring, 1000, value=2, batches=1)
    assert big.parcels[0].ref is None and big.parcels[0].batch[BUFFER].numel() == 1000


def pixels_by_key(batches: list[dict[str, Any]]) -> dict[str, tuple[bytes, bytes]]:
    """Each sample's image and mask bytes, from batches the caller still holds."""
    out = {}
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            out[key] = (batch["image"][i].numpy().tobytes(), batch["mask"][i].numpy().tobytes())
    return out


def test_batches_held_through_an_epoch_and_the_next_keep_their_pixels(grid_set: Path) -> None:
    """Every batch of a 2-worker epoch is held (a list, as a user may collect them) while the workers go
    on, and through a second epoch from the same workers: none is overwritten by a reused slot."""
    from segshards.loaders import make_loader

    reference = pixels_by_key(list(make_loader(grid_set, "train", 16, num_workers=0, shuffle=False)))
    loader = make_loader(grid_set, "train", 16, num_workers=2, shuffle=False, transfer_bytes=1)
    held = list(loader)
    again = list(loader)  # epoch 2: the rings persist, its slots partly still lent out
    assert pixels_by_key(held) == reference
    assert pixels_by_key(again) == reference
    del held, again
    gc.collect()
    third = [pixels_by_key([batch]) for batch in loader]  # dropped as they go: slots come back
    assert {k: v for part in third for k, v in part.items()} == reference
