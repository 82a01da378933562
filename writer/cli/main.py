"""The `segshards` command line: build, verify, preview, plus subcommands that other packages register."""

import argparse
import ast
import contextlib
import difflib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from segshards.writer import __version__
from segshards.writer.build.checks import check_supply
from segshards.writer.build.job import BACKENDS, BuildConfig, build
from segshards.writer.build.near_dup_codes import MODES as NEAR_MODES
from segshards.writer.build.near_dup_codes import with_walk_check
from segshards.writer.cli.jobs import capped_jobs, interrupted_line
from segshards.writer.cli.suggest import check_recipe, parse_with_hints
from segshards.writer.errors import SegshardsError, StorageError
from segshards.writer.format.manifest import RUN_LOG, SPLITS
from segshards.writer.process_pool import stop_workers
from segshards.writer.recipes.contract import Recipe
from segshards.writer.recipes.registry import get_recipe, recipe_names
from segshards.writer.share.audit_command import add_audit_parser, audit_command
from segshards.writer.share.info import info_lines, set_info
from segshards.writer.share.preview import SIZE, write_preview
from segshards.writer.share.publish import PublishConfig, credentials_problem, publish
from segshards.writer.share.stats_command import add_stats_parser, stats_command
from segshards.writer.share.verify import verify_location
from segshards.writer.storage.store import is_remote, open_store

PLUGIN_GROUP = "segshards.commands"


def build_parser(recipe_name: str | None, *, list_recipes: bool = False) -> argparse.ArgumentParser:
    """The argument parser; recipe-specific options are added once the recipe is known, and `build --help`
    lists the recipes when `list_recipes`."""
    # No abbreviated options: `segshards.writer.cli.launch` reads --jobs and --backend before this parser runs.
    parser = argparse.ArgumentParser(
        prog="segshards", description="Segmentation datasets as WebDataset shards.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"segshards {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    add_build_parser(sub, recipe_name, list_recipes=list_recipes)
    v = sub.add_parser("verify", help="check a shard set against its manifest")
    v.add_argument("folder", help="set folder, s3://bucket/prefix or http(s):// URL")
    i = sub.add_parser(
        "info",
        help="what a set holds: splits, classes, schema, size, location",
        description="Print a set's splits, classes, sample schema, size and location, read from its manifest.",
    )
    i.add_argument("set", metavar="SET", help="set folder, s3://bucket/prefix or http(s):// URL")
    i.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    add_audit_parser(sub)
    add_stats_parser(sub)
    u = sub.add_parser("publish", help="upload a finished set to s3://bucket/prefix, manifest last")
    u.add_argument("folder", help="set folder")
    u.add_argument("dest", help="s3://bucket/prefix (endpoint and credentials from the AWS environment)")
    u.add_argument("--jobs", type=int, default=8, help="concurrent uploads")
    add_preview_parser(sub)
    for name, summary in plugin_summaries().items():
        if name not in COMMAND_NAMES:  # a plugin cannot replace a built-in command
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def add_build_parser(sub: Any, recipe_name: str | None, *, list_recipes: bool) -> None:
    """`build` and its options, the recipe's own among them once the recipe is known (its defaults shown)."""
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
    recipe = get_recipe(recipe_name) if recipe_name in names else None
    for split in SPLITS:
        b.add_argument(
            f"--{split}",
            type=int,
            default=None,
            metavar="N",
            help=f"{split} samples ({count_default(recipe, split)})",
        )
    b.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    b.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="parallel workers (0 = all cores; capped at the cores and the shards)",
    )
    size_default = f"{recipe.shard_size:,}" if recipe is not None else "the recipe's"
    b.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="K",
        help=f"samples per shard (default: {size_default})",
    )
    b.add_argument("--backend", default="loky", choices=BACKENDS, help="joblib backend (default: loky)")
    b.add_argument(
        "--scheduler", default=None, metavar="tcp://HOST:PORT", help="dask scheduler (with --backend dask)"
    )
    b.add_argument(
        "--near-duplicates",
        choices=NEAR_MODES,
        default=None,
        help="perceptual near-duplicates (re-encoded, resized, cropped copies): off; report (count them per "
        "split and across splits in the manifest and the card, choosing the same samples as off); reject "
        "(leave out any near an image already chosen, the first in the seeded order winning, in every "
        "split) (default: report for colour images, off for grey ones such as MNIST)",
    )
    if recipe is not None:
        recipe.add_options(b)
    b.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )


