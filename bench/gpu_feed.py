"""How a GPU training step is fed from shards (CUDA only): where the loader_bench's data-wait goes.

`python -m bench gpu_feed [--shards DIR] [--samples N]` prints, on the same mnist-grid shards:
- the loader alone (no GPU work): time to the first batch and samples/s, by worker count;
- the training step alone on one batch already on the GPU: the ceiling of steps/s;
- the step fed from shards through `DevicePrefetcher`, by workers and prefetch depth: steps/s and the
  fraction of loop time spent waiting for data, split into the start of each epoch (workers starting,
  shuffle buffers filling) and the steady state after it;
then the photo section (`bench.gpu_photos`): a COCO U-Net fed with CPU decode against GPU decode.
`--photos` runs only that section, and with `--device cpu --small` it runs on a CPU (a check that it works).
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench.gpu_photos import add_photo_options, photos_main
from bench.loader_bench import BATCH, SmallNet, ensure_shards, train_step
from segshards.loaders import DevicePrefetcher, make_loader, to_float


def loader_alone(folder: str, workers: int, prefetch: int) -> tuple[float, float]:
    """(seconds to the first batch, samples/s) for one epoch of the loader with no consumer work."""
    started = time.perf_counter()
    first, samples = 0.0, 0
    for batch in make_loader(folder, "train", BATCH, num_workers=workers, prefetch_factor=prefetch):
        if not samples:
            first = time.perf_counter() - started
        samples += len(batch["key"])
    return first, samples / (time.perf_counter() - started)


def step_ceiling(classes: int, steps: int = 300) -> float:
    """Steps/s of SmallNet on one batch resident on the GPU: the rate with no data to wait for."""
    model = SmallNet(classes).cuda()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {
        "image": torch.rand(BATCH, 1, 56, 56, device="cuda"),
        "mask": torch.randint(0, classes, (BATCH, 56, 56), device="cuda"),
    }
    for i in range(steps + 20):
        if i == 20:
            torch.cuda.synchronize()
            started = time.perf_counter()
        train_step(model, optimiser, batch)
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def fed(
    folder: str, workers: int, prefetch: int, classes: int, epochs: int, pin: bool = True
) -> dict[str, float]:
    """SmallNet trained from shards for `epochs`: steps/s and the data-wait fractions."""
    model = SmallNet(classes).cuda()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(
        folder, "train", BATCH, num_workers=workers, prefetch_factor=prefetch, pin_memory=pin
    )
    feed = DevicePrefetcher(loader, "cuda", transform=to_float)
    startup, steps, started = 0.0, 0, time.perf_counter()
    for epoch in range(epochs):
        feed.set_epoch(epoch)
        before = feed.data_wait_s
        for i, batch in enumerate(feed):
            if i == 0:  # the wait for the first two batches: workers starting, shuffle buffers filling
                startup += feed.data_wait_s - before
            train_step(model, optimiser, batch)
            steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "steps_per_s": steps / elapsed,
        "wait": feed.data_wait_s / elapsed,
        "start_wait": startup / elapsed,
        "steady_wait": (feed.data_wait_s - startup) / elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench gpu_feed")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--shards", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    add_photo_options(parser)
    args, _ = parser.parse_known_args(argv)
    if args.photos or args.device == "cpu":
        photos_main(args)
        return
    if not torch.cuda.is_available():
        print("gpu_feed: skipped (no CUDA device)")
        return
    torch.backends.cudnn.benchmark = True
    folder = str(ensure_shards(Path(args.shards or f"bench-out/grid-{args.samples}"), args.samples))
    classes = json.loads((Path(folder) / "manifest.json").read_text())["mask"]["num_classes"]
    cores = os.cpu_count() or 1
    print(f"{torch.cuda.get_device_name()}, {cores} cores, batches of {BATCH}")
    for workers in sorted({2, 6, 12, cores}):
        first, rate = loader_alone(folder, workers, 2)
        print(f"  loader alone, {workers:2d} workers: first batch {first:.2f} s, {rate:,.0f} samples/s")
    ceiling = step_ceiling(classes)
    print(
        f"  step alone (batch resident on the GPU): {ceiling:,.1f} steps/s = {ceiling * BATCH:,.0f} samples/s"
    )
    for workers, prefetch, pin in (
        (6, 2, True),
        (12, 2, True),
        (12, 4, True),
        (12, 2, False),
        (cores, 2, True),
    ):
        r = fed(folder, workers, prefetch, classes, args.epochs, pin)
        print(
            f"  fed, {workers:2d} workers, prefetch {prefetch}{'' if pin else ', unpinned'}: {r['steps_per_s']:,.1f} steps/s; waiting "
            f"{r['wait']:.1%} of loop time ({r['start_wait']:.1%} at epoch starts, {r['steady_wait']:.1%} after)"
        )
    photos_main(args)


if __name__ == "__main__":
    main()
