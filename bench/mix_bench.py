"""Mix benchmark: a two-stream mix of the same mnist-grid shards against the single-set loader, one run.

Both read with the same workers and batches; the mix (`[Stream(set), Stream(set)]`) delivers every sample
twice per epoch, so the single-set loader runs two epochs: both runs read the same samples for about the
same time (on a shared machine, a shorter run is likelier to land in a quiet moment). Samples per second
of wall time and of CPU time (this process and its workers) are both shown. A mix of two halves (`repeat=0.5` each: every
shard read, half its samples chosen) is shown too, for what choosing costs. Target: mix >= 0.95x single.
"""

import argparse
from pathlib import Path

from bench.loader_bench import ensure_shards, line, measure, verdict
from segshards.loaders import Stream, make_loader

BATCH = 256


def epochs(source: object, workers: int, count: int = 1) -> int:
    """`count` shuffled epochs of `source` (a set's folder or a list of Streams); returns samples seen."""
    loader = make_loader(source, "train", BATCH, num_workers=workers)  # type: ignore[arg-type]
    return sum(len(batch["key"]) for _ in range(count) for batch in loader)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench mix_bench")
    parser.add_argument("--samples", type=int, default=100_000, help="mnist-grid train samples")
    parser.add_argument("--shards", default=None, help="folder of the mnist-grid set (built if absent)")
    parser.add_argument("--workers", type=int, default=1, help="loader workers for every run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the fastest run of each counts)")
    args, _ = parser.parse_known_args(argv)
    default = Path("bench-out/grid" if args.samples == 100_000 else f"bench-out/grid-{args.samples}")
    folder = str(ensure_shards(Path(args.shards) if args.shards else default, args.samples))
    w = args.workers
    runs = {
        "single": lambda: epochs(folder, w, 2),
        "mix": lambda: epochs([Stream(folder), Stream(folder)], w),
        "halves": lambda: epochs([Stream(folder, repeat=0.5), Stream(folder, repeat=0.5)], w, 2),
    }
    rates = measure(runs, args.repeats)
    single, mix, halves = rates["single"], rates["mix"], rates["halves"]
    ratio, cpu_ratio = mix.wall / single.wall, mix.cpu / single.cpu
    print(
        f"mnist-grid, {single.samples // 2:,} train samples (single: 2 epochs), batches of {BATCH}, {w} worker(s), best of {args.repeats}"
    )
    print(line("single-set loader", single))
    print(
        line(
            "mix of 2 streams (same shards)",
            mix,
            f"  {ratio:.2f}x single (target >= 0.95x: {verdict(ratio, 0.95)}; per CPU-second {cpu_ratio:.2f}x)",
        )
    )
    print(line("mix of 2 halves (repeat=0.5 each)", halves, f"  {halves.wall / single.wall:.2f}x single"))


if __name__ == "__main__":
    main()
