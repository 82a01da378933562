"""The partitioned dedup index of `--backend dask` (`segshards.writer.build.partition_plan`): memory and rate.

- coordinator: peak RSS of `segshards build mnist-grid --backend dask` (a process of its own) at two sizes
  against a loopback scheduler with two worker processes; the growth per sample is the difference of the
  two peaks over the difference of the sizes (`--compare-central`: the same with the central plan);
- simulation: planning N candidates (digests drawn as the recipes draw them: xxh3-128 of each candidate,
  on a worker) with P partitions on 1 and on 2 local dask worker processes; the coordinator's peak RSS
  growth per sample, each partition's bytes per sample (its arrays, and its worker's peak RSS growth),
  and candidates per second. `--long` plans 10^8.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import xxhash

from bench.commands import grid_build
from segshards.writer.build.partition_plan import plan_tasks_partitioned
from segshards.writer.recipes.contract import Candidates, RecipeBase

ROOT = Path(__file__).resolve().parent.parent
DASK = str(Path(sys.executable).with_name("dask"))
BATCH = 4096  # mnist-grid's candidate batch
POOL = 55_000  # mnist-grid's train digits: candidates are 4 of them
PEAK = "import resource, sys\nfrom segshards.writer.cli.main import main\n"
CENTRAL = (
    "import segshards.writer.build.job as job\nfrom segshards.writer.build.plan import plan_tasks\n"
    "job.plan_tasks_partitioned = lambda *a, scheduler, **kw: plan_tasks(*a, **kw)\n"
)
RUN = (
    "rc = main(sys.argv[1:])\n"
    "print('peak_rss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


class SimRecipe(RecipeBase):
    """Candidates as mnist-grid draws them (4 digit indices a row, 4,096 a batch, from the split's
    generator) with the xxh3-128 of each row standing in for that of its composed image."""

    name = "partition-sim"

    def candidates(self, spec: int, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        while True:
            items = rng.integers(0, spec, size=(BATCH, 4))
            raw = items.tobytes()
            yield Candidates(items, [xxhash.xxh3_128_digest(raw[i : i + 32]) for i in range(0, len(raw), 32)])

    def default_counts(self) -> dict[str, int | None]:
        return {"train": 1, "val": 0, "test": 0}

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """None: the bench builds the spec (the pool size)."""

    def make_spec(self, options: argparse.Namespace) -> int:
        return POOL

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        return {}

    def describe(self, spec: int) -> Any:
        raise NotImplementedError("planning only")

    def schema(self, spec: int) -> Any:
        raise NotImplementedError("planning only")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def loopback_cluster(workers: int) -> Iterator[str]:
    """`dask scheduler` and `workers` single-thread `dask worker` processes on loopback; their address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # workers import bench.partition_bench (SimRecipe)
    quiet = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "env": env,
        "start_new_session": True,
    }
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet)]  # type: ignore[call-overload]  # fmt: skip
    try:
        from distributed import Client

        time.sleep(1)
        for _ in range(workers):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"], **quiet))  # type: ignore[call-overload]  # fmt: skip
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for p in procs:
            os.killpg(p.pid, 15)
        for p in procs:
            p.wait()


def build_peak(out: Path, train: int, address: str, *, central: bool) -> int:
    """Peak RSS bytes of a dask mnist-grid build of `train` samples, run in a process of its own."""
    shutil.rmtree(out, ignore_errors=True)
    argv = grid_build(out, train, "--backend", "dask", "--scheduler", address, "--shard-size", "10000")[3:]
    code = PEAK + (CENTRAL if central else "") + RUN
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"build failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return int(done.stderr.split("peak_rss ")[-1].split()[0])


def coordinator(sizes: list[int], central: bool) -> None:
    """Coordinator peak RSS at each size and its growth per sample between the smallest and largest."""
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as tmp, loopback_cluster(2) as address:
        modes = [False, True] if central else [False]
        for mode in modes:
            peaks = [build_peak(Path(tmp) / "out", n, address, central=mode) for n in sizes]
            label = "central plan (before)" if mode else "partitioned index"
            for n, peak in zip(sizes, peaks, strict=True):
                print(f"  {label}: mnist-grid {n:>10,} samples, coordinator peak RSS {peak / 2**20:8.1f} MiB")
            growth = (peaks[-1] - peaks[0]) / (sizes[-1] - sizes[0])
            print(f"  {label}: coordinator growth {growth:.2f} B/sample (target <= 16)", flush=True)


