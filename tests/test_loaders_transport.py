"""Worker-to-main transport: ring slots lent to the user without a copy and reused only once every tensor
over them is freed, fresh buffers otherwise, pinned copies released at once."""

import gc
from pathlib import Path
from typing import Any

import pytest

from segshards.loaders.decode import BUFFER
from segshards.loaders.messages import Chunk, Parcel, RingShare
from segshards.loaders.transport import WorkerRing, receive, trusted_forks


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
    settings: dict[str, Any] = {
        "shuffle": False,
        "transfer_bytes": 1,
        "pin_memory": False,
    }  # lent, not copied
    loader = make_loader(grid_set, "train", 16, num_workers=2, **settings)
    held = list(loader)
    again = list(loader)  # epoch 2: the rings persist, its slots partly still lent out
    assert pixels_by_key(held) == reference
    assert pixels_by_key(again) == reference
    del held, again
    gc.collect()
    third = [pixels_by_key([batch]) for batch in loader]  # dropped as they go: slots come back
    assert {k: v for part in third for k, v in part.items()} == reference


def test_a_slot_taken_again_by_the_next_item_waits_for_that_item() -> None:
    """Marks name the item released: a slot that item 2 left and item 3 took is not free while item 3 is
    held, although item 2's release is marked on it."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)  # item 0: fresh, makes the ring
    held1 = receive(item_of(ring, 64, value=2, batches=1), rings, pin=False)  # item 1: slot 1, held
    receive(item_of(ring, 64, value=3, batches=1), rings, pin=False)  # item 2: slot 0, dropped at once
    held3 = receive(item_of(ring, 64, value=4, batches=1), rings, pin=False)  # item 3: slot 0 again, held
    nxt = item_of(ring, 64, value=5, batches=1)  # item 4: both slots lent
    assert all(p.ref is None for p in nxt.parcels)
    assert values(held3) == [4] and values(held1) == [2]


def test_a_fresh_buffer_made_after_a_failed_batch_is_sent_with_its_own_bytes() -> None:
    """A batch whose first sample fails drops the slot view it was given; the next one, finding the slot
    full, gets a fresh buffer, which must travel as itself, not as a reference to the dropped view."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)  # makes a ring of one batch a slot
    for _ in range(50):  # id() reuse of the dropped view is likely, not certain: try many times
        ring.begin_item()
        ring.allocate(64).fill_(7)  # the failed batch's view, dropped at once
        fresh = ring.allocate(64)
        fresh.fill_(8)
        chunk = ring.seal(Chunk(0, [Parcel({BUFFER: fresh, "key": ["k"]})], per_item=1))
        assert chunk.parcels[0].ref is None
        assert values(receive(chunk, rings, pin=False)) == [8]


