"""A mix read by two torchrun ranks (gloo, CPU) of two workers each: together exactly the epoch's multiset."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from segshards.loaders import Stream, make_loader

RANK_SCRIPT = Path(__file__).with_name("mix_ddp_rank.py")


def test_torchrun_ranks_deliver_the_mix_epoch_exactly(grid_set: Path, tmp_path: Path) -> None:
    streams = [Stream(grid_set, choose=90), Stream(grid_set, repeat=1.2)]
    whole = Counter(k for b in make_loader(streams, "train", 16, seed=2) for k in b["key"])
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "PYTHONPATH": str(RANK_SCRIPT.parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*argv, str(RANK_SCRIPT), str(grid_set), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen: Counter[str] = Counter()
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(report["batches"]) == report["expected"]
        seen.update(k for b in report["batches"] for k in b)
    assert seen == whole and sum(whole.values()) == 90 + 300