def worker_state(address: str) -> dict[int, tuple[int, float]]:
    """(RSS bytes, CPU seconds) of each worker process of the cluster at `address`, by pid."""
    from distributed import Client

    def state() -> tuple[int, tuple[int, float]]:
        me = psutil.Process()
        times = me.cpu_times()
        return os.getpid(), (me.memory_info().rss, times.user + times.system)

    with Client(address, set_as_default=False) as client:
        return dict(client.run(state).values())


def simulate_one(n: int, address: str, partitions: int) -> dict[str, Any]:
    """Plan `n` simulated candidates on the cluster at `address`, in this process: the figures as a dict."""
    before = worker_state(address)
    base = psutil.Process().memory_info().rss
    stats: list[Any] = []
    counts: dict[str, int | None] = {"train": n, "val": 0, "test": 0}
    plans: list[Any] = []
    started, cpu = time.perf_counter(), time.process_time()
    tasks = plan_tasks_partitioned(
        SimRecipe(), POOL, counts, seed=0, shard_size=10_000, task_spec=POOL, out_dir="", plans=plans,
        scheduler=address, partitions=partitions, report=stats.extend,
    )  # fmt: skip
    shards = sum(1 for _ in tasks)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = worker_state(address)
    held: dict[int, int] = {}
    for digests, _, pid, _ in stats:
        held[pid] = held.get(pid, 0) + digests
    return {
        "samples": sum(p.count for p in plans),
        "shards": shards,
        "candidates": sum(p.count + p.rejected for p in plans),
        "wall_s": elapsed,
        "coordinator_cpu_s": cpu,
        "workers_cpu_s": sum(after[pid][1] - before[pid][1] for pid in before),
        "coordinator_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
        "partition_bytes": sum(s[1] for s in stats),
        "worker_peaks": {pid: peak - before[pid][0] for _, _, pid, peak in stats},
        "held": held,
    }


def simulated(n: int, workers: int, partitions: int) -> dict[str, Any]:
    """`simulate_one` in a fresh coordinator process against a fresh cluster of `workers` workers."""
    with loopback_cluster(workers) as address:
        code = "import json, sys\nfrom bench.partition_bench import simulate_one\n"
        code += f"print(json.dumps(simulate_one({n}, {address!r}, {partitions})))\n"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"simulation failed: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def simulation(n: int, partitions: int) -> None:
    """The simulation of n and of n/10 candidates (growth = the difference) with 1 and with 2 workers."""
    for workers in (1, 2):
        small, big = simulated(n // 10, workers, partitions), simulated(n, workers, partitions)
        grown = big["samples"] - small["samples"]
        coordinator = (big["coordinator_peak"] - small["coordinator_peak"]) / grown
        worker = (sum(big["worker_peaks"].values()) - sum(small["worker_peaks"].values())) / grown
        million = big["candidates"] / 1e6
        print(
            f"  {n:>11,} candidates, P={partitions}, {workers} worker(s): {big['candidates'] / big['wall_s']:>9,.0f} "
            f"candidates/s wall ({big['wall_s']:.0f} s); CPU per million: coordinator "
            f"{big['coordinator_cpu_s'] / million:.2f} s, workers {big['workers_cpu_s'] / million:.2f} s; "
            f"coordinator peak RSS growth {coordinator:.2f} B/sample (from {n // 10:,}); partitions "
            f"{big['partition_bytes'] / big['samples']:.1f} B/sample in arrays, workers' peak RSS growth "
            f"{worker:.1f} B/sample",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench partition_bench")
    parser.add_argument("--build-sizes", type=int, nargs="*", default=[200_000, 1_200_000])
    parser.add_argument("--compare-central", action="store_true", help="also build with the central plan")
    parser.add_argument("--simulate", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--long", action="store_true", help="simulate 10^8 candidates (tens of minutes)")
    args, _ = parser.parse_known_args(argv)
    if args.build_sizes:
        print("coordinator of a dask mnist-grid build, loopback scheduler + 2 worker processes:", flush=True)
        coordinator(sorted(args.build_sizes), args.compare_central)
    print("simulated planning, partitioned index on local dask worker processes:", flush=True)
    for n in [*args.simulate, *([100_000_000] if args.long else [])]:
        simulation(n, args.partitions)


if __name__ == "__main__":
    main()
