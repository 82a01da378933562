"""Local parallel work: N-1 worker processes (joblib's loky executor) plus this one, for shards fed by one
planner (`run_with_parent`) and for in-order maps such as a recipe's seeded walk (`map_in_order`).

This process renders shards too instead of only waiting for results: it starts rendering as soon as the
first shard is planned, while the workers are still spawning, and a build on N cores pays for N-1 worker
start-ups. Every shard task comes from one thread-safe feed over the lazy planner, so which process
renders which shard does not matter: the output is the same bytes whatever the number of workers.

The workers come from joblib's loky executor directly (joblib's `Parallel` runs one job in-process, and a
build on two cores wants exactly one worker process). They get joblib's thread limits and this process's
AWS_* settings (an object-store build uploads from them; loky starts a new pool when these differ).
Each worker watches the process that started it and exits within `PARENT_POLL_S` once it is gone: a
SIGKILLed build gets no chance to stop its workers, and loky's idle timeout would otherwise keep them (and
the resource trackers, which wait for them, all holding the build's stdout and stderr) for minutes.
"""

import concurrent.futures as cf
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from joblib import cpu_count
from joblib.externals.loky import get_reusable_executor

if TYPE_CHECKING:  # segshards.writer.shards imports OpenCV: `segshards.writer.launch` imports this module before anything heavy
    from segshards.writer.shards import ShardResult, ShardTask

Runner = Callable[["ShardTask"], "ShardResult"]
T = TypeVar("T")
R = TypeVar("R")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
OPENCV_THREADS = "OPENCV_FOR_THREADS_NUM"  # OpenCV's own pool, read when cv2 is imported
IDLE_TIMEOUT_S = 300
PARENT_POLL_S = 0.5


_pools: list[Any] = []  # the pool this process started last, for `stop_workers`


def executor(workers: int) -> Any:
    """The reusable pool of `workers` worker processes (started, or reused if it has these settings)."""
    pool = get_reusable_executor(
        max_workers=workers,
        timeout=IDLE_TIMEOUT_S,
        env=worker_env(workers),
        initializer=watch_parent,
        initargs=(os.getpid(),),
    )
    _pools[:] = [pool]
    return pool


def watch_parent(parent: int) -> None:
    """A worker's initializer: a daemon thread ends this worker once `parent` (the build) is gone."""
    threading.Thread(target=exit_when_orphaned, args=(parent,), name="segshards-parent", daemon=True).start()


def exit_when_orphaned(parent: int, poll_s: float = PARENT_POLL_S) -> NoReturn:
    """Exit this process as soon as it is no longer `parent`'s child (the parent died and the process was
    adopted): `os._exit`, with no cleanup, since a task may be running in the other thread."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def stop_workers() -> None:
    """Stop the worker processes now (idle once a build is done) rather than at interpreter exit."""
    while _pools:
        _pools.pop().shutdown(wait=True)


def worker_env(workers: int) -> dict[str, str]:
    """Environment of the workers: thread pools sized to their share of the cores, and AWS_* settings."""
    share = str(max(cpu_count() // (workers + 1), 1))
    env = {var: os.environ.get(var, share) for var in THREAD_VARS}
    env[OPENCV_THREADS] = os.environ.get(OPENCV_THREADS, "1")  # one thread each, as in the build process
    env.update((k, v) for k, v in sorted(os.environ.items()) if k.startswith("AWS_"))
    return env


def import_worker_modules() -> None:
    """A worker's first task: the imports every shard task needs."""
    import segshards.writer.shards  # noqa: F401


def start_workers(workers: int) -> None:
    """Start `workers` processes now, so they spawn and import while this process works."""
    if workers < 1:
        return
    pool = executor(workers)
    for _ in range(workers):
        pool.submit(import_worker_modules)


def start_build_workers(jobs: int) -> None:
    """Start the workers a local build with `--jobs jobs` (0: all cores) renders beside this process."""
    workers = (jobs or cpu_count()) - 1
    if workers > 0:
        start_workers(workers)


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


def run_here(fn: Callable[[T], R], item: T) -> cf.Future[R]:
    """fn(item) computed now, as a finished future holding its result or its error."""
    future: cf.Future[R] = cf.Future()
    try:
        future.set_result(fn(item))
    except Exception as exc:
        future.set_exception(exc)
    return future


def map_in_order(fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int) -> Generator[R]:
    """fn over `items`, results in order, computed on `workers` worker processes and in this process
    (with no workers: all of it here, one item at a time).

    Up to `ahead` calls wait on the workers; while the oldest of them is still running, this process
    computes the next item itself instead of waiting, so every core stays busy and the output keeps the
    order of the input whoever computed what. Calls still queued are cancelled when the consumer stops.
    `fn` and the items must pickle (module-level functions, plain data).
    """
    if workers < 1:
        yield from map(fn, items)
        return
    pool = executor(workers)
    source = enumerate(items)
    queued: dict[int, cf.Future[R]] = {}
    done_here: dict[int, cf.Future[R]] = {}  # an error here waits its turn too
    following = 0  # the index of the next result to yield
    try:
        for index, item in source:
            queued[index] = pool.submit(fn, item)
            while len(queued) >= ahead:  # enough waits on the workers: hand out results, or work here
                if following in done_here:
                    yield done_here.pop(following).result()
                elif queued.get(following) is not None and queued[following].done():
                    yield queued.pop(following).result()
                else:
                    extra = next(source, None)
                    if extra is None:
                        break
                    done_here[extra[0]] = run_here(fn, extra[1])
                    continue
                following += 1
        for index in sorted([*queued, *done_here]):
            yield (done_here if index in done_here else queued).pop(index).result()
    finally:
        for future in queued.values():
            future.cancel()
