"""Worker-to-main transport: ring slots reused only once released, fresh buffers otherwise, private copies."""

import torch

from segshards.loaders.decode import BUFFER
from segshards.loaders.messages import Chunk, Parcel, RingRef
from segshards.loaders.transport import WorkerRing, receive, release_counters


def item_of(ring: WorkerRing, nbytes: int, value: int, batches: int = 2) -> Chunk:
    ring.begin_item()
    chunk = Chunk(ring.worker, per_item=batches)
    for _ in range(batches):
        buffer = ring.allocate(nbytes)
        buffer.fill_(value)
        chunk.parcels.append(Parcel({BUFFER: buffer, "key": ["k"]}))
    return ring.seal(chunk)


def test_slots_are_reused_only_after_release_and_copied_out() -> None:
    released = release_counters(2)
    ring = WorkerRing(released, worker=1, slots=3)
    first = item_of(ring, 100, value=1)
    assert first.ring is not None and all(p.ref is None and BUFFER in p.batch for p in first.parcels)
    assert ring.buffer is not None and ring.buffer.shape == (3, 2 * 128) and ring.buffer.is_shared()
    rings: dict[int, torch.Tensor] = {}
    got = receive(first, rings, released, pin=False)
    assert [int(b[BUFFER][0]) for b in got] == [1, 1] and released.tolist() == [0, 1]

    items = [item_of(ring, 100, value=v) for v in (2, 3)]  # items 1 and 2 take slots 1 and 2
    assert all(BUFFER not in p.batch for it in items for p in it.parcels)
    assert [p.ref for p in items[1].parcels] == [RingRef(2, 0, 100), RingRef(2, 128, 100)]
    assert items[0].ring is None  # the ring travels once
    reused = item_of(ring, 100, value=4)  # item 3 takes slot 0: item 0 (fresh buffers) is released
    assert all(p.ref is not None for p in reused.parcels)
    busy = item_of(ring, 100, value=5)  # item 4 wants slot 1, still held by unreleased item 1: fresh
    assert all(p.ref is None and BUFFER in p.batch for p in busy.parcels)

    second = receive(items[0], rings, released, pin=False)
    ring.buffer.fill_(9)  # the worker reuses the slot: the received batch is a private copy
    assert int(second[0][BUFFER].sum()) == 2 * 100 and released.tolist() == [0, 2]


def test_batches_larger_than_a_slot_fall_back_to_fresh_buffers() -> None:
    released = release_counters(1)
    ring = WorkerRing(released, worker=0, slots=2)
    item_of(ring, 64, value=1, batches=1)
    big = item_of(ring, 1000, value=2, batches=1)
    assert big.parcels[0].ref is None and big.parcels[0].batch[BUFFER].numel() == 1000
