"""The loader's position in an epoch: what each logical worker delivered, and which worker is due next.

It is all a loader needs to replay the rest of an epoch: the shuffle buffers are replayed, not stored (see
`segshards.loaders.loader`). `state_dict()` is what a checkpoint keeps; `to_row()` is how persistent worker
processes learn the position of a new iteration (one shared int64 row, `segshards.loaders.worker_pool`).
"""

from dataclasses import dataclass, replace
from typing import Any

from segshards.loaders.errors import ResumeError


@dataclass
class WorkerPosition:
    """One logical worker's progress through its share of the epoch."""

    delivered: int = 0  # batches handed to the loader, empty ones (skip mode) included
    ended: bool = False  # its end-of-stream message was delivered
    per_item: int | None = None  # batches per transport item, fixed by its first decoded batch


@dataclass
class EpochPosition:
    """Where a loader stands in `epoch` (DataLoader's round-robin over `workers`, resumed at `next_worker`)."""

    epoch: int
    workers: list[WorkerPosition]
    batches: int = 0  # non-empty batches yielded this epoch
    next_worker: int = 0  # the logical worker due next in the round-robin

    @classmethod
    def start(cls, epoch: int, workers: int) -> "EpochPosition":
        """The beginning of `epoch` for `workers` logical workers."""
        return cls(epoch, [WorkerPosition() for _ in range(workers)])

    @property
    def started(self) -> bool:
        """True once anything of this epoch was delivered."""
        return self.batches > 0 or any(w.delivered for w in self.workers)

    def copy(self) -> "EpochPosition":
        return replace(self, workers=[replace(w) for w in self.workers])

    def deliver(self, worker: int, *, mid_item: bool) -> None:
        """Count one batch of `worker`; mid-item the same worker stays due (a resumed run starts with the
        rest of its item), otherwise the next one in the round-robin is."""
        self.workers[worker].delivered += 1
        self.next_worker = worker if mid_item else self.next_after(worker)

    def undeliver(self, worker: int, next_worker: int) -> None:
        """Take back the last yielded batch, `worker`'s, delivered when `next_worker` was due: the position
        a consumer holding that batch unread has reached (see `ShardLoader.hold_last`)."""
        self.workers[worker].delivered -= 1
        self.batches -= 1
        self.next_worker = next_worker

    def end(self, worker: int) -> None:
        """`worker` delivered its end-of-stream message: the round-robin passes over it from now on."""
        self.workers[worker].ended = True
        self.next_worker = self.next_after(worker)

    def next_after(self, worker: int) -> int:
        """The worker after `worker` in the round-robin, passing over finished ones."""
        count = len(self.workers)
        for step in range(1, count + 1):
            candidate = (worker + step) % count
            if not self.workers[candidate].ended:
                return candidate
        return worker

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the keys of loader state version 2, so older checkpoints still load)."""
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "delivered": [w.delivered for w in self.workers],
            "ended": [w.ended for w in self.workers],
            "per_item": [w.per_item for w in self.workers],
            "next_worker": self.next_worker,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], workers: int) -> "EpochPosition":
        """The position saved by `state_dict()`, for `workers` logical workers; ResumeError if it is not one."""
        try:
            columns = [state["delivered"], state["ended"], state["per_item"]]
            if any(len(column) != workers for column in columns):
                raise ValueError(f"per-worker lists of {[len(c) for c in columns]} entries, not {workers}")
            position = cls(
                epoch=int(state["epoch"]),
                workers=[
                    WorkerPosition(int(d), bool(e), None if k is None else int(k))
                    for d, e, k in zip(*columns, strict=True)
                ],
                batches=int(state["batches"]),
                next_worker=int(state["next_worker"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResumeError(f"loader state: malformed position ({type(exc).__name__}: {exc})") from None
        if position.epoch < 0 or position.batches < 0 or not 0 <= position.next_worker < workers:
            raise ResumeError(
                f"loader state: epoch {position.epoch}, batches {position.batches}, next_worker "
                f"{position.next_worker}: out of range for {workers} workers"
            )
        return position

    @staticmethod
    def row_size(workers: int) -> int:
        return 3 + 3 * workers

    def to_row(self) -> list[int]:
        """The position as integers: epoch, batches, next worker, then (delivered, ended, per_item or -1)
        per worker."""
        row = [self.epoch, self.batches, self.next_worker]
        for w in self.workers:
            row += [w.delivered, int(w.ended), -1 if w.per_item is None else w.per_item]
        return row

    @classmethod
    def from_row(cls, row: list[int]) -> "EpochPosition":
        """The inverse of `to_row`."""
        epoch, batches, next_worker, rest = row[0], row[1], row[2], row[3:]
        workers = [
            WorkerPosition(rest[i], bool(rest[i + 1]), None if rest[i + 2] < 0 else rest[i + 2])
            for i in range(0, len(rest), 3)
        ]
        return cls(epoch, workers, batches, next_worker)


__all__ = ["EpochPosition", "WorkerPosition"]
