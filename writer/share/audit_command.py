"""The `segshards audit` command: its options, and the one place its errors become exit codes
(0 done, 1 a group of a kind `--fail-on` names, 2 bad input: one line naming what and where)."""

import argparse
import sys
import time
from pathlib import Path

from segshards.writer.errors import OutputError, SegshardsError
from segshards.writer.process_pool import stop_workers
from segshards.writer.share.audit import MODES, AuditConfig, parse_threshold, run_audit
from segshards.writer.share.audit_report import FAIL_ON, dumps, failed, summary_lines
from segshards.writer.share.audit_sheet import write_sheet
from segshards.writer.share.near_duplicates import THRESHOLD
from segshards.writer.storage.atomic import atomic_write

BAD_INPUT = 2


def add_audit_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register `audit` and its options on the command line's subparsers."""
    a = sub.add_parser(
        "audit",
        help="near-duplicates within a split, leaks across splits, overlap between sets",
        description="Hash every image of one or more sets (a folder or s3://bucket/prefix) and group "
        "near-duplicates: copies re-encoded, resized (0.5-2x), cropped (<= 10%) or with a small label "
        "pasted on. Colour photographs are compared by perceptual codes; other images (MNIST digits look "
        "alike by nature) by their pixel keys only.",
    )
    a.add_argument("sets", nargs="+", metavar="SET", help="set folder or s3://bucket/prefix")
    a.add_argument("--json", metavar="FILE", help="write every group and the counts as JSON")
    a.add_argument("--sheet", metavar="FILE.png", help="draw the largest groups side by side")
    a.add_argument(
        "--threshold",
        default=str(THRESHOLD),
        metavar="D",
        help="bits (of 64) by which a pair's pHash and dHash may each differ (default: %(default)s)",
    )
    a.add_argument(
        "--fail-on", choices=tuple(FAIL_ON), default=None, help="exit 1 when such groups are found"
    )
    a.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="perceptual codes, pixel keys only (exact), or by the schema: perceptual for colour "
        "photographs (default: %(default)s)",
    )
    a.add_argument(
        "--split", action="append", default=[], metavar="NAME", help="audit only this split (repeatable)"
    )
    a.add_argument("--jobs", type=int, default=0, help="processes hashing (0 = all cores)")


def audit_command(args: argparse.Namespace) -> int:
    """Run `segshards audit`; returns its exit status."""
    started = time.perf_counter()
    try:
        config = AuditConfig(
            sets=tuple(args.sets),
            threshold=parse_threshold(args.threshold),
            mode=args.mode,
            splits=tuple(args.split),
            jobs=args.jobs,
        )
        try:
            result = run_audit(config)
        finally:
            stop_workers()
        print("\n".join(summary_lines(result, time.perf_counter() - started)))
        if args.json:
            write_json(Path(args.json), dumps(result))
            print(f"wrote {args.json}")
        if args.sheet:
            drawn = write_sheet(result, Path(args.sheet))
            print(f"wrote {args.sheet}: {drawn} group{'s' * (drawn != 1)}")
    except SegshardsError as exc:
        print(f"segshards: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    unread = sum(s.unreadable for s in result.sets)
    if unread:  # the report stands, but it covers less than the sets: no gate may pass on it
        print(f"segshards: error: {incomplete(unread, args.sets)}", file=sys.stderr)
        return BAD_INPUT
    return 1 if failed(result, args.fail_on) else 0


def incomplete(unread: int, sets: list[str]) -> str:
    """The error of a report that could not read `unread` images of `sets`."""
    images = f"{unread:,} image{'s' * (unread != 1)}"
    return f"{images} could not be read, so this covers less than the set; `segshards verify {sets[0]}` names the damage"


def write_json(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise OutputError(f"--json {path}: cannot write ({exc.strerror or exc})") from None
