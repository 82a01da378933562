"""The dask backend: run shard tasks on a dask.distributed cluster, a bounded number in flight.

Every worker must be able to import this package (the same segshards version), read the source the
recipe's spec names, and write the output: a folder on storage shared with the workers, or an
`s3://` prefix they can reach with their own AWS settings. A worker that dies mid-build is handled by
the scheduler, which runs its tasks again elsewhere; shard names and bytes depend only on the plan, so
the output is the same as a local build's.
"""

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from segshards.writer.errors import ClusterError, ConfigError

SCHEDULER = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+")
CONNECT_TIMEOUT_S = 20
IN_FLIGHT_PER_THREAD = 2  # shard tasks submitted per worker thread: one running, one queued


def check_scheduler(address: str | None) -> str:
    """The scheduler address, or a ConfigError naming the option and the expected form."""
    if not address:
        raise ConfigError("--backend dask needs --scheduler tcp://HOST:PORT (the dask scheduler's address)")
    if not SCHEDULER.fullmatch(address):
        raise ConfigError(f"--scheduler {address}: expected tcp://HOST:PORT")
    return address


def connect(scheduler: str) -> Any:
    """A `distributed.Client` of the cluster at `scheduler` (not made the process's default client)."""
    try:
        import dask
        from distributed import Client
    except ImportError:
        raise ConfigError("--backend dask needs dask.distributed: pip install 'segshards[dask]'") from None
    try:
        # distributed logs the last 1,000 messages sent under 1 MB, with their objects: every shard task
        # (its rows and keys) would stay alive in this process, ~1.8 MB per shard of 10,000 grid samples.
        with dask.config.set({"distributed.admin.low-level-log-length": 0}):
            return Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({' '.join(str(exc).split())})") from exc


def run_on_dask(fn: Callable[[Any], Any], tasks: Iterable[Any], scheduler: str) -> Iterator[Any]:
    """Yield `fn(task)` for each task, computed on the cluster at `scheduler`, in completion order.

    At most two tasks per worker thread are submitted at a time, the next taken from `tasks` as each
    finishes, so a lazy plan stays lazy; a finished task's future is dropped at once, so the scheduler
    forgets it and this process keeps nothing of it.
    """
    client = connect(scheduler)
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    with client:
        try:
            yield from bounded(client, fn, iter(tasks), as_completed([], loop=client.loop))
        except KilledWorker as exc:
            raise ClusterError(
                f"--scheduler {scheduler}: a shard task killed every worker that ran it ({exc})"
            ) from exc
        except TimeoutError as exc:
            raise ClusterError(f"--scheduler {scheduler}: {' '.join(str(exc).split())}") from exc
        except OSError as exc:
            raise ClusterError(
                f"--scheduler {scheduler}: a worker could not read or write a file ({exc}); "
                "every worker must reach the source and the output"
            ) from exc


def bounded(client: Any, fn: Callable[[Any], Any], tasks: Iterator[Any], running: Any) -> Iterator[Any]:
    """`fn(task)` of every task, with at most two per worker thread in flight (`running`: as_completed)."""
    in_flight = 0
    while True:
        slots = IN_FLIGHT_PER_THREAD * max(1, sum(client.nthreads().values()))
        for task in itertools.islice(tasks, max(0, slots - in_flight)):
            running.add(client.submit(fn, task, pure=False))
            in_flight += 1
        if in_flight == 0:
            return
        future = next(running)
        result = future.result()
        del future  # released: the scheduler and this client forget the task
        in_flight -= 1
        yield result
