"""Loader benchmark: stock webdataset vs segshards' loader on the same mnist-grid shards, local and from S3.

One run measures, on the same shards: the stock pipeline `webdataset.WebDataset(urls).decode("l8")`,
our loader with 1 worker (its sha256 check streaming, the default; off; and verify="before") and with all
cores, and our loader reading from a loopback S3 server (moto,
started here); it prints the ratios against the targets. With CUDA it also trains a small CNN from the
shards and reports the fraction of step time spent waiting for data.
"""

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import webdataset as wds

from segshards.loaders import DevicePrefetcher, make_loader, to_float
from segshards.loaders.integrity import Verify
from segshards.writer.cli.main import main as writer_main
from segshards.writer.format.manifest import MANIFEST, read_manifest, shard_entries

BATCH = 256


def ensure_shards(folder: Path, samples: int) -> Path:
    """The mnist-grid set of `samples` train samples in `folder`, built unless already there."""
    if (folder / MANIFEST).is_file():
        count = read_manifest(folder)["splits"]["train"]["count"]
        if count != samples:
            raise SystemExit(f"{folder} holds {count:,} train samples, not {samples:,}: pass --shards DIR")
        return folder
    print(f"building {samples:,} mnist-grid samples in {folder} ...", flush=True)
    code = writer_main(
        ["build", "mnist-grid", "--out", str(folder), "--train", str(samples), "--val", "0", "--test", "0"]
    )
    if code:
        raise SystemExit(f"building {folder} failed")
    return folder


@dataclass
class Rate:
    """Best of some runs: samples per wall second, and per CPU second of this process and its workers."""

    wall: float = 0.0
    cpu: float = 0.0
    samples: int = 0


def cpu_seconds(extra: psutil.Process | None) -> float:
    """CPU time of this process, its finished children (DataLoader workers) and `extra` (a server)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    if extra is not None:
        times = extra.cpu_times()
        total += times.user + times.system
    return total


def measure(
    runs: dict[str, Callable[[], int]], repeats: int, extra: psutil.Process | None = None
) -> dict[str, Rate]:
    """Run each of `runs` (each returns samples seen) `repeats` times, interleaved round by round so that
    load from other processes on the machine falls on all of them alike; keep each one's fastest run."""
    best = {name: Rate() for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            cpu0, wall0 = cpu_seconds(extra), time.perf_counter()
            n = run()
            wall, cpu = time.perf_counter() - wall0, cpu_seconds(extra) - cpu0
            if n / wall > best[name].wall:
                best[name] = Rate(n / wall, n / cpu, n)
    return best


def stock_epoch(urls: list[str]) -> int:
    """The stock pipeline over every sample (decode "l8": PIL, grey uint8 arrays); returns samples seen."""
    return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode("l8"))


def our_epoch(source: str, workers: int, verify: Verify = "stream") -> int:
    """One epoch of our loader (shuffled, batches of BATCH, every sample decoded, each shard's sha256
    checked as `verify` says); returns samples seen."""
    loader = make_loader(source, "train", BATCH, num_workers=workers, verify=verify)
    return sum(len(batch["key"]) for batch in loader)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_s3() -> Iterator[tuple[str, psutil.Process]]:
    """moto's S3 server on a free loopback port, with the AWS settings pointing at it; always stopped."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("moto server did not start") from None
                time.sleep(0.1)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        yield endpoint, psutil.Process(proc.pid)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        proc.terminate()
        proc.wait(timeout=10)


def upload(endpoint: str, folder: Path) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    for path in sorted(folder.iterdir()):
        if path.suffix in (".tar", ".json"):
            client.upload_file(str(path), "bench", f"grid/{path.name}")
    return "s3://bench/grid"


class SmallNet(torch.nn.Module):
    """A small fully-convolutional segmenter: (B, 1, H, W) float -> (B, classes, H, W) logits."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def train_step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, batch: dict) -> None:
    """One optimisation step of a segmenter on a batch already on its device."""
    loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["mask"])
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def training_wait_fraction(source: str, workers: int, classes: int) -> tuple[float, float, int]:
    """(fraction of step time waiting for data, steps/s, steps) for one epoch of SmallNet on CUDA."""
    device = torch.device("cuda")
    model = SmallNet(classes).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feed = DevicePrefetcher(
        make_loader(source, "train", BATCH, num_workers=workers), device, transform=to_float
    )
    steps, started = 0, time.perf_counter()
    for batch in feed:
        train_step(model, optimiser, batch)
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return feed.data_wait_s / elapsed, steps / elapsed, steps


