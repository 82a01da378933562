"""The local pool: this process and its workers share one task feed; errors stop it and surface here."""

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from segshards.writer.build.pool import run_with_parent
from segshards.writer.process_pool import map_in_order
from tests.mnist_fixtures import ROOT


def slow_task(task: Any) -> tuple[int, int]:
    time.sleep(0.15)
    return task, os.getpid()


def failing_task(task: Any) -> tuple[int, int]:
    if task == 3:
        raise ValueError(f"task {task} failed")
    time.sleep(0.1)
    return task, os.getpid()


def test_every_task_runs_once_here_and_in_a_worker() -> None:
    results = list(run_with_parent(range(12), slow_task, workers=1))  # type: ignore[arg-type]
    assert sorted(task for task, _ in results) == list(range(12))
    pids = {pid for _, pid in results}
    assert os.getpid() in pids and len(pids) == 2


def test_an_error_in_a_task_stops_the_feed_and_is_raised_here() -> None:
    seen: list[int] = []

    def feed() -> Iterator[int]:
        for task in range(40):
            seen.append(task)
            yield task

    with pytest.raises(ValueError, match="task 3 failed"):
        list(run_with_parent(feed(), failing_task, workers=1))  # type: ignore[arg-type]
    assert len(seen) < 40


def write_task(folder: Path, task: int) -> tuple[int, int]:
    time.sleep(0.3)
    (folder / str(task)).write_text("done")
    return task, os.getpid()


def test_a_planner_error_is_raised_once_the_shards_in_flight_are_done(tmp_path: Path) -> None:
    def feed() -> Iterator[int]:
        yield from range(4)
        raise RuntimeError("planner gave up")

    runner = functools.partial(write_task, tmp_path)
    with pytest.raises(RuntimeError, match="planner gave up"):
        list(run_with_parent(feed(), runner, workers=1))  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "3"]


def test_a_pool_that_cannot_start_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    import segshards.writer.build.pool

    def broken(workers: int) -> None:
        raise OSError("cannot start worker processes")

    monkeypatch.setattr(segshards.writer.build.pool, "executor", broken)
    with pytest.raises(OSError, match="cannot start"):
        list(run_with_parent(range(3), slow_task, workers=1))  # type: ignore[arg-type]


def test_a_sigkilled_build_leaves_no_process_and_closes_its_output_within_seconds(tmp_path: Path) -> None:
    """The workers notice their parent is gone; the resource trackers, which wait for them, then end too."""
    out = tmp_path / "killed"
    argv = ["build", "mnist-grid", "--train", "20000", "--val", "0", "--test", "0", "--shard-size", "500"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "segshards", *argv, "--jobs", "2", "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    eof = threading.Event()
    reader = threading.Thread(target=lambda: (proc.stdout.read(), eof.set()), daemon=True)  # type: ignore[union-attr]
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            if any("loky" in " ".join(c.cmdline()) for c in children) and list(out.glob("*.tar")):
                break  # a worker renders beside the build, and shards are being written
            time.sleep(0.05)
        assert proc.poll() is None, f"the build ended (rc {proc.returncode}) before it could be killed"
        reader.start()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [" ".join(p.cmdline())[:100] for p in alive]
        assert len(gone) >= 2  # a worker and at least one resource tracker were there
        assert eof.wait(timeout=2), "a reader of the build's stdout is still blocked"
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.kill()
        proc.wait()


def varied_task(task: int) -> tuple[int, int]:
    time.sleep(0.02 * (task % 3))  # uneven durations: results finish out of order
    return task, os.getpid()


def test_map_in_order_keeps_the_input_order_and_computes_here_and_in_a_worker() -> None:
    results = list(map_in_order(varied_task, range(30), workers=1, ahead=3))
    assert [task for task, _ in results] == list(range(30))
    pids = {pid for _, pid in results}
    assert os.getpid() in pids and len(pids) == 2


def test_map_in_order_without_workers_computes_everything_here() -> None:
    results = list(map_in_order(varied_task, range(5), workers=0, ahead=3))
    assert results == [(task, os.getpid()) for task in range(5)]


def test_map_in_order_raises_a_task_error_in_order_and_stops_taking_items() -> None:
    taken: list[int] = []

    def items() -> Iterator[int]:
        for task in range(60):
            taken.append(task)
            yield task

    got: list[int] = []
    with pytest.raises(ValueError, match="task 3 failed"):
        for task, _ in map_in_order(failing_task, items(), workers=1, ahead=2):
            got.append(task)
    assert got == [0, 1, 2]  # everything before the failing item, nothing after it
    assert len(taken) < 60


def test_map_in_order_closed_early_takes_no_more_items() -> None:
    taken: list[int] = []

    def items() -> Iterator[int]:
        for task in range(100):
            taken.append(task)
            yield task

    with contextlib.closing(map_in_order(slow_task, items(), workers=1, ahead=2)) as results:
        first = [next(results)[0] for _ in range(3)]
    assert first == [0, 1, 2]
    assert len(taken) < 12  # what was yielded, and the few items ahead of it