def add_preview_parser(sub: Any) -> None:
    """`preview` and its options."""
    p = sub.add_parser(
        "preview",
        help="contact sheet of samples: image | mask | overlay, with a legend of class colours",
        description="Draw the first samples of a split into one image: each sample framed as image | mask | "
        "overlay (the mask in class colours), four samples to a row, above a legend naming each class drawn.",
    )
    p.add_argument("folder", help="set folder (holding manifest.json), s3://bucket/prefix or http(s):// URL")
    p.add_argument(
        "-o",
        "--output",
        default="preview.png",
        help="image to write: .png, or .jpg/.jpeg for JPEG (default: %(default)s)",
    )
    p.add_argument("--split", default="train", help="split to draw from (default: %(default)s)")
    p.add_argument(
        "--count",
        type=int,
        default=64,
        metavar="N",
        help="samples to draw, at least 1 (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=SIZE,
        metavar="PX",
        help="pixels per panel; each sample's image is scaled to fit (default: %(default)s)",
    )


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


def count_default(recipe: Recipe | None, split: str) -> str:
    """The help's default for a split's count: the recipe's number, or what the recipe does without one."""
    if recipe is None:
        return "default: the recipe's; `segshards build RECIPE --help` shows it"
    n = recipe.default_counts().get(split)
    if n is not None:
        return f"default: {n:,}"
    if getattr(recipe, "supply", None) is not None:
        return "default: all the source holds for it"
    return "default: decided from the source, see the recipe's options below"


