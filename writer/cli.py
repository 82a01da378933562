"""The `segshards` command line: build, verify, preview, plus subcommands that other packages register."""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from segshards.writer import __version__
from segshards.writer.build import BACKENDS, BuildConfig, build
from segshards.writer.errors import SegshardsError, StoreError
from segshards.writer.launch import INTERRUPTED
from segshards.writer.local_pool import stop_workers
from segshards.writer.preview import write_preview
from segshards.writer.publish import PublishConfig, publish
from segshards.writer.recipe import SPLITS
from segshards.writer.recipes import get_recipe, recipe_names
from segshards.writer.store import is_remote
from segshards.writer.verify import verify_location

PLUGIN_GROUP = "segshards.commands"


def build_parser(recipe_name: str | None, *, list_recipes: bool = False) -> argparse.ArgumentParser:
    """The argument parser; recipe-specific options are added once the recipe is known, and `build --help`
    lists the recipes when `list_recipes`."""
    # No abbreviated options: `segshards.writer.launch` reads --jobs and --backend before this parser runs.
    parser = argparse.ArgumentParser(
        prog="segshards", description="Segmentation datasets as WebDataset shards.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"segshards {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = recipe_names()
    b = sub.add_parser(
        "build",
        help="render a recipe into shards",
        allow_abbrev=False,
        epilog=recipe_list(names) if list_recipes else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("recipe", choices=names, metavar="RECIPE", help="the recipe to build (listed below)")
    b.add_argument("--out", required=True, help="output folder, or s3://bucket/prefix")
    for split in SPLITS:
        b.add_argument(
            f"--{split}", type=int, default=None, metavar="N", help=f"{split} samples (default: recipe's)"
        )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=0, help="parallel workers (0 = all cores)")
    b.add_argument(
        "--shard-size", type=int, default=None, metavar="K", help="samples per shard (default: the recipe's)"
    )
    b.add_argument("--backend", default="loky", choices=BACKENDS, help="joblib backend (default: loky)")
    b.add_argument(
        "--scheduler", default=None, metavar="tcp://HOST:PORT", help="dask scheduler (with --backend dask)"
    )
    if recipe_name in names:
        get_recipe(recipe_name).add_options(b)
    v = sub.add_parser("verify", help="check a shard set against its manifest")
    v.add_argument("folder", help="set folder, or s3://bucket/prefix")
    u = sub.add_parser("publish", help="upload a finished set to s3://bucket/prefix, manifest last")
    u.add_argument("folder", help="set folder")
    u.add_argument("dest", help="s3://bucket/prefix (endpoint and credentials from the AWS environment)")
    u.add_argument("--jobs", type=int, default=8, help="concurrent uploads")
    p = sub.add_parser("preview", help="contact sheet of samples with masks overlaid")
    p.add_argument("folder")
    p.add_argument("-o", "--output", default="preview.png")
    p.add_argument("--split", default="train")
    p.add_argument("--count", type=int, default=64)
    return parser


def recipe_list(names: list[str]) -> str:
    """The recipes with their one-line summaries (imports each recipe: only for `build` without one)."""
    lines = ["recipes (`segshards build RECIPE --help` shows a recipe's own options):"]
    for name in names:
        try:
            summary = get_recipe(name).summary
        except Exception as exc:  # a broken plugin must not hide the others
            summary = f"(cannot be loaded: {type(exc).__name__})"
        lines.append(f"  {name:<18} {summary}")
    return "\n".join(lines)


def cmd_build(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.recipe)
    defaults = recipe.default_counts()
    counts = {s: getattr(args, s) if getattr(args, s) is not None else defaults[s] for s in SPLITS}
    config = BuildConfig(
        recipe=recipe.name,
        out=args.out if is_remote(args.out) else Path(args.out),
        counts=counts,
        seed=args.seed,
        shard_size=args.shard_size if args.shard_size is not None else recipe.shard_size,
        jobs=args.jobs,
        backend=args.backend,
        options=recipe.spec_config(args),
        scheduler=args.scheduler,
    )
    try:
        manifest = build(recipe, recipe.make_spec(args), config)
    finally:
        stop_workers()  # the command is about to exit: end the idle workers now, not at interpreter exit
    summary = ", ".join(f"{s} {info['count']:,}" for s, info in manifest["splits"].items())
    print(f"{args.out}: {summary} samples; {manifest['duplicates_rejected']:,} duplicates rejected")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problems, shards, samples = verify_location(args.folder)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{args.folder}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.folder}: ok, {shards} shards, {samples:,} samples, keys unique")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        report = publish(PublishConfig(folder=Path(args.folder), dest=args.dest, jobs=args.jobs))
    except StoreError as exc:
        raise StoreError(
            f"{exc}; run the same command again to resume (finished objects are kept, the manifest goes last)"
        ) from exc
    rate = report.bytes_uploaded / report.elapsed_s / 1e6 if report.elapsed_s else 0.0
    print(
        f"{args.dest}: uploaded {len(report.uploaded)} objects ({report.bytes_uploaded / 1e6:,.1f} MB, "
        f"{rate:,.1f} MB/s), {len(report.skipped)} already in place; manifest last"
    )
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    write_preview(Path(args.folder), Path(args.output), split=args.split, count=args.count)
    print(f"wrote {args.output}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": cmd_build,
    "verify": cmd_verify,
    "publish": cmd_publish,
    "preview": cmd_preview,
}


def plugin(name: str) -> Callable[[list[str]], int] | None:
    """A subcommand registered under the `segshards.commands` entry-point group, if any."""
    from importlib.metadata import entry_points  # ~30 ms: only when a command is not ours

    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name == name:
            return ep.load()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status. Only here do errors become exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] not in COMMANDS and (handler := plugin(argv[0])) is not None:
            return handler(argv[1:])
        recipe_name = argv[1] if len(argv) > 1 and argv[0] == "build" else None
        list_recipes = argv[:1] == ["build"] and recipe_name not in recipe_names()
        args = build_parser(recipe_name, list_recipes=list_recipes).parse_args(argv)
        return COMMANDS[args.command](args)
    except SegshardsError as exc:
        print(f"segshards: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point (see `segshards.writer.launch`, which starts a build's workers first)."""
    sys.exit(main())
