"""Mix benchmark: a two-stream mix of the same mnist-grid shards against the single-set loader, one run.

Both read with the same workers and batches; the mix (`[Stream(set), Stream(set)]`) delivers every sample
twice per epoch, so the single-set loader runs two epochs: both runs read the same samples for about the
same time. Each round runs the two back to back, in alternating order, and each run stops its workers
before it is timed out, so their CPU time is counted (this process and its finished children). Shown:
samples per second of wall time (fastest run of each) and per CPU second (cheapest run of each), and the
median over rounds of the paired ratios (mix / single of the same round), which a shared machine's load
moves least: the target is judged on the paired wall ratio. A mix of two halves (`repeat=0.5` each: every shard read, half its samples chosen) is shown
too, for what choosing costs. Target: mix >= 0.95x single.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.loader_bench import Rate, cpu_seconds, ensure_shards, line, verdict
from segshards.loaders import Stream, make_loader

BATCH = 256


def epochs(source: object, workers: int, count: int = 1) -> int:
    """`count` shuffled epochs of `source` (a set's folder or a list of Streams); returns samples seen.
    The loader's persistent workers are stopped (joined) at the end, so their CPU time is counted."""
    loader = make_loader(source, "train", BATCH, num_workers=workers)  # type: ignore[arg-type]
    seen = sum(len(batch["key"]) for _ in range(count) for batch in loader)
    loader.pool.stop(None)
    return seen


def timed(run: Callable[[], int]) -> tuple[int, float, float]:
    """Samples, wall seconds and CPU seconds (this process and its joined workers) of one run."""
    cpu0, wall0 = cpu_seconds(None), time.perf_counter()
    n = run()
    return n, time.perf_counter() - wall0, cpu_seconds(None) - cpu0


def measure(runs: dict[str, Callable[[], int]], repeats: int) -> tuple[dict[str, Rate], dict[str, list]]:
    """Each run `repeats` times, round by round in alternating order; the best wall and CPU rates of each,
    and per round each run's (wall rate, CPU rate)."""
    best = {name: Rate() for name in runs}
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            n, wall, cpu = timed(runs[name])
            rounds[name].append((n / wall, n / cpu))
            b = best[name]
            best[name] = Rate(max(b.wall, n / wall), max(b.cpu, n / cpu), n)
    return best, rounds


def paired(rounds: dict[str, list], name: str, base: str, which: int) -> float:
    """The median over rounds of `name`'s rate / `base`'s rate (which: 0 wall, 1 CPU)."""
    return statistics.median(a[which] / b[which] for a, b in zip(rounds[name], rounds[base], strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench mix_bench")
    parser.add_argument("--samples", type=int, default=100_000, help="mnist-grid train samples")
    parser.add_argument("--shards", default=None, help="folder of the mnist-grid set (built if absent)")
    parser.add_argument("--workers", type=int, default=1, help="loader workers for every run")
    parser.add_argument("--repeats", type=int, default=4, help="rounds (alternating order)")
    args, _ = parser.parse_known_args(argv)
    default = Path("bench-out/grid" if args.samples == 100_000 else f"bench-out/grid-{args.samples}")
    folder = str(ensure_shards(Path(args.shards) if args.shards else default, args.samples))
    w = args.workers
    runs = {
        "single": lambda: epochs(folder, w, 2),
        "mix": lambda: epochs([Stream(folder), Stream(folder)], w),
        "halves": lambda: epochs([Stream(folder, repeat=0.5), Stream(folder, repeat=0.5)], w, 2),
    }
    best, rounds = measure(runs, args.repeats)
    single, mix, halves = best["single"], best["mix"], best["halves"]
    wall, cpu = paired(rounds, "mix", "single", 0), paired(rounds, "mix", "single", 1)
    print(
        f"mnist-grid, {single.samples // 2:,} train samples (single: 2 epochs), batches of {BATCH}, "
        f"{w} worker(s), {args.repeats} rounds"
    )
    print(line("single-set loader", single))
    print(
        line(
            "mix of 2 streams (same shards)",
            mix,
            f"  best/best: wall {mix.wall / single.wall:.2f}x, CPU {mix.cpu / single.cpu:.2f}x",
        )
    )
    print(
        line(
            "mix of 2 halves (repeat=0.5 each)", halves, f"  best/best: wall {halves.wall / single.wall:.2f}x"
        )
    )
    print(
        f"  mix / single, median of the rounds' paired ratios: wall {wall:.3f}x, CPU {cpu:.3f}x "
        f"(target >= 0.95x: {verdict(wall, 0.95)}); halves / single: wall "
        f"{paired(rounds, 'halves', 'single', 0):.3f}x, CPU {paired(rounds, 'halves', 'single', 1):.3f}x"
    )


if __name__ == "__main__":
    main()