def verdict(value: float, target: float) -> str:
    return "ok" if value >= target else "BELOW TARGET"


def line(label: str, rate: Rate, note: str = "") -> str:
    return f"  {label:<38}: {rate.wall:9,.0f} samples/s  ({rate.cpu:7,.0f} per CPU-second){note}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench loader_bench")
    parser.add_argument("--samples", type=int, default=100_000, help="mnist-grid train samples")
    parser.add_argument("--shards", default=None, help="folder of the mnist-grid set (built if absent)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all cores' worker count")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of measurements (the fastest run of each counts)"
    )
    parser.add_argument("--skip-s3", action="store_true", help="skip the loopback S3 measurement")
    args, _ = parser.parse_known_args(argv)
    default = Path("bench-out/grid" if args.samples == 100_000 else f"bench-out/grid-{args.samples}")
    folder = ensure_shards(Path(args.shards) if args.shards else default, args.samples)
    manifest = read_manifest(folder)
    urls = [str(folder / e["name"]) for e in shard_entries(manifest, "train")]
    cores, repeats = args.workers, args.repeats

    local = {
        "stock": lambda: stock_epoch(urls),
        "one": lambda: our_epoch(str(folder), 1),
        "one-off": lambda: our_epoch(str(folder), 1, verify="off"),
        "one-before": lambda: our_epoch(str(folder), 1, verify="before"),
        "many": lambda: our_epoch(str(folder), cores),
    }
    rates = measure(local, repeats)
    stock, one, many = rates["stock"], rates["one"], rates["many"]
    off, before = rates["one-off"], rates["one-before"]
    print(
        f"mnist-grid, {stock.samples:,} train samples in {len(urls)} shards, batches of {BATCH}, "
        f"{cores} workers = all cores; best of {repeats} interleaved rounds"
    )
    print(line("stock WebDataset(urls).decode('l8')", stock))
    print(
        line(
            "segshards loader, 1 worker",
            one,
            f"  {one.wall / stock.wall:.2f}x stock (target >= 5x: {verdict(one.wall / stock.wall, 5)})",
        )
    )
    print(
        line(
            "  the same, sha256 check off",
            off,
            f"  check on/off: {one.wall / off.wall:.3f}x wall, {one.cpu / off.cpu:.3f}x per CPU-second",
        )
    )
    print(line("  the same, verify='before'", before, f"  {before.wall / off.wall:.3f}x check off (wall)"))
    print(
        line(
            f"segshards loader, {cores} workers",
            many,
            f"  {many.wall / one.wall:.2f}x 1 worker (target >= 1.7x: {verdict(many.wall / one.wall, 1.7)})",
        )
    )
    if not args.skip_s3:
        with loopback_s3() as (endpoint, server):
            source = upload(endpoint, folder)
            remote_runs = {"many": lambda: our_epoch(source, cores), "one": lambda: our_epoch(source, 1)}
            remote_rates = measure(remote_runs, repeats, extra=server)
            remote, remote_one = remote_rates["many"], remote_rates["one"]
        print(
            line(
                f"segshards loader, {cores} workers, S3",
                remote,
                f"  {remote.wall / many.wall:.0%} of local (target >= 50%: {verdict(remote.wall / many.wall, 0.5)})",
            )
        )
        print(
            line("segshards loader, 1 worker, S3", remote_one, f"  {remote_one.wall / one.wall:.0%} of local")
        )
        print(
            "    (S3 = moto's server on loopback, on the same cores; its CPU time counts in 'per CPU-second')"
        )
    if torch.cuda.is_available():
        wait, rate, steps = training_wait_fraction(str(folder), cores, int(manifest["mask"]["num_classes"]))
        print(
            f"  training step fed from shards ({torch.cuda.get_device_name()}): {rate:,.1f} steps/s over "
            f"{steps} steps, waiting for data {wait:.1%} of step time (target < 5%)"
        )
    else:
        print("  training step fed from shards: skipped (no CUDA device)")


if __name__ == "__main__":
    main()
