"""Loader workers forked after the parent has used OpenCV's thread pool still start and finish."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
import cv2
import numpy as np
from segshards.loaders import make_loader

cv2.setNumThreads(2)
cv2.resize(np.zeros((2000, 2000), np.uint8), (1000, 1000))  # brings OpenCV's worker threads to life
loader = make_loader(sys.argv[1], "train", 16, num_workers=2, shuffle=False)
print(sum(len(b["key"]) for b in loader))
print(cv2.getNumThreads())
"""


def test_workers_forked_after_opencv_threads_ran_do_not_hang(grid_set: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(grid_set)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, threads = done.stdout.split()
    assert int(count) == 250
    assert int(threads) == 2  # the parent's own setting is given back after the fork
