"""Photographs into a GPU training step: CPU decode (in the loader's workers) against GPU decode
(`make_loader(..., decode_device="cuda")`: nvjpeg in the main process, letterbox on the GPU).

A COCO U-Net as `segshards train` builds it for photo sets (the schema's hints: widths 32-256, stem 2) is
trained in bf16 autocast on batches of 32 photographs letterboxed to 320x320, fed through
`DevicePrefetcher`; for each decode and worker count it prints photos/s of the loop and the fraction of loop
time spent waiting for data (after a few warm-up steps), and the loader alone (no training) in photos/s.
First, on the CPU in one process, a worker's part per photograph with each decode: photos per CPU-second
(`time.process_time`) of the default (decode and letterbox) and of the device path (checks and mask only).
The set is `bench.photo_bench`'s (>= 2,000 COCO-derived photographs, built once into bench-out/).

Reached through `python -m bench gpu_feed --photos [--images N] [--steps S] [--workers 2,6,12]`;
`--device cpu` runs the same code on a CPU, reduced (96 photographs, 64x64, batches of 4, a narrow U-Net in
float32: bf16 on a CPU without bf16 units is ~100x slower; CPU decode against `decode_device="cpu"`): a
check that the script works, not figures.
"""

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.coco_bench import default_source
from bench.photo_bench import build_set
from segshards.loaders import Augment, DevicePrefetcher, make_loader, to_float
from segshards.loaders.decode import BatchAssembler
from segshards.loaders.device_decode import BytesAssembler
from segshards.train.models import UNet
from segshards.writer.errors import ConfigError
from segshards.writer.format.manifest import read_manifest
from segshards.writer.format.schema import schema_of
from segshards.writer.format.tar_reader import iter_samples

WIDTHS, STEM = (32, 64, 128, 256), 2  # PHOTOGRAPH_TRAINING's U-Net
WARMUP = 5  # steps left out of the figures: workers starting, cuDNN choosing its kernels
FULL: dict[str, Any] = {
    "images": None,
    "batch_size": 32,
    "size": (320, 320),
    "widths": WIDTHS,
    "warmup": WARMUP,
}
REDUCED: dict[str, Any] = {
    "images": 96,
    "batch_size": 4,
    "size": (64, 64),
    "widths": (8, 16, 32, 64),
    "warmup": 1,
    "steps": 3,
}


def add_photo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", action="store_true", help="only the photo section: CPU vs GPU decode")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a reduced check on a CPU")
    parser.add_argument("--images", type=int, default=2500, help="photographs in the set")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per run")
    parser.add_argument("--workers", default="2,6,12", help="loader worker counts, comma-separated")
    parser.add_argument("--small", action="store_true", help="a quick run: 96 photographs, small batches")
    parser.add_argument(
        "--augment", action="store_true", help="with Augment() (on the device too) instead of the letterbox"
    )


def worker_share(folder: Path, limit: int = 320) -> dict[str, float]:
    """Photos per CPU-second of what a worker does for each photograph, letterboxed to 320x320 in batches
    of 32, over the set's first `limit` samples held in memory: the default decode, and the device path's
    checks and mask (the JPEG handed on undecoded)."""
    samples: list[dict[str, Any]] = []
    for shard in sorted(folder.glob("*.tar")):
        with open(shard, "rb") as stream:
            samples += [{**s, "__url__": str(shard)} for s in iter_samples(stream, str(shard))]
        if len(samples) >= limit:
            break
    groups = [samples[i : i + 32] for i in range(0, min(limit, len(samples)), 32)]
    schema, rates = schema_of(read_manifest(folder)), {}
    for name, kind in (("decode in the worker", BatchAssembler), ("device path's share", BytesAssembler)):
        assemble = kind(schema=schema, size=(320, 320), with_meta=False, allocate=plain_buffer)
        started = time.process_time()
        count = sum(len(assemble(group, raise_error)["key"]) for group in groups)
        rates[name] = count / (time.process_time() - started)
    return rates


