"""Worker-to-main transport: ring slots reused only once released, fresh buffers otherwise, private copies."""

import torch
from segshards.loaders.decode import BUFFER
from segshards.loaders.transport import BATCHES, RING, RING_REF, WorkerRing, receive, release_counters


def item_of(ring: WorkerRing, nbytes: int, value: int, batches: int = 2) -> dict:
    ring.begin_item()
    chunk = []
    for _ in range(batches):
        buffer = ring.allocate(nbytes)
        buffer.fill_(value)
        chunk.append({BUFFER: buffer, "key": ["k"]})
    return ring.seal({BATCHES: chunk}, per_item=batches)


def test_slots_are_reused_only_after_release_and_copied_out() -> None:
    released = release_counters(2)
    ring = WorkerRing(released, worker=1, slots=3)
    first = item_of(ring, 100, value=1)
    assert RING in first and all(BUFFER in b for b in first[BATCHES])  # no ring yet: fresh buffers
    assert ring.buffer is not None and ring.buffer.shape == (3, 2 * 128) and ring.buffer.is_shared()
    rings: dict[int, torch.Tensor] = {}
    got = receive(first, rings, released, 1, pin=False)
    assert [int(b[BUFFER][0]) for b in got] == [1, 1] and released.tolist() == [0, 1]

    items = [item_of(ring, 100, value=v) for v in (2, 3)]  # items 1 and 2 take slots 1 and 2
    assert all(RING_REF in b for it in items for b in it[BATCHES])
    assert [b[RING_REF][:2] for b in items[1][BATCHES]] == [(2, 0), (2, 128)]
    reused = item_of(ring, 100, value=4)  # item 3 takes slot 0: item 0 (fresh buffers) is released
    assert all(RING_REF in b for b in reused[BATCHES])
    busy = item_of(ring, 100, value=5)  # item 4 wants slot 1, still held by unreleased item 1: fresh
    assert all(BUFFER in b for b in busy[BATCHES])

    second = receive(items[0], rings, released, 1, pin=False)
    ring.buffer.fill_(9)  # the worker reuses the slot: the received batch is a private copy
    assert int(second[0][BUFFER].sum()) == 2 * 100 and released.tolist() == [0, 2]


def test_batches_larger_than_a_slot_fall_back_to_fresh_buffers() -> None:
    released = release_counters(1)
    ring = WorkerRing(released, worker=0, slots=2)
    item_of(ring, 64, value=1, batches=1)
    big = item_of(ring, 1000, value=2, batches=1)
    assert BUFFER in big[BATCHES][0] and big[BATCHES][0][BUFFER].numel() == 1000
