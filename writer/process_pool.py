"""Worker processes for any in-order work: N-1 processes of joblib's loky executor plus this one.

`map_in_order` serves a recipe's seeded walk (and any map whose output order must not depend on who
computed what); the build's shard pool (`segshards.writer.build.pool`) runs on the same executor, so a
build and its walk share one set of workers.

The workers come from joblib's loky executor directly (joblib's `Parallel` runs one job in-process, and a
build on two cores wants exactly one worker process). They get joblib's thread limits and this process's
AWS_* settings (an object-store build uploads from them; loky starts a new pool when these differ).
Each worker watches the process that started it and exits within `PARENT_POLL_S` once it is gone: a
SIGKILLed build gets no chance to stop its workers, and loky's idle timeout would otherwise keep them (and
the resource trackers, which wait for them, all holding the build's stdout and stderr) for minutes.
Workers never see SIGINT, from their first instruction: a terminal's Ctrl-C reaches the whole process group,
and a worker still importing printed a traceback of its own (or "Fatal Python error: init_import_site")
beside the build's one line. The build, which does get it, stops them.
"""

import concurrent.futures as cf
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from multiprocessing import resource_tracker
from typing import Any, NoReturn, TypeVar

from joblib import cpu_count
from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.backend import resource_tracker as loky_resource_tracker

T = TypeVar("T")
R = TypeVar("R")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
OPENCV_THREADS = "OPENCV_FOR_THREADS_NUM"  # OpenCV's own pool, read when cv2 is imported
IDLE_TIMEOUT_S = 300
PARENT_POLL_S = 0.5


_pools: list[Any] = []  # the pool this process started last, for `stop_workers`


def executor(workers: int) -> Any:
    """The reusable pool of `workers` worker processes (started, or reused if it has these settings)."""
    start_resource_trackers()
    with sigint_held():
        pool = get_reusable_executor(
            max_workers=workers,
            timeout=IDLE_TIMEOUT_S,
            env=worker_env(workers),
            initializer=watch_parent,
            initargs=(os.getpid(),),
        )
    _pools[:] = [pool]
    return pool


def start_resource_trackers() -> None:
    """Start loky's and multiprocessing's resource trackers (a no-op once running). Each unblocks SIGINT in
    the thread that starts it, once it has started, so they must be running before `sigint_held`: started
    inside it, the first worker would come after that unblocking and get SIGINT after all."""
    resource_tracker.ensure_running()
    loky_resource_tracker.ensure_running()


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread while the block runs: the processes it starts inherit the block through
    fork and exec, before Python's first import, and a Ctrl-C meant for this process is delivered when the
    block ends (ignoring it instead would lose it)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to share a Ctrl-C with
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def watch_parent(parent: int) -> None:
    """A worker's initializer: SIGINT ignored, then let through (it came blocked, see `sigint_held`: a
    pending one is dropped), and a daemon thread that ends this worker once `parent` (the build) is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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


def start_workers(workers: int, warm_up: Callable[[], None]) -> None:
    """Start `workers` processes now, each running `warm_up` (its imports), while this process works."""
    if workers < 1:
        return
    pool = executor(workers)
    with sigint_held():  # loky starts the processes at the first submit
        for _ in range(workers):
            pool.submit(warm_up)


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
