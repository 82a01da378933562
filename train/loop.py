"""The training loop, top to bottom: `train` sets up data, task, model and optimizer (or restores them from a
checkpoint), runs `train_one_epoch` and `end_epoch` until done, then `finish` scores val and draws figures.

Everything that changes from step to step lives in one `TrainState`, saved and restored as one object, so
a resumed run takes exactly the steps the uninterrupted one would have.
"""

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from segshards.loaders import DevicePrefetcher, make_loader
from segshards.train.augmentation import augment_line, described, to_augment
from segshards.train.checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segshards.train.class_weights import run_weights, saved_weights, weights_record
from segshards.train.config import RUNTIME_FIELDS, TrainConfig, validate
from segshards.train.dataset import SetInfo, mix_streams, read_set
from segshards.train.errors import CheckpointError, ConfigError
from segshards.train.evaluate import (
    autocast,
    configure_torch,
    device_name,
    evaluate,
    isolated,
    place,
    plot_predictions,
    prepare,
    progress,
    split_loader,
)
from segshards.train.plots import plot_curves
from segshards.train.reports import counted, update_metrics
from segshards.train.tasks import Task, task_for

WARMUP_FRACTION = 0.15  # of all steps, for the one-cycle learning-rate schedule


@dataclass
class RunResult:
    """What one call of `train` did: the losses of the steps it ran, and the final metrics if it finished."""

    finished: bool
    step_losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] | None = None


