"""What the entry point and the parser both need, light enough to import before anything heavy: how many
build processes `--jobs` gives, and the line printed on Ctrl-C."""

INTERRUPTED = "segshards: interrupted; run the same command again to resume"


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
