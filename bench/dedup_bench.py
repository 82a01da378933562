"""Dedup and planning memory per sample: the figures behind docs/SCALING.md.

- the central dedup index of `segshards.writer.build.plan` (a Python set of 16-byte xxh3-128 digests), built the way the
  planner builds it, at several sizes: the set's table (sys.getsizeof), the digest objects as allocated,
  and the process's resident-memory growth;
- a compact alternative: the digests as a sorted numpy array of 16-byte records (what one partition of a
  distributed index would hold), with the cost of sorting it and looking digests up;
- one partition of the distributed index as `--backend dask` builds it (`segshards.writer.build.partition`:
  sorted runs of uint64 halves, probed then committed per round): bytes per sample, resident-memory
  growth and CPU seconds per million digests, in this process;
- the whole central plan of an mnist-grid build (`plan_all`): what it keeps and its peak, traced.
"""

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import psutil
import xxhash

from segshards.writer.build.partition import IndexPartition, digest_words
from segshards.writer.build.plan import plan_all
from segshards.writer.recipes.digits import BUNDLED_MNIST, DigitsSpec, load_digits
from segshards.writer.recipes.registry import get_recipe


def digest_batches(n: int, batch: int = 1 << 16, seed: int = 0) -> Iterator[list[bytes]]:
    """`n` distinct 16-byte digests in batches, as the planner's candidates produce them."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        raw = rng.integers(0, 2**63, size=(min(batch, n - start), 2), dtype=np.int64).tobytes()
        yield [xxhash.xxh3_128_digest(raw[i : i + 16]) for i in range(0, len(raw), 16)]


def set_index(n: int) -> tuple[float, float, float]:
    """Per sample: the set's table, one digest object as allocated, and resident-memory growth."""
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    seen: set[bytes] = set()
    for batch in digest_batches(n):
        for digest in batch:  # as segshards.writer.build.plan.plan_split adds them
            seen.add(digest)
    rss = psutil.Process().memory_info().rss - rss0
    digest_bytes = -(-sys.getsizeof(next(iter(seen))) // 16) * 16  # pymalloc allocates 16-byte classes
    return sys.getsizeof(seen) / n, digest_bytes, rss / n


def numpy_index(n: int) -> tuple[float, float]:
    """Bytes per sample of a sorted array of 16-byte records; seconds per million to sort and look up."""
    raw = np.random.default_rng(1).integers(0, 2**63, size=(n, 2), dtype=np.int64)
    records = raw.view(np.dtype((np.void, 16))).ravel()
    started = time.perf_counter()
    index = np.sort(records)
    found = np.searchsorted(index, records)
    assert (index[found] == records).all()
    return index.nbytes / n, (time.perf_counter() - started) / (n / 1e6)


def partition_index(n: int, round_size: int = 1 << 14) -> tuple[float, float, float]:
    """One index partition fed `n` distinct digests in rounds, each probed then committed whole: bytes
    per sample in its arrays, resident-memory growth per sample, CPU seconds per million (process time)."""
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    part = IndexPartition()
    keep = None
    cpu = 0.0
    for batch in digest_batches(n, batch=round_size):
        words = digest_words(batch)
        started = time.process_time()
        part.step(keep, words)
        cpu += time.process_time() - started
        keep = np.ones(len(words), bool)
    part.step(keep, np.zeros((0, 2), np.uint64))
    held, nbytes = part.stats()[:2]
    assert held == n
    rss = psutil.Process().memory_info().rss - rss0
    return nbytes / n, rss / n, cpu / (n / 1e6)


def plan_memory(n: int) -> tuple[float, float, float]:
    """Per sample of an n-sample mnist-grid train split: bytes the central plan keeps and its peak while
    planning (both traced: requested sizes, before pymalloc's rounding), and seconds per million."""
    recipe = get_recipe("mnist-grid")
    spec = DigitsSpec(str(BUNDLED_MNIST))
    load_digits(spec)  # the source itself is not a per-sample cost
    counts: dict[str, int | None] = {"train": n, "val": 0, "test": 0}
    started = time.perf_counter()
    plan_all(recipe, spec, counts, seed=0)  # timed without tracemalloc, which slows allocation
    elapsed = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    plans = plan_all(recipe, spec, counts, seed=0)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del plans
    return held / n, peak / n, elapsed / (n / 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench dedup_bench")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 4_000_000, 10_000_000])
    parser.add_argument("--plan-samples", type=int, default=1_000_000)
    args, _ = parser.parse_known_args(argv)
    print("dedup index: Python set of 16-byte digests, built as segshards.writer.build.plan builds it")
    for n in args.sizes:
        table, digest, rss = set_index(n)
        print(
            f"  {n:>11,} digests: set table {table:5.1f} + digest object {digest:.0f} "
            f"= {table + digest:6.1f} B/sample; RSS growth {rss:6.1f} B/sample"
        )
    n = max(args.sizes)
    per, secs = numpy_index(n)
    print(
        f"  sorted numpy array of 16-byte records, {n:,}: {per:.1f} B/sample; sort + lookups {secs:.2f} s per M"
    )
    per, rss, secs = partition_index(n)
    print(
        f"  one partition of the dask index (sorted uint64 runs), {n:,}: {per:.1f} B/sample in arrays, "
        f"RSS growth {rss:.1f} B/sample; probe + commit {secs:.2f} CPU s per M"
    )
    held, peak, secs = plan_memory(args.plan_samples)
    print(
        f"central plan_all, mnist-grid, {args.plan_samples:,} train samples: keeps {held:.1f} B/sample, "
        f"peak {peak:.1f} B/sample (traced); {secs:.1f} s per M samples"
    )


if __name__ == "__main__":
    main()