def shard_count(counts: dict[str, int | None], shard_size: int) -> int | None:
    """How many shards the counts make, when every count is known in advance."""
    if None in counts.values() or shard_size < 1:
        return None
    return sum(-(-n // shard_size) for n in counts.values() if n is not None and n > 0)


def cmd_build(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.recipe)
    defaults = recipe.default_counts()
    counts = {s: getattr(args, s) if getattr(args, s) is not None else defaults[s] for s in SPLITS}
    shard_size = args.shard_size if args.shard_size is not None else recipe.shard_size
    jobs, note = capped_jobs(args.jobs, shard_count(counts, shard_size))
    if note:
        print(f"segshards: note: {note}", file=sys.stderr)
    config = BuildConfig(
        recipe=recipe.name,
        out=args.out if is_remote(args.out) else Path(args.out),
        counts=counts,
        seed=args.seed,
        shard_size=shard_size,
        jobs=jobs,
        backend=args.backend,
        options=recipe.spec_config(args),
        scheduler=args.scheduler,
        progress=args.progress,
        near_duplicates=args.near_duplicates,
    )
    manifest: dict[str, Any] | None = None
    try:
        # The recipe sees --jobs as capped: a walk on its own processes (coco-semantic) uses the same pool.
        spec = recipe.make_spec(argparse.Namespace(**{**vars(args), "jobs": jobs}))
        spec = with_walk_check(spec, args.near_duplicates)  # before anything walks the source
        # Every count the source cannot give, in one message, before the build claims the folder.
        check_supply(recipe, spec, counts, defaulted=[s for s in SPLITS if getattr(args, s) is None])
        manifest = build(recipe, spec, config)
    finally:
        # The command is about to exit: end the idle workers now, not at interpreter exit. Ctrl-C while
        # they stop, once the set is complete, leaves them to end as orphans (`watch_parent`); the set is
        # reported as built, not as a build to resume.
        with contextlib.suppress(KeyboardInterrupt) if manifest is not None else contextlib.nullcontext():
            stop_workers()
    print(build_summary(args.out, manifest, run_log(config.out)))
    return 0


def run_log(out: Path | str) -> dict[str, Any]:
    """The build's run log (shards written and reused); empty when it cannot be read back."""
    try:
        log = json.loads(open_store(out).read(RUN_LOG))
    except (SegshardsError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def build_summary(out: str, manifest: dict[str, Any], log: dict[str, Any]) -> str:
    """The line a build ends with: samples per split, duplicates, samples skipped, shards reused."""
    parts = [
        ", ".join(f"{s} {info['count']:,}" for s, info in manifest["splits"].items()) + " samples",
        f"{manifest['duplicates_rejected']:,} duplicates rejected",
    ]
    skipped = manifest.get("source", {}).get("skipped", {}).get("counts")
    if skipped or manifest.get("config", {}).get("on_error") == "skip":
        reasons = ", ".join(f"{r} {n:,}" for r, n in (skipped or {}).items())
        parts.append(
            f"{sum((skipped or {}).values()):,} skipped (--on-error skip"
            + (f": {reasons})" if reasons else ")")
        )
    written, reused = log.get("shards_written"), log.get("shards_reused")
    if isinstance(written, int) and isinstance(reused, int):
        shards = f"{written:,} shard{'s' * (written != 1)} written"
        parts.append(shards + (f", {reused:,} reused from an earlier run (resumed)" if reused else ""))
    return f"{out}: " + "; ".join(parts)


def cmd_verify(args: argparse.Namespace) -> int:
    problems, shards, samples = verify_location(args.folder)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{args.folder}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    unlisted = " (over http(s) only the files the manifest lists are read: a web server lists no folder)"
    web = args.folder.startswith(("http://", "https://"))
    print(f"{args.folder}: ok, {shards} shards, {samples:,} samples, keys unique{unlisted if web else ''}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = set_info(args.set)
    if args.json:
        print(json.dumps(info.summary(), indent=2, sort_keys=True))
    else:
        print("\n".join(info_lines(info)))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        report = publish(PublishConfig(folder=Path(args.folder), dest=args.dest, jobs=args.jobs))
    except StorageError as exc:
        if (problem := credentials_problem(exc, args.dest)) is not None:
            raise StorageError(problem) from exc
        if exc.missing:  # no such bucket: running the command again cannot help
            raise
        raise StorageError(
            f"{exc}; run the same command again to resume (finished objects are kept, the manifest goes last)"
        ) from exc
    rate = report.bytes_uploaded / report.elapsed_s / 1e6 if report.elapsed_s else 0.0
    print(
        f"{args.dest}: uploaded {len(report.uploaded)} objects ({report.bytes_uploaded / 1e6:,.1f} MB, "
        f"{rate:,.1f} MB/s), {len(report.skipped)} already in place; manifest last"
    )
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    drawn = write_preview(args.folder, Path(args.output), split=args.split, count=args.count, size=args.size)
    more = "" if drawn == args.count else f" (the {args.split} split holds only {drawn})"
    print(f"wrote {args.output}: {drawn} {args.split} sample{'s' * (drawn != 1)}{more}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": cmd_build,
    "verify": cmd_verify,
    "info": cmd_info,
    "publish": cmd_publish,
    "preview": cmd_preview,
    "audit": audit_command,
    "stats": stats_command,
}


COMMAND_NAMES = tuple(COMMANDS)


def plugin_entry_points() -> dict[str, Any]:
    """Subcommands registered under the `segshards.commands` entry-point group, by name."""
    from importlib.metadata import entry_points  # ~30 ms: only when a command is not ours, or for help

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def plugin(name: str) -> Callable[[list[str]], int] | None:
    """A subcommand registered under the `segshards.commands` entry-point group, if any."""
    ep = plugin_entry_points().get(name)
    return None if ep is None else ep.load()


def plugin_summaries() -> dict[str, str]:
    """Each plugin command's one-line summary: its function's docstring, read without importing the plugin
    (which may import torch, or be broken)."""
    return {name: docstring_summary(ep.value, name) for name, ep in sorted(plugin_entry_points().items())}


def docstring_summary(reference: str, name: str) -> str:
    """First line of the docstring of `module:function`, without a leading "`segshards NAME`:" and a
    trailing "; returns ..."."""
    module, _, function = reference.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin).read_text() if spec and spec.origin else ""
        tree = ast.parse(source)
    except (ImportError, OSError, SyntaxError, ValueError):
        return f"(from {module}; cannot be read)"
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    doc = (ast.get_docstring(node) or "") if node else ""
    line = doc.strip().splitlines()[0] if doc.strip() else f"(from {module})"
    return line.removeprefix(f"`segshards {name}`:").split("; returns")[0].strip().rstrip(".")


def output_folder(args: argparse.Namespace) -> Path | None:
    """The local folder a command writes into, if any (to remove it again if the command fails)."""
    if args.command == "build" and not is_remote(args.out):
        return Path(args.out)
    if args.command == "publish" and not is_remote(args.dest):
        return Path(args.dest)
    if args.command == "preview":
        return Path(args.output).parent
    return None


@contextlib.contextmanager
def no_empty_folder_left(folder: Path | None) -> Iterator[None]:
    """Remove the folders the command created (from `folder` up) when it fails and leaves them empty."""
    first_existing = folder
    while (
        first_existing is not None and not first_existing.exists() and first_existing.parent != first_existing
    ):
        first_existing = first_existing.parent
    try:
        yield
    except BaseException:
        created = folder
        while created is not None and created != first_existing and created.is_dir():
            try:
                created.rmdir()  # only if empty
            except OSError:
                break
            created = created.parent
        raise


def unknown_command(name: str) -> str:
    """The error for a command that is neither ours nor a plugin's: the nearest name, and all of them."""
    names = [*COMMANDS, *plugin_entry_points()]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown command {name!r}{hint} (commands: {', '.join(names)}; `segshards --help` says what each does)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status. Only here do errors become exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and (handler := plugin(argv[0])):
            return handler(argv[1:])
        recipe_name = argv[1] if len(argv) > 1 and argv[0] == "build" else None
        list_recipes = argv[:1] == ["build"] and recipe_name not in recipe_names()
        parser = build_parser(recipe_name, list_recipes=list_recipes)
        if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:  # nor a plugin's (see above)
            parser.error(unknown_command(argv[0]))
        check_recipe(parser, argv, recipe_names())
        args = parse_with_hints(parser, argv)
        with no_empty_folder_left(output_folder(args)):
            return COMMANDS[args.command](args)
    except SegshardsError as exc:
        print(f"segshards: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted_line(argv), file=sys.stderr)
        return 130
