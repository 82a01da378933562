"""What the entry point and the parser both need, light enough to import before anything heavy: how many
build processes `--jobs` gives, and the line printed on Ctrl-C."""

from collections.abc import Sequence

INTERRUPTED = "segshards: interrupted; run the same command again to resume"
RESUMABLE = ("build", "publish")  # they go on from what they had finished


def interrupted_line(argv: Sequence[str]) -> str:
    """The line printed on Ctrl-C. Only `build` and `publish` resume; `train` says it when its own run has
    a checkpoint, and an interrupt before that (its imports, its set's checks) has nothing to resume."""
    return INTERRUPTED if argv[:1] and argv[0] in RESUMABLE else "segshards: interrupted"


def cores() -> int:
    """The cores this process may run on."""
    from joblib import cpu_count  # honours CPU affinity and container quotas

    return max(int(cpu_count()), 1)


def capped_jobs(jobs: int, shards: int | None) -> tuple[int, str | None]:
    """`--jobs` capped at the machine's cores and at the shards to write (when known), with a note saying so.

    0 (all cores) is never noted: it becomes the cores, or fewer when there are fewer shards.
    """
    limit, why = cores(), "the cores on this machine"
    if shards is not None and shards < limit:
        limit, why = max(shards, 1), "the shards to write"
    if jobs <= 0:
        return (limit if shards is not None and shards < cores() else jobs), None
    if jobs <= limit:
        return jobs, None
    return limit, f"--jobs {jobs}: capped at {limit} ({why})"
