"""The training loop, top to bottom: data, model, optimizer, resume, epochs, checkpoints, final evaluation."""

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from segshards.loaders import DevicePrefetcher, make_loader, to_float
from segshards.train.checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segshards.train.config import RUNTIME_FIELDS, TrainConfig, validate
from segshards.train.errors import CheckpointError
from segshards.train.plots import plot_circles, plot_curves, plot_segmentation
from segshards.train.reports import update_metrics
from segshards.train.tasks import Batch, Task, circle_pixels, task_for
from segshards.writer.errors import ShardFormatError

EVAL_BATCH = 256
WARMUP_FRACTION = 0.15  # of all steps, for the one-cycle learning-rate schedule
# Channels-last lets oneDNN (CPU) and cuDNN pick their fast convolution kernels: 2-4x here on small convs.
CHANNELS_LAST = torch.channels_last


@dataclass
class RunResult:
    """What one call of `train` did: the losses of the steps it ran, and the final metrics if it finished."""

    finished: bool
    step_losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] | None = None


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


def progress(**options: Any) -> tqdm:
    """A samples/s progress bar; redrawn at most every 30 s when stderr is a file or pipe (logs, make)."""
    interval = 0.5 if sys.stderr.isatty() else 30.0
    return tqdm(unit="sample", unit_scale=True, mininterval=interval, dynamic_ncols=True, **options)


