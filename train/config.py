"""The resolved configuration of a training run: what the checkpoint records and a resumed run must keep."""

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from segshards.writer.errors import ConfigError

# Fields a resumed run may change: where the data lives and how this machine runs, not what is learned.
RUNTIME_FIELDS = ("data", "out", "device", "workers", "threads", "checkpoint_every", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs; filled by `segshards.train.cli` from options and the set's schema
    (`schema.training`: the recipe's suggested CPU run)."""

    recipe: str  # the set's recipe, for reports and progress lines only: the task comes from the schema
    data: str
    out: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    samples_per_epoch: int | None  # None: the whole train split per epoch; else a seeded resampled stream
    eval_samples: int | None  # val samples scored after each epoch for curves.png; None: all
    widths: tuple[int, ...]
    stem: int
    size: tuple[int, int] | None  # letterbox images to (H, W); None: as stored (variable-size: the schema's)
    device: str
    precision: str  # "fp32" or "bf16" (autocast)
    seed: int
    workers: int
    threads: int | None
    checkpoint_every: int | None  # optimizer steps between mid-epoch checkpoints; None: epoch ends only
    progress: bool | None = None  # progress bars on stderr; None: only when stderr is a terminal
    mix: list[dict[str, Any]] | None = None  # --data given more than once: [{source, repeat?}], `data` first
    augment: dict[str, Any] | None = None  # Augment options (segshards.train.augmentation); None: letterbox
    class_weights: str = "none"  # loss weight per class: "none", or "auto" (segshards.train.class_weights)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/pickle-free types (tuples as lists), for the checkpoint and metrics.json."""
        out = asdict(self)
        out["widths"] = list(self.widths)
        out["size"] = list(self.size) if self.size is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["widths"] = tuple(values["widths"])
        values["size"] = tuple(values["size"]) if values.get("size") is not None else None
        return cls(**values)


def validate(config: TrainConfig) -> None:
    """Refuse impossible values, naming the option."""
    c = config
    checks = [
        (c.epochs >= 1, f"--epochs {c.epochs}: must be >= 1"),
        (c.batch_size >= 1, f"--batch-size {c.batch_size}: must be >= 1"),
        (c.lr > 0, f"--lr {c.lr}: must be > 0"),
        (c.weight_decay >= 0, f"--weight-decay {c.weight_decay}: must be >= 0"),
        (
            c.samples_per_epoch is None or c.samples_per_epoch >= c.batch_size,
            f"--samples-per-epoch {c.samples_per_epoch}: must be >= --batch-size ({c.batch_size})",
        ),
        (c.eval_samples is None or c.eval_samples >= 1, f"--eval-samples {c.eval_samples}: must be >= 1"),
        (len(c.widths) >= 2 and min(c.widths) >= 1, f"--widths {c.widths}: need two or more positive widths"),
        (c.stem >= 1, f"--stem {c.stem}: must be >= 1"),
        (
            c.size is None or (len(c.size) == 2 and min(c.size) >= 1),
            f"--size {' '.join(map(str, c.size or ()))}: H and W must be positive pixel counts",
        ),
        (c.precision in ("fp32", "bf16"), f"--precision {c.precision!r}: must be fp32 or bf16"),
        (c.seed >= 0, f"--seed {c.seed}: must be >= 0"),
        (c.class_weights in ("none", "auto"), f"--class-weights {c.class_weights!r}: must be none or auto"),
        (c.workers >= 0, f"--workers {c.workers}: must be >= 0"),
        (c.threads is None or c.threads >= 1, f"--threads {c.threads}: must be >= 1"),
        (
            c.checkpoint_every is None or c.checkpoint_every >= 1,
            f"--checkpoint-every {c.checkpoint_every}: must be >= 1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def resolve_device(name: str) -> str:
    """'auto' is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return name


def default_precision(device: str) -> str:
    """bf16 autocast on CUDA; fp32 on CPU, where bf16 autocast measured no faster on small convolutions."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def default_workers(device: str) -> int:
    """Loader processes: none on CPU (decoding is ~40x cheaper than a training step there, and a worker
    would take a core from the model), up to 4 on CUDA."""
    return 0 if torch.device(device).type == "cpu" else min(4, os.cpu_count() or 1)
