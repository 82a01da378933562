"""The `segshards` entry point: a build's worker processes start spawning before the heavy imports.

Spawning a worker and importing OpenCV and NumPy in it takes about 0.4 s; started first, it overlaps
this process's own imports and preparation instead of following them. The options are read here only
as far as needed to know whether workers will be wanted; the real parser checks them all afterwards.
"""

import os
import signal
import sys
from collections.abc import Sequence

from segshards.writer.cli.jobs import capped_jobs, interrupted_line
from segshards.writer.format.splits import SPLITS


def option(argv: Sequence[str], name: str, default: str) -> str:
    """The value of `--name V` or `--name=V` in `argv` (the last one wins), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def planned_shards(argv: Sequence[str]) -> int | None:
    """The shards a build command line asks for, when it gives every split's count and the shard size
    (else None: the default shard size is the recipe's, which this early step does not import)."""
    try:
        counts = [int(option(argv, f"--{split}", "")) for split in SPLITS]
        size = int(option(argv, "--shard-size", ""))
    except ValueError:
        return None
    if size < 1 or min(counts) < 0:
        return None
    return sum(-(-n // size) for n in counts)


def early_workers(argv: Sequence[str]) -> None:
    """Start the local workers of a `build` command line now (no-op for anything else)."""
    if not argv or argv[0] != "build" or "-h" in argv or "--help" in argv:
        return
    if option(argv, "--backend", "loky") != "loky":
        return
    try:
        jobs = int(option(argv, "--jobs", "0"))
    except ValueError:
        return  # the parser reports it
    if jobs < 0:
        return  # the build reports it
    from segshards.writer.build.pool import start_build_workers

    start_build_workers(capped_jobs(jobs, planned_shards(argv))[0])  # the build prints the note


def run() -> None:
    """Console-script entry point. Ctrl-C at any moment, the imports included, is one line and exit 130."""
    interrupts = watch_interrupts()
    try:
        early_workers(sys.argv[1:])
        from segshards.writer.cli.main import main  # after the workers start: it imports OpenCV and NumPy

        status = main()
    except KeyboardInterrupt:
        print(interrupted_line(sys.argv[1:]), file=sys.stderr)
        status = 130
    except ImportError:
        if not interrupts:
            raise
        # Ctrl-C inside a C extension's own import (NumPy's import of datetime) comes out as an ImportError.
        print(interrupted_line(sys.argv[1:]), file=sys.stderr)
        status = 130
    except BrokenPipeError:  # the reader left (`segshards info --json SET | head`): no traceback
        quiet_stdout()
        status = 1
    sys.exit(status)


def watch_interrupts() -> list[int]:
    """SIGINT raises KeyboardInterrupt as by default, and is also noted in the list returned, so an
    interrupt that an import turned into another error is still known for what it was."""
    seen: list[int] = []

    def interrupted(signum: int, frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    return seen


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not raise on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
