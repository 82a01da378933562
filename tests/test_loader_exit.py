"""A script that takes a batch from a loader with workers and ends: it exits cleanly, nothing on stderr."""

import subprocess
import sys
from pathlib import Path

import pytest

# The iteration stays open until the interpreter finalises it at exit (each printed the traceback before).
TAKE_ONE = {
    "loader": "it = iter(loader)\nbatch = next(it)\n",
    "prefetcher": "it = iter(DevicePrefetcher(loader, 'cpu'))\nbatch = next(it)\n",
}


@pytest.mark.parametrize("shape", sorted(TAKE_ONE))
def test_a_script_taking_one_batch_from_workers_exits_without_a_traceback(grid_set: Path, shape: str) -> None:
    script = (
        "from segshards.loaders import DevicePrefetcher, make_loader\n"
        f"loader = make_loader({str(grid_set)!r}, 'train', batch_size=8, num_workers=2)\n"
        + TAKE_ONE[shape]
        + "print(len(batch['key']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "8\n"
    assert done.stderr == ""
