"""Everything the loader relies on in torch's DataLoader, in one place: persistent worker processes, which
worker a process is, stopping workers early, a position board shared with them, and worker error messages.

Some of it is private to torch (`_shutdown_workers`, `_iterator`, `_workers`, the wording of re-raised
worker errors); tests/test_worker_pool.py checks each piece on its own, so a torch upgrade that changes
one shows up there first.
"""

import atexit
import signal
import weakref
from collections.abc import Iterator
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segshards.loaders.messages import RingShare
from segshards.loaders.transport import trusted_forks
from segshards.writer.errors import SegshardsError


def worker_slot() -> int | None:
    """This process's DataLoader worker slot (0 .. num_workers - 1), None in the main process."""
    info = get_worker_info()
    return None if info is None else int(info.id)


def original_error(exc: SegshardsError) -> SegshardsError:
    """The original one-line message of an error DataLoader re-raised from a worker process (it prefixes
    "Caught X in DataLoader worker process N" and the worker's traceback)."""
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and ": " in lines[-1]:
        return type(exc)(lines[-1].split(": ", 1)[1])
    return exc


class PositionBoard:
    """A row of int64 in shared memory: how the main process tells persistent workers, which keep the
    dataset object they were forked with, where a new iteration starts."""

    def __init__(self, size: int) -> None:
        self.values = torch.zeros(size, dtype=torch.int64).share_memory_()

    def write(self, row: list[int]) -> None:
        if len(row) != self.values.numel():
            raise ValueError(f"position row of {len(row)} values on a board of {self.values.numel()}")
        self.values.copy_(torch.tensor(row, dtype=torch.int64))

    def read(self) -> list[int]:
        return [int(v) for v in self.values.tolist()]


def _identity(item: Any) -> Any:
    return item


def _ignore_sigint(worker: int) -> None:
    """A worker's init: Ctrl-C is the main process's to handle, which stops the workers. A terminal sends it
    to the whole process group; a worker that took it as a KeyboardInterrupt ended before the main process
    asked, and could not leave while its batches filled the pipe to a main process no longer reading:
    each such worker held the exit for DataLoader's 5 s timeout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _stop_live_pools() -> None:
    """Stop every pool's workers while the interpreter is whole: a loader iteration still open at exit
    (one batch taken, then the script ended) would otherwise be finalised during shutdown, when torch's
    modules are half torn down, and print a traceback."""
    for pool in list(_LIVE_POOLS):
        pool.stop(None)


class WorkerPool:
    """A DataLoader handing out `dataset`'s items as they are (no batching, no collation, no pinning),
    its `workers` processes persisting from one iteration to the next (forking them again cost 0.25-0.4 s
    an epoch on a GPU host); with 0 workers the dataset runs in the main process."""

    def __init__(self, dataset: IterableDataset, *, workers: int, prefetch_factor: int) -> None:
        self.dataset, self.workers, self.prefetch_factor = dataset, workers, prefetch_factor
        self._dataloader: DataLoader | None = None  # made when an iteration starts; None once stopped
        # The workers' shared-memory rings, by id, as the main process received them: they go with the
        # workers when these are stopped (batches lent out keep their own).
        self.rings: dict[str, RingShare] = {}
        if workers:
            _LIVE_POOLS.add(self)

    @property
    def dataloader(self) -> DataLoader:
        """The DataLoader of the next iteration (with the persistent workers, once it has started them)."""
        if self._dataloader is None:
            self._dataloader = self._new_dataloader()
        return self._dataloader

    def _new_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=None,
            collate_fn=_identity,
            num_workers=self.workers,
            pin_memory=False,  # the loader pins while copying out of its workers' rings (see transport)
            prefetch_factor=self.prefetch_factor if self.workers else None,
            persistent_workers=self.workers > 0,
            worker_init_fn=_ignore_sigint if self.workers else None,
        )

    def start(self) -> Iterator[Any]:
        """An iteration over the dataset: the persistent workers resumed, or forked while OpenCV runs
        single-threaded.

        A child forked while OpenCV's thread pool is live inherits a pool without threads: the worker's
        first cv2 call that touches the pool (setNumThreads, resize ...) then hangs. Forked with one
        thread, each worker decodes single-threaded (the workers are the parallelism); the parent gets
        its setting back at once. Raises if a persistent worker died since the last iteration.
        """
        if self.workers == 0:
            return iter(self.dataloader)
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with trusted_forks():  # the workers never read batches lent to this process
                return iter(self.dataloader)
        finally:
            cv2.setNumThreads(previous)

    def stop(self, iterator: Iterator[Any] | None) -> None:
        """Stop the workers of an iteration left before its end, now, and fork fresh ones next time.

        Now, not whenever the garbage collector gets to the iterator (an exception's traceback keeps it
        alive): that may happen in another thread, which it blocks meanwhile. Fresh ones, because these
        may be blocked mid-item, or one of them may be dead (`iterator` None: `start` failed). The next
        DataLoader is made when the next iteration starts, never here: this also runs at interpreter exit.
        """
        if self.workers == 0:
            return
        target = iterator if iterator is not None else getattr(self._dataloader, "_iterator", None)
        shutdown = getattr(target, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._dataloader = None
        self.rings.clear()

    def pids(self) -> list[int]:
        """Process ids of the live persistent workers (empty before the first iteration)."""
        iterator = getattr(self._dataloader, "_iterator", None)
        return [int(w.pid) for w in getattr(iterator, "_workers", [])]
