"""Commands the benchmarks time: `segshards` subprocesses, run to completion, failures stopping the bench."""

import subprocess
import sys
import time
from pathlib import Path


def segshards(*args: str) -> list[str]:
    """The command line of `segshards ARGS`, with this interpreter."""
    return [sys.executable, "-m", "segshards", *args]


def grid_build(out: Path, train: int, *options: str) -> list[str]:
    """`segshards build mnist-grid` of `train` samples (no val, no test) into `out`."""
    return segshards(
        "build", "mnist-grid", "--out", str(out), "--train", str(train), "--val", "0", "--test", "0", *options
    )


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of running `cmd`; a failure ends the benchmark with its error output."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(
            f"benchmark command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.decode()[-2000:]}"
        )
    return time.perf_counter() - started
