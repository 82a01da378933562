"""The loader's epoch position: round-robin bookkeeping, state dicts (old checkpoints included), rows."""

import json

import pytest

from segshards.loaders.errors import ResumeError
from segshards.loaders.position import EpochPosition, WorkerPosition


def test_round_robin_stays_on_a_worker_mid_item_and_passes_over_ended_ones() -> None:
    p = EpochPosition.start(3, 3)
    p.deliver(0, mid_item=True)
    assert p.next_worker == 0 and p.started
    p.deliver(0, mid_item=False)
    assert p.next_worker == 1
    p.end(2)
    p.deliver(1, mid_item=False)
    assert p.next_worker == 0  # worker 2 ended: skipped
    p.end(0)
    p.end(1)
    assert p.next_worker == 1  # everyone ended: stays put
    assert [w.delivered for w in p.workers] == [2, 1, 0] and not EpochPosition.start(0, 2).started


def test_state_dict_round_trips_through_json_and_reads_the_old_loader_layout() -> None:
    p = EpochPosition(
        4, [WorkerPosition(3, False, 2), WorkerPosition(5, True, None)], batches=7, next_worker=0
    )
    saved = json.loads(json.dumps(p.state_dict()))
    assert EpochPosition.from_state_dict(saved, 2) == p
    old = {  # as written by the loader before EpochPosition existed (state version 2)
        "version": 2,
        "epoch": 1,
        "batches": 3,
        "delivered": [2, 1],
        "ended": [False, False],
        "per_item": [1, None],
        "next_worker": 1,
        "settings": {},
    }
    restored = EpochPosition.from_state_dict(old, 2)
    assert restored.to_row() == [1, 3, 1, 2, 0, 1, 1, 0, -1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"delivered": [1]}, "per-worker lists of \\[1, 2, 2\\] entries, not 2"),
        ({"next_worker": 2}, "next_worker 2: out of range for 2 workers"),
        ({"epoch": "x"}, "malformed position"),
    ],
)
def test_a_malformed_state_is_refused(change: dict, message: str) -> None:
    state = {**EpochPosition.start(0, 2).state_dict(), **change}
    with pytest.raises(ResumeError, match=message):
        EpochPosition.from_state_dict(state, 2)
    with pytest.raises(ResumeError, match="malformed position \\(KeyError"):
        EpochPosition.from_state_dict({"epoch": 0}, 2)


def test_row_round_trip_and_copy_is_independent() -> None:
    p = EpochPosition(
        2, [WorkerPosition(1, True, 4), WorkerPosition(0, False, None)], batches=1, next_worker=1
    )
    assert EpochPosition.from_row(p.to_row()) == p and len(p.to_row()) == EpochPosition.row_size(2)
    q = p.copy()
    q.deliver(1, mid_item=False)
    assert p.workers[1].delivered == 0 and q.workers[1].delivered == 1


def test_undeliver_takes_back_the_last_batch_exactly() -> None:
    position = EpochPosition.start(0, 3)
    position.deliver(0, mid_item=False)
    position.batches += 1
    before = position.state_dict()
    last = (1, position.next_worker)
    position.deliver(1, mid_item=True)
    position.batches += 1
    assert position.state_dict() != before
    position.undeliver(*last)
    assert position.state_dict() == before