def autocast(config: TrainConfig) -> AbstractContextManager[Any]:
    device_type = torch.device(config.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def place(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The model on `device`, channels-last (torch's type stubs lack Module.to's memory_format)."""
    return model.to(device).to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload,no-any-return]


def device_name(device: str) -> str:
    """The device as a person reads it: the GPU's model name on CUDA."""
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"


def prepare(batch: Batch) -> Batch:
    """Runs on the device after the copy: uint8 image -> float in [0, 1] (channels-last), mask -> int64."""
    batch = to_float(batch)
    batch["image"] = batch["image"].contiguous(memory_format=CHANNELS_LAST)
    return batch


def split_loader(config: TrainConfig, split: str, *, batch_size: int = EVAL_BATCH) -> Any | None:
    """An in-order loader of `split`, or None when the set has no such split (or it is empty)."""
    try:
        return make_loader(
            config.data,
            split,
            batch_size,
            num_workers=config.workers,
            shuffle=False,
            seed=config.seed,
            size=config.size,
        )
    except ShardFormatError as exc:
        if f"split {split!r}" in str(exc):
            return None
        raise


def probe_task(config: TrainConfig, loader: Any) -> Task:
    """The recipe's task, with in_channels read from the first sample of the train split."""
    first = next(isolated(make_loader(config.data, "train", 1, shuffle=False, size=config.size)))
    shards = loader.shards
    return task_for(
        shards.recipe or config.recipe, shards.num_classes or 2, in_channels=first["image"].shape[1]
    )


def take(batch: Batch, n: int) -> Batch:
    """The first n samples of a batch."""
    return {k: v[:n] for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
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
    total = min(known) if known else None
    bar = progress(
        total=total,
        desc=desc,
        leave=False,
        disable=not config.progress or not desc,
    )
    with torch.random.fork_rng(devices=[]):
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
    bar.close()
    model.train()
    return metrics.result()


@torch.no_grad()
def plot_predictions(
    model: torch.nn.Module, task: Task, loader: Any, config: TrainConfig, path: Path, *, title: str
) -> None:
    """predictions.png from the first batch of `loader`: inputs, truth, predictions."""
    raw = next(isolated(loader))  # uint8 batch as stored
    batch = prepare({k: v.to(config.device) if isinstance(v, torch.Tensor) else v for k, v in raw.items()})
    model.eval()
    with autocast(config):
        outputs = model(batch["image"])
    model.train()
    if task.kind == "circle":
        logits, circle = outputs
        plot_circles(raw, logits, circle_pixels(circle.float(), batch["image"]), path, title=title)
    else:
        plot_segmentation(raw, outputs.float(), path, title=title)


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A resumed run must learn the same thing: only runtime fields (data location, device ...) may change."""
    for key, value in config.as_dict().items():
        if key not in RUNTIME_FIELDS and saved.get(key) != value:
            raise CheckpointError(
                f"{path}: saved with {key}={saved.get(key)!r}, this run asks for {value!r}; "
                "resume with the saved settings, or train into another --out"
            )


def train(config: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None) -> RunResult:
    """Train `config`, resuming from `config.out/checkpoint.pt` when `resume` is set.

    `stop_after_steps` stops this call after that many optimizer steps, with a checkpoint written, as a
    time-boxed or preempted job would; calling again with `resume=True` continues exactly where it stopped.
    """
    validate(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise CheckpointError(
            f"{checkpoint_path}: a run is already here; pass --resume or choose another --out"
        )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if torch.device(config.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Data. With --samples-per-epoch the train split is an endless seeded stream cut into equal epochs
    # (the loader's resampled mode); otherwise each epoch is one shuffled pass over the whole split.
    spe = config.samples_per_epoch
    loader = make_loader(
        config.data,
        "train",
        config.batch_size,
        num_workers=config.workers,
        shuffle=True,
        seed=config.seed,
        resampled=spe is not None,
        epoch_batches=spe // config.batch_size if spe else None,
        drop_last=True,
        size=config.size,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise CheckpointError(f"{config.data}: train split smaller than one batch of {config.batch_size}")
    # Each evaluation gets a fresh loader: a loader left mid-way would continue from there next time.
    has_val = split_loader(config, "val") is not None
    task = probe_task(config, loader)

    # Model and optimizer; seeded so that two runs of one config start from the same weights.
    torch.manual_seed(config.seed)
    model = place(task.build_model(config.widths, config.stem), config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=WARMUP_FRACTION
    )
    epoch, step, history = 0, 0, []
    epoch_loss, epoch_samples, wall_s, train_samples = 0.0, 0, 0.0, 0
    waited_s, iterated_s = 0.0, 0.0
    if resume and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        check_resumable(saved["config"], config, checkpoint_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        loader.load_state_dict(saved["loader"])
        set_rng_state(saved["rng"])
        epoch, step, history = saved["epoch"], saved["step"], saved["history"]
        epoch_loss, epoch_samples = saved["epoch_loss"], saved["epoch_samples"]
        wall_s, train_samples = saved["wall_s"], saved["train_samples"]
        waited_s, iterated_s = saved.get("data_wait_s", 0.0), saved.get("iterating_s", 0.0)
    prefetcher = DevicePrefetcher(loader, config.device, transform=prepare)
    prefetcher.data_wait_s, prefetcher.iterating_s = waited_s, iterated_s
    segment_start = time.perf_counter()

    def save(next_epoch: int) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "config": config.as_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": next_epoch,
                "step": step,
                "loader": prefetcher.state_dict(),
                "rng": rng_state(),
                "history": history,
                "epoch_loss": epoch_loss,
                "epoch_samples": epoch_samples,
                "wall_s": wall_s + time.perf_counter() - segment_start,
                "train_samples": train_samples,
                "data_wait_s": prefetcher.data_wait_s,
                "iterating_s": prefetcher.iterating_s,
                "recipe": task.recipe,
                "task": {"kind": task.kind, "num_classes": task.num_classes, "in_channels": task.in_channels},
            },
        )

    result = RunResult(finished=False)
    model.train()
    while epoch < config.epochs:
        prefetcher.set_epoch(epoch)  # the same epoch again keeps a resumed position
        done = loader.state_dict()["batches"] * config.batch_size
        bar = progress(
            total=steps_per_epoch * config.batch_size,
            initial=done,
            desc=f"{task.recipe} epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress,
        )
        for batch in isolated(prefetcher):
            with autocast(config):
                outputs = model(batch["image"])  # (B, C, H, W) float -> task outputs
                loss = task.loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = loss.item()
            n = len(batch["image"])
            epoch_loss, epoch_samples, train_samples = (
                epoch_loss + value * n,
                epoch_samples + n,
                train_samples + n,
            )
            result.step_losses.append(value)
            bar.update(n)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save(epoch)
            if stop_after_steps is not None and len(result.step_losses) >= stop_after_steps:
                bar.close()
                save(epoch)
                return result
        bar.close()

        # End of epoch: score (part of) val for the curves, record, checkpoint.
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": epoch_loss / max(epoch_samples, 1),
            "lr": scheduler.get_last_lr()[0],
        }
        if has_val:
            val = evaluate(
                model, task, split_loader(config, "val"), config, max_samples=config.eval_samples, desc="val"
            )
            record["val"] = {k: v for k, v in val.items() if not isinstance(v, (dict, list))}
        history.append(record)
        summary = ", ".join(
            f"{k} {v:.4f}"
            for k, v in (record.get("val") or {}).items()
            if k in ("loss", *task.primary) and v is not None
        )
        tqdm.write(f"{task.recipe} epoch {epoch + 1}: train loss {record['train_loss']:.4f}; val {summary}")
        epoch, epoch_loss, epoch_samples = epoch + 1, 0.0, 0
        save(epoch)

    # Finished: the full val split into metrics.json, then the figures.
    wall_s += time.perf_counter() - segment_start
    training = {
        "wall_s": round(wall_s, 1),
        "samples": train_samples,
        "steps": step,
        "samples_per_s": round(train_samples / wall_s, 1) if wall_s else None,
        "device": device_name(config.device),
        "data_wait_s": round(prefetcher.data_wait_s, 2),
        "data_wait_fraction": round(fraction, 4)
        if (fraction := prefetcher.wait_fraction) is not None
        else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    splits = {}
    if has_val:
        splits["val"] = evaluate(model, task, split_loader(config, "val"), config, desc="val (all)")
    result.metrics = update_metrics(
        out, recipe=task.recipe, config=config.as_dict(), training=training, splits=splits
    )
    plot_curves(history, task.primary, out / "curves.png", title=task.recipe)
    plot_predictions(
        model,
        task,
        split_loader(config, "val" if has_val else "train", batch_size=16),
        config,
        out / "predictions.png",
        title=f"{task.recipe}: {'val' if has_val else 'train'}",
    )
    result.finished = True
    return result
