"""One rank of the torchrun mix test: init gloo, read the mix's epoch with two workers, write its keys."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from segshards.loaders import Stream, make_loader


def main(folder: str, out: str) -> None:
    dist.init_process_group("gloo")
    streams = [Stream(folder, choose=90), Stream(folder, repeat=1.2)]
    loader = make_loader(
        streams, "train", 16, num_workers=2, seed=2
    )  # rank, world_size from torch.distributed
    expected = len(loader)
    keys = [list(b["key"]) for b in loader]
    rank = dist.get_rank()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"expected": expected, "batches": keys}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
