"""Scoring a split and the plumbing every pass over data shares: in-order loaders, the device side of a batch
(prepare, autocast, channels-last), RNG isolation from the data side, progress bars."""

import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from segshards.loaders import DevicePrefetcher, make_loader, to_float
from segshards.train.config import TrainConfig
from segshards.train.scores import Batch
from segshards.train.tasks import Task

EVAL_BATCH = 256
# Channels-last lets oneDNN (CPU) and cuDNN pick their fast convolution kernels: 2-4x here on small convs.
CHANNELS_LAST = torch.channels_last


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    loader: Any,
    config: TrainConfig,
    *,
    max_samples: int | None = None,
    desc: str = "",
) -> dict[str, Any]:
    """Score `loader` (all of it, or its first `max_samples`) with the task's metrics; model left in train mode."""
    model.eval()
    metrics = task.metrics()
    seen = 0
    known = [x for x in (loader.shards.total, max_samples) if x is not None]
    bar = progress(
        total=min(known) if known else None, desc=desc, leave=False, show=config.progress if desc else False
    )
    with torch.random.fork_rng(devices=[]), bar:
        for batch in isolated(DevicePrefetcher(loader, config.device, transform=prepare)):
            if max_samples is not None and seen + len(batch["image"]) > max_samples:
                batch = take(batch, max_samples - seen)
            with autocast(config):
                outputs = model(batch["image"])
                loss = task.loss(outputs, batch)
            metrics.update(outputs, batch, loss)
            seen += len(batch["image"])
            bar.update(len(batch["image"]))
            if max_samples is not None and seen >= max_samples:
                break
    model.train()
    return metrics.result()


@torch.no_grad()
def plot_predictions(
    model: nn.Module, task: Task, loader: Any, config: TrainConfig, path: Path, *, title: str
) -> None:
    """predictions.png from the first batch of `loader`, drawn by the task."""
    raw = next(isolated(loader))  # uint8 batch as stored
    batch = prepare({k: v.to(config.device) if isinstance(v, torch.Tensor) else v for k, v in raw.items()})
    model.eval()
    with autocast(config):
        outputs = model(batch["image"])
    model.train()
    task.plot(raw, batch, outputs, path, title=title)


def split_loader(config: TrainConfig, split: str, *, batch_size: int = EVAL_BATCH) -> Any:
    """A fresh in-order loader of `split` (a loader left mid-way would continue from there next time)."""
    return make_loader(
        config.data,
        split,
        batch_size,
        num_workers=config.workers,
        shuffle=False,
        seed=config.seed,
        size=config.size,
    )


def prepare(batch: Batch) -> Batch:
    """Runs on the device after the copy: uint8 image -> float in [0, 1] (channels-last), mask -> int64."""
    batch = to_float(batch)
    batch["image"] = batch["image"].contiguous(memory_format=CHANNELS_LAST)
    return batch


def isolated(iterable: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate with the global torch RNG left untouched by the data side.

    DataLoader draws a base seed from the global generator whenever an iterator starts; without this a run
    resumed mid-epoch would see different dropout masks than the uninterrupted run.
    """
    iterator = iter(iterable)
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch


def take(batch: Batch, n: int) -> Batch:
    """The first n samples of a batch."""
    return {k: v[:n] for k, v in batch.items()}


def configure_torch(config: TrainConfig) -> None:
    """Thread count, and on CUDA the fast (autotuned, TF32) kernels."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if torch.device(config.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def progress(*, show: bool | None, **options: Any) -> tqdm:
    """A samples/s progress bar on stderr. `show` None (the default of `--progress`) draws it only when
    stderr is a terminal, as `segshards build` does: a redirected log gets the epoch lines, no bars.
    Forced into a file or pipe (`--progress`) it is redrawn at most every 30 s."""
    interval = 0.5 if sys.stderr.isatty() else 30.0
    disable = None if show is None else not show  # tqdm: None = off unless its file is a terminal
    return tqdm(
        unit="sample", unit_scale=True, mininterval=interval, dynamic_ncols=True, disable=disable, **options
    )


def autocast(config: TrainConfig) -> AbstractContextManager[Any]:
    device_type = torch.device(config.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def place(model: nn.Module, device: str) -> nn.Module:
    """The model on `device`, channels-last (torch's type stubs lack Module.to's memory_format)."""
    return model.to(device).to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload,no-any-return]


def device_name(device: str) -> str:
    """The device as a person reads it: the GPU's model name on CUDA."""
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