def test_a_batch_larger_than_the_ring_makes_a_larger_ring() -> None:
    """A resumed epoch may give a worker a short batch first: the ring sized from it grows with the next
    full batch, and the main process drops the ring it replaces."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)
    first = ring.share
    big = item_of(ring, 1000, value=2, batches=1)  # does not fit: fresh, and a new ring
    assert big.parcels[0].ref is None and ring.buffer is not None and ring.buffer.shape == (2, 1024)
    assert first is not None and big.ring is not None and big.ring.replaces == first.id
    assert values(receive(big, rings, pin=False)) == [2] and list(rings) == [big.ring.id]
    again = item_of(ring, 1000, value=3, batches=1)
    assert again.parcels[0].ref is not None
    assert values(receive(again, rings, pin=False)) == [3]


def test_skip_mode_with_workers_gives_each_kept_photo_its_own_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo that fails first in its batch (after the batch's buffer was taken from the ring) is skipped,
    and the batch still carries its own samples' pixels, epoch after epoch, as with no workers."""
    import warnings

    from segshards.loaders import decode, make_loader
    from segshards.writer.cli.main import main
    from segshards.writer.errors import ShardFormatError
    from tests.coco_fixtures import write_coco

    fixture = write_coco(tmp_path / "src")
    argv = ["build", "coco-semantic", *fixture.args(), "--out", str(tmp_path / "set"), "--jobs", "1"]
    assert main([*argv, "--train", "6", "--val", "0", "--test", "0", "--no-progress"]) == 0
    settings: dict[str, Any] = {"batch_size": 2, "shuffle": False, "size": (24, 32), "on_error": "skip"}
    settings.update(transfer_bytes=1, pin_memory=False)
    keys = [k for b in make_loader(tmp_path / "set", "train", num_workers=0, **settings) for k in b["key"]]
    real = decode.read_photo

    def failing(sample: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if sample["__key__"] == keys[2]:  # the first sample of the second batch
            raise ShardFormatError(f"{keys[2]}: corrupt JPEG (made to fail)")
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(decode, "read_photo", failing)  # the forked workers inherit it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pixels_by_key(list(make_loader(tmp_path / "set", "train", num_workers=0, **settings)))
        loader = make_loader(tmp_path / "set", "train", num_workers=1, **settings)
        for _ in range(12):
            got = [pixels_by_key([batch]) for batch in loader]
            assert {k: v for part in got for k, v in part.items()} == reference
    assert keys[2] not in reference and len(reference) == len(keys) - 1


def test_a_chunk_that_outgrows_the_ring_is_received_from_the_old_ring_and_the_new() -> None:
    """A chunk whose first batch still fits the ring and whose second does not: the first travels as a
    reference to the old ring, the chunk announces the new one, and both batches arrive."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=2), rings, pin=False)  # a ring of 2 x 64-byte batches
    ring.begin_item()
    small, large = ring.allocate(64), ring.allocate(200)
    small.fill_(2)
    large.fill_(3)
    parcels = [Parcel({BUFFER: small, "key": ["a"]}), Parcel({BUFFER: large, "key": ["b"]})]
    chunk = ring.seal(Chunk(0, parcels, per_item=2))
    assert chunk.parcels[0].ref is not None and chunk.parcels[1].ref is None
    assert chunk.ring is not None and chunk.ring.replaces == chunk.parcels[0].ref.ring
    assert values(receive(chunk, rings, pin=False)) == [2, 3] and list(rings) == [chunk.ring.id]


def fork_dropping(held: list[dict[str, Any]]) -> None:
    """Fork a child that drops its copy of `held` and leaves at once; wait for it."""
    import os

    pid = os.fork()
    if pid == 0:
        held.clear()
        gc.collect()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


def test_the_loaders_own_forks_leave_lent_slots_to_the_parent() -> None:
    """The ring's marks are shared memory: a child dropping its copies hands nothing back; the parent
    does, once it drops its own, when the fork was the loader's own (its workers never read them)."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)
    held = receive(item_of(ring, 64, value=2, batches=1), rings, pin=False)  # item 1 in slot 1
    with trusted_forks():
        fork_dropping(held)
    assert ring.marks is not None and ring.marks[1] == 0  # still lent to the parent
    del held
    assert ring.marks[1] == 2


def test_a_slot_lent_when_the_process_forks_is_never_handed_back() -> None:
    """After any other fork the child shares the slot's memory and may read it after the parent is done
    with it: the slot stays out of use, and the worker writes to fresh shared memory."""
    ring = WorkerRing(slots=2)
    rings: dict[Any, RingShare] = {}
    receive(item_of(ring, 64, value=1, batches=1), rings, pin=False)
    held = receive(item_of(ring, 64, value=2, batches=1), rings, pin=False)  # item 1 in slot 1
    fork_dropping(held)
    del held
    gc.collect()
    assert ring.marks is not None and ring.marks[1] == 0
    receive(item_of(ring, 64, value=3, batches=1), rings, pin=False)  # item 2: slot 0, dropped
    nxt = item_of(ring, 64, value=4, batches=1)
    assert nxt.parcels[0].ref is not None and nxt.parcels[0].ref.slot == 0  # slot 1 stays retired