def plain_buffer(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def raise_error(exc: Exception) -> None:
    raise exc


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_alone(
    folder: Path, decode: str | None, workers: int, batches: int, shape: dict[str, Any]
) -> float:
    """Photos/s of the loader with no training: `batches` batches, the decode finished on the device."""
    loader = make_loader(folder, "train", num_workers=workers, decode_device=decode, drop_last=True, **shape)
    photos, started, device = 0, time.perf_counter(), torch.device(decode or "cpu")
    iterator = loader.forever()  # held, so that stopping its workers falls outside the timing
    for batch in iterator:
        photos += len(batch["key"])
        if photos >= batches * shape["batch_size"]:
            break
    sync(device)
    rate = photos / (time.perf_counter() - started)
    iterator.close()
    return rate


def trained(
    folder: Path, decode: str | None, workers: int, steps: int, device: torch.device, setup: dict[str, Any]
) -> tuple[float, float]:
    """(photos/s, data-wait fraction) of `steps` U-Net steps (bf16 autocast on CUDA) fed from the set
    through DevicePrefetcher, after `setup["warmup"]` steps."""
    classes = read_manifest(folder)["mask"]["num_classes"]
    model = UNet(in_channels=3, num_classes=classes, widths=setup["widths"], stem=STEM).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    shape = {"batch_size": setup["batch_size"], "size": setup["size"], "augment": setup["augment"]}
    loader = make_loader(folder, "train", num_workers=workers, decode_device=decode, drop_last=True, **shape)
    feed = DevicePrefetcher(loader, device, transform=to_float)
    warmup, cuda = setup["warmup"], device.type == "cuda"
    done, photos, epoch, started, waited = 0, 0, 0, 0.0, 0.0
    while done < warmup + steps:
        feed.set_epoch(epoch)
        epoch += 1
        iterator = iter(feed)  # held, so that stopping its workers falls outside the timing
        for batch in iterator:
            if done == warmup:
                sync(device)
                started, waited = time.perf_counter(), feed.data_wait_s
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(
                    model(batch["image"]), batch["mask"], ignore_index=255
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            photos += len(batch["key"]) if done >= warmup else 0
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    elapsed = time.perf_counter() - started
    iterator.close()
    return photos / elapsed, (feed.data_wait_s - waited) / elapsed


def photos_main(args: argparse.Namespace) -> None:
    """The photo section: each decode and worker count, trained and alone."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("[gpu photos] skipped (no CUDA device; --device cpu checks the script on a CPU)")
        return
    source = default_source()
    if source is None:
        print("[gpu photos] no coco-tiny folder (set $SEGSHARDS_COCO_TINY): skipped")
        return
    small = args.small or device.type == "cpu"
    setup = REDUCED if small else {**FULL, "images": args.images, "steps": args.steps}
    setup = {**setup, "augment": Augment() if args.augment else None}
    n, steps, (h, w) = setup["images"], setup["steps"], setup["size"]
    shape = {"batch_size": setup["batch_size"], "size": setup["size"], "augment": setup["augment"]}
    workers = [2] if small else [int(count) for count in args.workers.split(",")]
    folder = build_set(source, n)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reduced: not figures)"
    print(f"[gpu photos] {name}: {n} photographs, {h}x{w}, batch {setup['batch_size']}, U-Net "
          f"{setup['widths']} stem {STEM}, {'bf16' if device.type == 'cuda' else 'float32'}, {steps} steps "
          f"after {setup['warmup']}{', Augment()' if setup['augment'] else ', letterboxed'}", flush=True)  # fmt: skip
    share = worker_share(folder)
    print("[gpu photos] a worker's CPU per photograph (one process, 320x320): "
          + ", ".join(f"{name} {rate:,.0f} photos per CPU-s" for name, rate in share.items()), flush=True)  # fmt: skip
    for decode in (None, str(device)):
        label = "CPU decode (workers)" if decode is None else f"decode_device={decode!r}"
        for count in workers:
            try:
                rate, wait = trained(folder, decode, count, steps, device, setup)
                alone = loader_alone(folder, decode, count, max(steps // 2, 2), shape)
            except ConfigError as exc:
                print(f"[gpu photos] {label}: not measured: {exc}")
                break
            print(f"[gpu photos] {label:24s} {count:2d} workers: training {rate:8.1f} photos/s, waiting for "
                  f"data {wait:6.1%}; loader alone {alone:8.1f} photos/s", flush=True)  # fmt: skip
