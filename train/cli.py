"""`segshards train` and `segshards eval` (also `python -m segshards train|eval ...`): options in, exit code out."""

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segshards.loaders import Stream, make_loader
from segshards.train.augmentation import default_augment
from segshards.train.checkpoint import CHECKPOINT, load_checkpoint
from segshards.train.class_weights import saved_weights
from segshards.train.config import TrainConfig, default_precision, default_workers, resolve_device
from segshards.train.dataset import SetInfo, mix_streams, parse_mix, read_set
from segshards.train.errors import ConfigError, SegshardsError
from segshards.train.reports import counted, update_metrics
from segshards.train.tasks import Task, task_differences, task_for


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integers, e.g. 16,32,64"
        ) from None


def count_or_all(text: str) -> int:
    """A sample count; 'all' (or 0) means no limit, stored as 0 and read back as None."""
    if text == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number or 'all'") from None


DATA_HELP = (
    "shard-set folder or http(s)/s3 URL holding manifest.json; more than once to train on a mix, each "
    "SOURCE[:R] taking R times its train split per epoch (the first set gives val and the classes)"
)
CLASS_MAP_HELP = (
    "SOURCE=FILE: read the --data set SOURCE's classes through FILE, a JSON object of its class name -> "
    "a class name of the mix (the first set's), or null to ignore those pixels (255); once per set"
)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segshards train",
        description="Train a small CNN on a shard set. The task (segmentation, or classification + circle) "
        "comes from the set's sample schema; options left out take the CPU run its schema suggests "
        "(or, with --resume, the checkpoint's settings).",
    )
    p.add_argument("recipe", nargs="?", help="recipe (default: the one in the set's manifest)")
    p.add_argument("--data", required=True, action="append", help=DATA_HELP)
    add_data_options(p)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.json, curves.png ...")
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per step; every batch is full, so each epoch leaves out the last, short batch of each "
        "loader worker (a note says how many samples)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (AdamW)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument(
        "--samples-per-epoch",
        type=count_or_all,
        metavar="N|all",
        help="train samples per epoch, drawn as a seeded stream (default: recipe's)",
    )
    p.add_argument("--eval-samples", type=count_or_all, metavar="N|all", help="val samples scored per epoch")
    p.add_argument("--widths", type=int_list, metavar="W1,W2,...", help="channel widths per level")
    p.add_argument("--stem", type=int, help="U-Net pixel-unshuffle factor (2: first level at half size)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="letterbox images to H x W (default: as stored; sets of varying sizes: the size their manifest "
        "suggests, e.g. 320 320 for COCO); sides must be divisible by the model's stride",
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="loader processes (default: 0 on CPU, 4 on CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every STEPS steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-augment", action="store_true", help="photo sets: letterbox only, no Augment")
    p.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="stop after N steps of this invocation, checkpointed (continue with --resume)",
    )
    add_progress(p)
    return p


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """What a run reads besides --data: class maps of a mix's sets and the loss weight of each class."""
    parser.add_argument(
        "--class-map", action="append", default=[], metavar="SOURCE=FILE", help=CLASS_MAP_HELP
    )
    parser.add_argument(
        "--class-weights",
        choices=("none", "auto"),
        help="segmentation loss weight per class: none (default: every pixel counts alike), or auto "
        "(median-frequency balancing of the train split's pixel counts from the manifest)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )


# What `schema.training` may suggest, with its type, and the fallback when a recipe suggests nothing.
HINTS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "epochs": (int, 1),
    "batch_size": (int, 64),
    "lr": ((int, float), 3e-3),
    "samples_per_epoch": ((int, type(None)), None),
    "widths": (list, None),  # None: the task's default widths
    "stem": (int, 1),
}
RUN_DEFAULTS: dict[str, Any] = {
    "weight_decay": 1e-4,
    "eval_samples": 2000,
    "device": "auto",
    "precision": "auto",
    "seed": 0,
    "workers": None,
    "threads": None,
    "checkpoint_every": None,
    "class_weights": "none",
}
OPTIONS = (
    *("epochs", "batch_size", "lr", "weight_decay", "samples_per_epoch", "eval_samples", "widths", "stem"),
    *("size", "device", "precision", "seed", "workers", "threads", "checkpoint_every", "class_weights"),
)


