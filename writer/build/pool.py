"""The build's shard pool: shards fed by one planner to the worker processes and to this one.

This process renders shards too instead of only waiting for results: it starts rendering as soon as the
first shard is planned, while the workers are still spawning, and a build on N cores pays for N-1 worker
start-ups. Every shard task comes from one thread-safe feed over the lazy planner, so which process
renders which shard does not matter: the output is the same bytes whatever the number of workers. The
workers themselves are `segshards.writer.process_pool`'s.
"""

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from joblib import cpu_count

from segshards.writer.process_pool import executor, start_workers

if TYPE_CHECKING:  # shards imports OpenCV: the entry point imports this module before anything heavy
    from segshards.writer.build.shards import ShardResult, ShardTask

Runner = Callable[["ShardTask"], "ShardResult"]


def import_worker_modules() -> None:
    """A worker's first task: the imports every shard task needs (here, not at the top of this module,
    which the entry point imports before anything heavy)."""
    import segshards.writer.build.shards  # noqa: F401


def start_build_workers(jobs: int) -> None:
    """Start the workers a local build with `--jobs jobs` (0: all cores) renders beside this process."""
    workers = (jobs or cpu_count()) - 1
    if workers > 0:
        start_workers(workers, import_worker_modules)


class TaskFeed:
    """Planned tasks for several consumer threads, planned `ahead` of them in a thread of their own.

    A renderer that finishes a shard takes the next one at once instead of waiting for it to be
    planned, and no task is reserved for one renderer while another idles. Once `stop` is called, the
    feed ends at the next pull; a planning error is raised to the consumer that pulls it.
    """

    def __init__(self, tasks: Iterable["ShardTask"], ahead: int = 2) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=ahead)
        self._stopped = threading.Event()
        self._planner = threading.Thread(target=self._plan, args=(tasks,), name="segshards-plan", daemon=True)
        self._planner.start()

    def _plan(self, tasks: Iterable["ShardTask"]) -> None:
        try:
            for task in tasks:
                if not self._offer(("task", task)):
                    return
            self._offer(("end", None))
        except BaseException as exc:
            self._offer(("error", exc))

    def _offer(self, item: tuple[str, Any]) -> bool:
        """Queue `item` unless the feed is stopped first; False if it was."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stopped.set()
        self._planner.join()

    def __iter__(self) -> "TaskFeed":
        return self

    def __next__(self) -> "ShardTask":
        while not self._stopped.is_set():
            try:
                kind, value = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "task":
                if self._stopped.is_set():
                    break  # stopped while this one was being taken: no new shard starts
                return value  # type: ignore[no-any-return]
            self._queue.put((kind, value))  # the end (or the error) for the other consumers too
            if kind == "error":
                raise value
            break
        raise StopIteration


class Inbox:
    """What the thread driving the workers hands this one: results, an error, then the end."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.done = False

    def put(self, kind: str, value: Any = None) -> None:
        self._queue.put((kind, value))

    def collect(self, *, block: bool) -> Iterator["ShardResult"]:
        """The results waiting (with `block`: all of them, until the end); raises the workers' error."""
        while not self.done:
            try:
                kind, value = self._queue.get(block=block)
            except queue.Empty:
                return
            if kind == "error":
                raise value
            if kind == "done":
                self.done = True
            else:
                yield value


def drive_workers(runner: Runner, feed: TaskFeed, inbox: Inbox, workers: int) -> None:
    """Keep one task in flight per worker until the feed ends; results, or the first error, to `inbox`."""
    pending: set[cf.Future[ShardResult]] = set()
    try:
        pool = executor(workers)  # inside: a pool that cannot start must still end the feed and the inbox
        for task in feed:
            pending.add(pool.submit(runner, task))
            if len(pending) < workers:
                continue
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                inbox.put("result", future.result())
        for future in cf.as_completed(pending):
            inbox.put("result", future.result())
    except BaseException as exc:
        feed.stop()
        cf.wait(pending)  # shards in flight are finished (or failed) before the error is reported
        inbox.put("error", exc)
    finally:
        inbox.put("done")


def run_with_parent(tasks: Iterable["ShardTask"], runner: Runner, *, workers: int) -> Iterator["ShardResult"]:
    """Run `tasks` on `workers` worker processes and in this process; yield results as they complete.

    An error in either place stops the feed; the workers' shards in flight are finished before it is
    raised here.
    """
    feed = TaskFeed(tasks)
    inbox = Inbox()
    thread = threading.Thread(
        target=drive_workers, args=(runner, feed, inbox, workers), name="segshards-workers", daemon=True
    )
    thread.start()
    try:
        for task in feed:
            yield runner(task)
            yield from inbox.collect(block=False)
        yield from inbox.collect(block=True)
    finally:
        feed.stop()
        thread.join()
