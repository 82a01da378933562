"""Shard tasks whose output is an object store: render in a scratch folder, upload atomically, resume."""

import hashlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import joblib
import joblib.parallel

from writer.shards import ShardResult, ShardTask, run_shard_task
from writer.store import open_store


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


LokyBackend: Any = joblib.parallel.BACKENDS["loky"]


class AwsEnvLokyBackend(LokyBackend):  # type: ignore[misc]
    """loky workers that see this process's current AWS_* settings.

    joblib keeps its loky worker pool alive between calls; a pool started before the settings changed
    (a long-lived process, a notebook, a test session) would upload with stale ones. loky starts a new
    pool when the environment it is given differs from the running pool's, so give it the settings.
    """

    def _prepare_worker_env(self, n_jobs: int) -> dict[str, str]:
        env: dict[str, str] = super()._prepare_worker_env(n_jobs)
        env.update((k, v) for k, v in sorted(os.environ.items()) if k.startswith("AWS_"))
        return env


LOKY_AWS = "segshards-loky-aws"
joblib.register_parallel_backend(LOKY_AWS, AwsEnvLokyBackend)


def remote_backend(backend: str) -> str:
    """The joblib backend to use for `backend` when workers upload to an object store."""
    return LOKY_AWS if backend == "loky" else backend