def schema_defaults(info: SetInfo) -> dict[str, Any]:
    """The CPU run the set's schema suggests (`schema.training`), checked, with fallbacks for what it omits."""
    hints = info.schema.training
    out: dict[str, Any] = {}
    for key, (kind, fallback) in HINTS.items():
        value = hints.get(key, fallback)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ConfigError(f"--data {info.data}: manifest schema.training.{key} is {str(value)[:40]!r}")
        out[key] = value
    if out["widths"] is None:
        out["widths"] = task_for(info.schema).default_widths
    elif not all(isinstance(w, int) and not isinstance(w, bool) for w in out["widths"]):
        raise ConfigError(f"--data {info.data}: manifest schema.training.widths must be integers")
    return out | {"size": info.training_size(), "augment": default_augment(info)}


def resolve_config(args: argparse.Namespace, info: SetInfo, saved: dict[str, Any] | None) -> TrainConfig:
    """Options given > the checkpoint's settings (with --resume) > the set's schema (`schema.training`)."""
    if args.recipe and args.recipe != info.recipe:
        raise ConfigError(f"recipe {args.recipe!r} given, but {info.data} holds a {info.recipe!r} set")
    base = dict(saved) if saved is not None else schema_defaults(info) | RUN_DEFAULTS
    given = {k: v for k, v in vars(args).items() if v is not None}
    base.update({key: given[key] for key in OPTIONS if key in given})
    for key in ("samples_per_epoch", "eval_samples"):
        base[key] = base[key] or None  # 0 = all
    base["device"] = resolve_device(base["device"])
    if base["precision"] == "auto":
        base["precision"] = default_precision(base["device"])
    if base["workers"] is None:
        base["workers"] = default_workers(base["device"])
    data, mix = parse_mix(args.data, args.class_map)
    if mix is not None and args.samples_per_epoch:
        raise ConfigError(
            "--samples-per-epoch: not with a mix (--data given twice, or --class-map): weight the sets with :R"
        )
    if mix is not None:
        base["samples_per_epoch"] = (
            None  # a mix's epoch is what its streams take (the schema's hint is one set's)
        )
    base.update(recipe=info.recipe, data=data, mix=mix, out=args.out, progress=args.progress)
    if args.no_augment:
        base["augment"] = None
    return TrainConfig.from_dict(base)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`segshards train`: train a small CNN on a shard set, report metrics; returns the exit status."""
    from segshards.train.loop import train  # after argument parsing: --help stays fast

    args = train_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        checkpoint = Path(args.out) / CHECKPOINT
        saved = load_checkpoint(checkpoint)["config"] if args.resume and checkpoint.exists() else None
        config = resolve_config(args, read_set(parse_mix(args.data)[0]), saved)
        started = time.perf_counter()
        result = train(config, resume=args.resume, stop_after_steps=args.stop_after_steps)
    except SegshardsError as exc:
        print(f"segshards train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"segshards train: interrupted; {after_interrupt(Path(args.out))}", file=sys.stderr)
        return 130
    if not result.finished:
        print(f"{args.out}: stopped after {counted(len(result.step_losses), 'step')}; continue with --resume")
        return 0
    assert result.metrics is not None
    print(f"{args.out}: {summary(result.metrics, 'val')} ({time.perf_counter() - started:.0f} s)")
    return 0


def after_interrupt(out: Path) -> str:
    """What a user can do after Ctrl-C: resume from the checkpoint if one was written, else start over."""
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        return f"the same command with --resume continues from the last checkpoint, {checkpoint}"
    return (
        f"stopped before the first checkpoint, so there is nothing to resume ({checkpoint} does not exist); "
        "run the same command again to start over (--checkpoint-every N also saves every N steps)"
    )


def summary(report: dict[str, Any], split: str) -> str:
    """One line of a split's headline metrics: the task's primary ones (`metrics.json`'s `primary`)."""
    metrics = report["splits"].get(split)
    if not metrics:
        return f"no {split} split"
    keys = report.get("primary") or ("loss",)
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float))
    return f"{split} {shown} ({counted(metrics['samples'], 'sample')})"


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segshards eval", description="Evaluate a run's checkpoint on a split.")
    p.add_argument("run", metavar="RUN_DIR", help="a folder written by `segshards train`")
    p.add_argument(
        "--data",
        action="append",
        help="shard set; more than once: a mix, every sample of each set's split scored once (default: "
        "what the run trained on: its set, or its mix with the class maps it recorded)",
    )
    p.add_argument("--class-map", action="append", default=[], metavar="SOURCE=FILE", help=CLASS_MAP_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    add_progress(p)
    return p


def eval_data(args: argparse.Namespace, trained: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
    """The set `eval` scores, or the mix (each sample of each set's split once): `--data` as given, else the
    run's own data; a source the run mixed with a class map keeps it unless `--class-map` gives another."""
    if args.data:
        data, mix = parse_mix(args.data, args.class_map)
    elif args.class_map:
        raise ConfigError("--class-map: give the --data sets it is for")
    else:
        data, mix = trained["data"], trained.get("mix")
    weighted = next((s for s in mix or () if "repeat" in s), None)
    if args.data and weighted is not None:
        raise ConfigError(
            f"--data {weighted['source']}:{weighted['repeat']:g}: eval scores every sample of each set "
            "once; give the source without :R"
        )
    recorded = {s["source"]: s["class_map"] for s in trained.get("mix") or () if s.get("class_map")}
    streams = [
        {"source": s["source"]}
        | ({"class_map": m} if (m := s.get("class_map", recorded.get(s["source"]))) else {})
        for s in mix or [{"source": data}]
    ]
    if len(streams) == 1 and "class_map" not in streams[0]:
        return data, None
    return data, streams


def fitting_task(info: SetInfo, saved: dict[str, Any], split: str) -> Task:
    """The task of the set `eval` scores, once the set is shown to fit the run: the same recipe, a schema
    the model fits (else one line per field that differs), samples in `split`."""
    if info.recipe != saved["recipe"]:
        raise ConfigError(
            f"--data {info.data}: holds a {info.recipe!r} set, the run was trained on {saved['recipe']!r}"
        )
    task = task_for(info.schema, palette=info.palette)
    differences = task_differences(saved["task"], task.describe())
    if differences:
        raise ConfigError(
            f"--data {info.data}: its schema does not fit the run's model:\n"
            + "\n".join(f"  {line}" for line in differences)
        )
    if not info.has_split(split):
        raise ConfigError(
            f"--split {split}: {info.data} has no samples in it ({', '.join(info.split_counts)})"
        )
    return task


def eval_main(argv: Sequence[str] | None = None) -> int:
    """`segshards eval`: scores RUN_DIR/checkpoint.pt on a split, merges it into metrics.json."""
    from segshards.train.evaluate import evaluate, place, plot_predictions

    args = eval_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    run = Path(args.run)
    try:
        saved = load_checkpoint(run / CHECKPOINT)
        data, mix = eval_data(args, saved["config"])
        info = read_set(data)
        task = fitting_task(info, saved, args.split)
        task.set_class_weights(saved_weights(saved, task))  # the loss reported is the one trained on
        config = eval_config(args, saved["config"], data)
        model = task.build_model(config.widths, config.stem)
        model.load_state_dict(saved["model"])
        model = place(model, config.device)
        source = mix_streams(mix) if mix else data
        started = time.perf_counter()
        metrics = evaluate(
            model,
            task,
            eval_loader(source, args.split, args.batch_size, config.workers, config.size),
            config,
            desc=args.split,
        )
        wall = time.perf_counter() - started
        evaluation = {"data": data, "checkpoint_step": saved["step"], "wall_s": round(wall, 1)}
        if mix:
            evaluation["mix"] = mix
        report = update_metrics(run, splits={args.split: metrics | {"evaluation": evaluation}})
        plot_predictions(
            model,
            task,
            eval_loader(source, args.split, 16, 0, config.size),
            config,
            run / f"predictions-{args.split}.png",
            title=f"{info.recipe}: {args.split}",
        )
    except SegshardsError as exc:
        print(f"segshards eval: error: {exc}", file=sys.stderr)
        return 1
    print(f"{run}: {summary(report, args.split)} ({wall:.0f} s)")
    return 0


def eval_config(args: argparse.Namespace, trained: dict[str, Any], data: str) -> TrainConfig:
    """The run's config with this machine's device, workers and threads (torch's thread count set)."""
    device = resolve_device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return TrainConfig.from_dict(
        trained
        | {
            "data": data,
            "device": device,
            "precision": default_precision(device),
            "workers": workers,
            "threads": args.threads,
            "progress": args.progress,
        }
    )


def eval_loader(source: str | list[Stream], split: str, batch_size: int, workers: int, size: Any) -> Any:
    """The split in order: one set, or a mix's streams, each sample once."""
    return make_loader(source, split, batch_size, num_workers=workers, shuffle=False, size=size)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m segshards {train,eval} ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "eval": eval_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m segshards {train,eval} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
