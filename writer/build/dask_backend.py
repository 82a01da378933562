"""The dask backend: run shard tasks on a dask.distributed cluster through joblib's dask backend.

Every worker must be able to import this package (the same segshards version), read the source the
recipe's spec names, and write the output: a folder on storage shared with the workers, or an
`s3://` prefix they can reach with their own AWS settings. A worker that dies mid-build is handled by
the scheduler, which runs its tasks again elsewhere; shard names and bytes depend only on the plan, so
the output is the same as a local build's.
"""

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import joblib

from segshards.writer.errors import ClusterError, ConfigError

SCHEDULER = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+")
CONNECT_TIMEOUT_S = 20


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
        from distributed import Client
    except ImportError:
        raise ConfigError("--backend dask needs dask.distributed: pip install 'segshards[dask]'") from None
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({' '.join(str(exc).split())})") from exc


def run_on_dask(fn: Callable[[Any], Any], tasks: Iterable[Any], scheduler: str) -> Iterator[Any]:
    """Yield `fn(task)` for each task, computed on the cluster at `scheduler`, in completion order."""
    client = connect(scheduler)
    from distributed.scheduler import KilledWorker

    with client, joblib.parallel_config(backend="dask", client=client):
        parallel = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")
        try:
            yield from parallel(joblib.delayed(fn)(t) for t in tasks)
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