@dataclass
class TrainState:
    """Everything a run carries from step to step; `state_dict` is what checkpoint.pt holds of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: DevicePrefetcher  # the train loader, batches already on the device; its position is saved too
    epoch: int = 0  # the epoch in progress, 0-based (== config.epochs once done)
    step: int = 0  # optimizer steps so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    losses: list[float] = field(default_factory=list)  # the loss of every step of the run, for curves.png
    epoch_loss: float = 0.0  # sum of loss x samples over the epoch in progress
    epoch_samples: int = 0
    train_samples: int = 0
    wall_s: float = 0.0  # training time of the earlier processes of this run
    started: float = field(default_factory=time.perf_counter)  # when this process took over

    def elapsed_s(self) -> float:
        return self.wall_s + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.data.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "losses": self.losses,
            "epoch_loss": self.epoch_loss,
            "epoch_samples": self.epoch_samples,
            "train_samples": self.train_samples,
            "wall_s": self.elapsed_s(),
            "data_wait_s": self.data.data_wait_s,
            "iterating_s": self.data.iterating_s,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.data.load_state_dict(saved["loader"])
        set_rng_state(saved["rng"])
        self.epoch, self.step, self.history = saved["epoch"], saved["step"], saved["history"]
        self.losses = list(saved.get("losses", []))  # absent from checkpoints of older versions
        self.epoch_loss, self.epoch_samples = saved["epoch_loss"], saved["epoch_samples"]
        self.train_samples, self.wall_s = saved["train_samples"], saved["wall_s"]
        self.data.data_wait_s, self.data.iterating_s = saved["data_wait_s"], saved["iterating_s"]
        self.started = time.perf_counter()


def train(config: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None) -> RunResult:
    """Train `config`, resuming from `config.out/checkpoint.pt` when `resume` is set.

    `stop_after_steps` stops this call after that many optimizer steps, with a checkpoint written, as a
    time-boxed or preempted job would; calling again with `resume=True` continues exactly where it stopped.
    The run folder is created by the first checkpoint: a run that fails before it leaves nothing behind.
    """
    validate(config)
    checkpoint_path = Path(config.out) / CHECKPOINT
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise ConfigError(f"--out {config.out}: exists and is not a folder")
    if checkpoint_path.exists() and not resume:
        raise CheckpointError(
            f"{checkpoint_path}: a run is already here; pass --resume or choose another --out"
        )
    configure_torch(config)

    # Data and task, both from the set's manifest: the schema says what to learn, the splits what exists.
    info = read_set(config.data)
    task = task_for(info.schema, palette=info.palette)
    check_size(config, info, task)
    saved = load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
    if saved is not None:
        check_resumable(saved["config"], config, checkpoint_path)
    # --class-weights auto: from the train split's pixel counts, or the weights a resumed run started with.
    task.set_class_weights(saved_weights(saved, task) if saved is not None else run_weights(config))
    loader = train_loader(config)
    if len(loader) == 0:
        raise ConfigError(f"--data {config.data}: train split smaller than one batch of {config.batch_size}")
    tqdm.write(augment_line(config.augment, info))
    note = left_out_note(config, loader)
    if note:
        tqdm.write(note)

    # Model and optimizer; seeded so that two runs of one config start from the same weights.
    torch.manual_seed(config.seed)
    model = place(task.build_model(config.widths, config.stem), config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(loader), pct_start=WARMUP_FRACTION
    )
    state = TrainState(
        model, optimizer, scheduler, DevicePrefetcher(loader, config.device, transform=prepare)
    )
    if saved is not None:
        state.load_state_dict(saved)

    result = RunResult(finished=False)
    model.train()
    while state.epoch < config.epochs:
        if train_one_epoch(state, task, config, result.step_losses, stop_after=stop_after_steps):
            return result  # stopped mid-way, checkpointed
        end_epoch(state, task, config, info)
    result.metrics = finish(state, task, config, info)
    result.finished = True
    return result


def train_one_epoch(
    state: TrainState, task: Task, config: TrainConfig, losses: list[float], *, stop_after: int | None
) -> bool:
    """Run (the rest of) epoch `state.epoch`; True when it stopped after `stop_after` steps of this call."""
    data = state.data
    if data.state_dict()["epoch"] > state.epoch:
        # Checkpointed on the epoch's last step: DevicePrefetcher had read the loader to its end, which then
        # stands at the next epoch's start. No batch of this epoch is left; `set_epoch` would start it over.
        return False
    data.set_epoch(state.epoch)  # the same epoch again keeps a resumed position
    bar = progress(
        total=len(data) * config.batch_size,
        initial=data.state_dict()["batches"] * config.batch_size,
        desc=f"{config.recipe} epoch {state.epoch + 1}/{config.epochs}",
        show=config.progress,
    )
    with bar:
        for batch in isolated(data):
            with autocast(config):
                outputs = state.model(batch["image"])  # (B, C, H, W) float -> the task's outputs
                loss = task.loss(outputs, batch)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            state.scheduler.step()
            value, n = loss.item(), len(batch["image"])
            state.step += 1
            state.epoch_loss += value * n
            state.epoch_samples += n
            state.train_samples += n
            losses.append(value)
            state.losses.append(value)
            bar.update(n)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                checkpoint(state, task, config)
            if stop_after is not None and len(losses) >= stop_after:
                checkpoint(state, task, config)
                return True
    return False


def end_epoch(state: TrainState, task: Task, config: TrainConfig, info: SetInfo) -> None:
    """Score (part of) val for the curves, print and record the epoch, start the next one, checkpoint."""
    record: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "train_loss": state.epoch_loss / max(state.epoch_samples, 1),
        "lr": state.scheduler.get_last_lr()[0],
    }
    val: dict[str, Any] = {}
    if info.has_split("val"):
        val = evaluate(
            state.model, task, split_loader(config, "val"), config, max_samples=config.eval_samples
        )
        record["val"] = {k: v for k, v in val.items() if not isinstance(v, dict | list)}
    state.history.append(record)
    tqdm.write(epoch_line(record, val, task, config.recipe))
    state.epoch, state.epoch_loss, state.epoch_samples = state.epoch + 1, 0.0, 0
    checkpoint(state, task, config)


def finish(state: TrainState, task: Task, config: TrainConfig, info: SetInfo) -> dict[str, Any]:
    """The whole val split and the training figures into metrics.json, then curves.png and predictions.png."""
    out = Path(config.out)
    wall_s, data = state.elapsed_s(), state.data
    training = {
        "wall_s": round(wall_s, 1),
        "samples": state.train_samples,
        "steps": state.step,
        "samples_per_s": round(state.train_samples / wall_s, 1) if wall_s else None,
        "device": device_name(config.device),
        "data_wait_s": round(data.data_wait_s, 2),
        "data_wait_fraction": None if data.wait_fraction is None else round(data.wait_fraction, 4),
        "parameters": sum(p.numel() for p in state.model.parameters()),
    }
    if config.mix:
        training["mix"] = mix_report(state.data.loader)
    splits = {}
    if info.has_split("val"):
        splits["val"] = evaluate(state.model, task, split_loader(config, "val"), config, desc="val (all)")
    report = update_metrics(
        out,
        recipe=config.recipe,
        primary=list(task.primary),
        config=config.as_dict(),
        class_weights=weights_record(config.class_weights, task),
        training=training,
        splits=splits,
    )
    plot_curves(state.history, task.primary, out / "curves.png", title=config.recipe, losses=state.losses)
    shown = "val" if info.has_split("val") else "train"
    plot_predictions(
        state.model,
        task,
        split_loader(config, shown, batch_size=16),
        config,
        out / "predictions.png",
        title=f"{config.recipe}: {shown}",
    )
    return report


def checkpoint(state: TrainState, task: Task, config: TrainConfig) -> None:
    """Write checkpoint.pt atomically (creating the run folder the first time): the state, config and task."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "config": config.as_dict(),
        "recipe": config.recipe,
        "task": task.describe(),
        "class_weights": weights_record(config.class_weights, task),
    }
    if config.mix:
        extra["mix"] = mix_report(state.data.loader)
    save_checkpoint(out / CHECKPOINT, state.state_dict() | extra)


