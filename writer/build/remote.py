"""Shard tasks whose output is an object store: render in a scratch folder, upload atomically, resume."""

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path

from segshards.writer.build.shards import ShardResult, ShardTask, run_shard_task
from segshards.writer.storage.store import open_store


def run_remote_task(task: ShardTask, present: frozenset[str]) -> ShardResult:
    """Produce the task's shard under the URL `task.out_dir`.

    An object already there (listed in `present`) is reused when its bytes match the sha256 recorded at
    upload and it holds exactly the planned keys; otherwise the shard is rendered into a local scratch
    folder and uploaded in one request that only becomes visible when complete.
    """
    store = open_store(task.out_dir)
    with tempfile.TemporaryDirectory(prefix="segshards-shard-") as scratch:
        path = Path(scratch) / task.name
        if task.name in present:
            info = store.head(task.name)
            if info is not None and info.sha256 is not None:
                data = store.read(task.name)
                if hashlib.sha256(data).hexdigest() == info.sha256:
                    path.write_bytes(data)  # run_shard_task scans it and reuses it if the keys match
        result = run_shard_task(replace(task, out_dir=scratch))
        if not result.reused:
            store.upload(task.name, path, result.sha256)
    return result
