"""The `segshards stats` command: its options, and where its errors become exit codes (0 done, 2 bad
input: one line naming what and where)."""

import argparse
import sys
from pathlib import Path

from segshards.writer.errors import OutputError, SegshardsError
from segshards.writer.process_pool import stop_workers
from segshards.writer.share.audit_command import incomplete
from segshards.writer.share.stats import dumps, set_stats, summary_lines
from segshards.writer.storage.atomic import atomic_write

BAD_INPUT = 2


def add_stats_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register `stats` and its options on the command line's subparsers."""
    s = sub.add_parser(
        "stats",
        help="class statistics per split, as PNG charts with class names",
        description="Read every mask of a set (a folder, s3://bucket/prefix or http(s):// URL) and chart, per "
        "split: pixel share per class, images holding each class, how much of an image each class covers, "
        "and instances per image where the samples' JSON counts them (coco-semantic).",
    )
    s.add_argument("set", metavar="SET", help="set folder, s3://bucket/prefix or http(s):// URL")
    s.add_argument("-o", "--output", default="stats.png", help="charts to write, .png (default: %(default)s)")
    s.add_argument("--json", metavar="FILE", help="write the statistics as JSON too")
    s.add_argument(
        "--split", action="append", default=[], metavar="NAME", help="only this split (repeatable)"
    )
    s.add_argument("--jobs", type=int, default=0, help="processes reading (0 = all cores)")


def stats_command(args: argparse.Namespace) -> int:
    """Run `segshards stats`; returns its exit status."""
    try:
        if Path(args.output).suffix.lower() != ".png":
            raise OutputError(f"-o {args.output}: must name a .png file")
        try:
            stats = set_stats(args.set, splits=tuple(args.split), jobs=args.jobs)
        finally:
            stop_workers()
        print("\n".join(summary_lines(stats)))
        # matplotlib (a few hundred ms to import) only once there is a chart to draw, not at every command
        from segshards.writer.share.stats_chart import write_chart  # noqa: PLC0415

        write_chart(stats, Path(args.output))
        print(f"wrote {args.output}")
        if args.json:
            try:
                atomic_write(Path(args.json), dumps(stats))
            except OSError as exc:
                raise OutputError(f"--json {args.json}: cannot write ({exc.strerror or exc})") from None
            print(f"wrote {args.json}")
    except SegshardsError as exc:
        print(f"segshards: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    unread = sum(split.unreadable for split in stats.splits.values())
    if unread:  # the figures stand, but they cover less than the set
        print(f"segshards: error: {incomplete(unread, [args.set])}", file=sys.stderr)
        return BAD_INPUT
    return 0