def mix_report(loader: Any) -> list[dict[str, Any]]:
    """Each stream of a mix: source, weight, samples per epoch, and what this epoch read of it so far."""
    read = getattr(loader.stats, "streams", [{}] * len(loader.mix.streams))
    return [plan | {"read": dict(counts)} for plan, counts in zip(loader.mix.describe(), read, strict=True)]


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A resumed run must learn the same thing: only runtime fields (data location, device ...) may change."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}  # for fields older checkpoints lack
    for key, value in config.as_dict().items():
        was = saved.get(key, defaults[key])
        if key not in RUNTIME_FIELDS and was != value:
            raise CheckpointError(f"{path}: {mismatch(key, was, value)}, or train into another --out")


def mismatch(key: str, was: Any, asked: Any) -> str:
    """How a resumed run differs from its checkpoint, and the fix; augmentation on or off in the flag a
    user types (`--no-augment`), not as the recorded options."""
    if key == "augment" and asked is None:
        saved = described(to_augment(was))
        return f"saved with augment: {saved}, this run asks for --no-augment; resume without --no-augment"
    if key == "augment" and was is None:
        wanted = described(to_augment(asked))
        return f"saved with --no-augment, this run asks for augment: {wanted}; resume with --no-augment"
    return f"saved with {key}={was!r}, this run asks for {asked!r}; resume with the saved settings"


def check_size(config: TrainConfig, info: SetInfo, task: Task) -> None:
    """The letterbox size (--size, else the set's hint) must suit the model: ConfigError naming --size."""
    size = config.size or info.training_size()
    if size is None:
        return
    multiple = task.size_multiple(config.widths, config.stem)
    if any(side % multiple for side in size):
        h, w = size
        fit = tuple(max(multiple, round(side / multiple) * multiple) for side in size)
        raise ConfigError(
            f"--size {h} {w}: this model (--widths {','.join(map(str, config.widths))}, --stem {config.stem}) "
            f"needs sides divisible by {multiple}, e.g. --size {fit[0]} {fit[1]}"
        )


def train_loader(config: TrainConfig) -> Any:
    """The train split: with --samples-per-epoch an endless seeded stream cut into equal epochs (the loader's
    resampled mode), otherwise one shuffled pass over the whole split per epoch."""
    spe = config.samples_per_epoch
    return make_loader(
        mix_streams(config.mix) if config.mix else config.data,
        "train",
        config.batch_size,
        num_workers=config.workers,
        shuffle=True,
        seed=config.seed,
        resampled=spe is not None,
        epoch_batches=spe // config.batch_size if spe else None,
        drop_last=True,
        size=config.size,
        augment=to_augment(config.augment),
    )


def left_out_note(config: TrainConfig, loader: Any) -> str | None:
    """Said once, at the start: the train samples an epoch leaves out. Training batches are all full
    (drop_last), so each loader worker's last, short batch is not trained on; the shuffle changes which
    samples that is from one epoch to the next."""
    trained = len(loader) * config.batch_size
    spe = config.samples_per_epoch
    if spe is not None:
        if trained == spe:
            return None
        return (
            f"{config.recipe}: note: --samples-per-epoch {spe:,} is trained as "
            f"{counted(len(loader), 'full batch', 'full batches')} of {config.batch_size}: "
            f"{counted(trained, 'sample')} an epoch"
        )
    total = sum(loader.mix.wanted) if loader.mix is not None else loader.shards.total
    if total is None or trained >= total:
        return None
    streams = loader.config.workers
    which = (
        "its last, short batch is"
        if streams == 1
        else f"the last, short batch of each of its {streams} workers is"
    )
    return (
        f"{config.recipe}: note: epoch 1 trains on {trained:,} of the {total:,} train samples: the loader "
        f"hands out full batches only (--batch-size {config.batch_size}), so {which} left out "
        "(other samples each epoch, as the shuffle changes)"
    )


def epoch_line(
    record: dict[str, Any], val: dict[str, Any], task: Task, recipe: str, *, best: int = 10
) -> str:
    """The console line of an epoch: train loss, val loss and primary metrics, and the best val class IoUs."""
    scores = record.get("val") or {}
    shown = ", ".join(f"{k} {scores[k]:.4f}" for k in ("loss", *task.primary) if scores.get(k) is not None)
    line = f"{recipe} epoch {record['epoch']}: train loss {record['train_loss']:.4f}; val {shown or '-'}"
    per_class = val.get("iou_per_class") or {}
    present = {k: v for k, v in per_class.items() if v is not None}  # in the truth or the prediction
    if len(per_class) > 2 and present:
        line += "\n  " + class_line(present, best=best)
    return line


def class_line(present: dict[str, float], *, best: int) -> str:
    """The `best` val class IoUs among those above 0 (a class that scored 0 is no one's best), and how many
    scored 0."""
    ranked = sorted(((v, k) for k, v in present.items() if v > 0), key=lambda x: -x[0])
    if not ranked:
        return f"val IoU per class: {counted(len(present), 'class', 'classes')} present, none above 0"
    listed = ", ".join(f"{k} {v:.3f}" for v, k in ranked[:best])
    line = f"val IoU per class, best {min(best, len(ranked))} of {len(present)} present: {listed}"
    zero = len(present) - len(ranked)
    return f"{line}; {zero} scored 0" if zero else line
