"""The DataLoader plumbing the loader relies on, each piece checked against the installed torch."""

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.data import IterableDataset

from segshards.loaders.worker_pool import PositionBoard, WorkerPool, original_error, worker_slot
from segshards.writer.errors import ShardFormatError


class Echo(IterableDataset):
    """Each worker yields (its slot, the board's row as it reads it when an iteration starts)."""

    def __init__(self, board: PositionBoard) -> None:
        super().__init__()
        self.board = board

    def __iter__(self) -> Iterator[tuple[int | None, list[int]]]:
        yield worker_slot(), self.board.read()


class Failing(IterableDataset):
    def __iter__(self) -> Iterator[int]:
        raise ShardFormatError("shard-000001.tar:key7: bad mask")


def test_persistent_workers_see_each_new_board_row_and_stop_gives_fresh_ones() -> None:
    board = PositionBoard(3)
    pool = WorkerPool(Echo(board), workers=2, prefetch_factor=2)
    assert pool.pids() == [] and worker_slot() is None
    board.write([1, 2, 3])
    assert sorted(pool.start()) == [(0, [1, 2, 3]), (1, [1, 2, 3])]
    pids = pool.pids()
    assert len(pids) == 2
    board.write([4, 5, 6])  # after the fork: only shared memory reaches the persistent workers
    assert sorted(pool.start()) == [(0, [4, 5, 6]), (1, [4, 5, 6])] and pool.pids() == pids
    iterator = pool.start()
    next(iterator)
    pool.stop(iterator)  # left early: stopped now, fresh workers next time
    assert sorted(pool.start()) == [(0, [4, 5, 6]), (1, [4, 5, 6])]
    assert set(pool.pids()).isdisjoint(pids)
    pool.stop(None)


def test_without_workers_the_dataset_runs_in_the_main_process() -> None:
    board = PositionBoard(1)
    pool = WorkerPool(Echo(board), workers=0, prefetch_factor=2)
    assert list(pool.start()) == [(None, [0])] and pool.pids() == []
    pool.stop(None)  # nothing to stop


def test_board_refuses_a_row_of_another_size() -> None:
    with pytest.raises(ValueError, match="row of 2 values on a board of 3"):
        PositionBoard(3).write([1, 2])


def test_a_worker_error_comes_back_with_its_own_message() -> None:
    pool = WorkerPool(Failing(), workers=1, prefetch_factor=2)
    with pytest.raises(ShardFormatError) as caught:
        list(pool.start())
    assert "DataLoader worker process" in str(caught.value)  # torch's wrapping, which original_error undoes
    clean = original_error(caught.value)
    assert type(clean) is ShardFormatError and str(clean) == "shard-000001.tar:key7: bad mask"
    pool.stop(None)
    plain = ShardFormatError("x: y")
    assert original_error(plain) is plain


class Pids(IterableDataset):
    def __iter__(self) -> Iterator[int]:
        yield os.getpid()


def test_workers_leave_ctrl_c_to_the_main_process() -> None:
    """A terminal's Ctrl-C reaches the workers too; one that ended on it before the main process asked
    could not leave while its batches filled the pipe, and held the exit for DataLoader's 5 s timeout."""
    pool = WorkerPool(Pids(), workers=2, prefetch_factor=2)
    try:
        pids = set(pool.start())
        assert len(pids) == 2 and os.getpid() not in pids
        for pid in pids:
            ignored = re.search(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())
            assert ignored is not None and int(ignored.group(1), 16) & (1 << (signal.SIGINT - 1))
    finally:
        pool.stop(None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the main process keeps its own
