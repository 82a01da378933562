"""`--backend dask`: a real scheduler and two workers on loopback produce the bytes of a local build,
also when a worker is killed in the middle of the build."""

import json
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

import segshards.writer.build.dask_backend
import segshards.writer.build.job
import segshards.writer.build.partition_plan
from segshards.writer.cli.main import main
from tests.mnist_fixtures import comparable, error_lines, folder_bytes, tiny_source
from tests.moto_fixture import S3, free_port, s3_fixture, wait_listening  # noqa: F401

distributed = pytest.importorskip("distributed")
DASK = str(Path(sys.executable).with_name("dask"))


class Cluster:
    """`dask scheduler` and `dask worker` subprocesses, each in its own process group; always stopped."""

    def __init__(self, workers: int, cwd: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.procs.append(
                self._start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port)], cwd)
            )
            wait_listening(self.port, self.procs[0])
            for _ in range(workers):
                self.procs.append(
                    self._start(["worker", self.address, "--nworkers", "1", "--nthreads", "1"], cwd)
                )
            with distributed.Client(self.address, timeout=30) as client:
                client.wait_for_workers(workers, timeout=60)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [DASK, *args, "--no-dashboard"],
            cwd=cwd,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.procs[1:]

    def kill_busy_worker(self, client: Any) -> int:
        """SIGKILL the nanny and process of a worker that is running tasks (`client`, connected already: the
        few tasks in flight can finish while a new one connects); returns how many it held."""
        deadline = time.monotonic() + 5
        while True:
            processing = {a: len(t) for a, t in client.processing().items()}
            busy = max(processing, key=lambda a: processing[a])
            if processing[busy] or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        pid = client.run(os.getpid, workers=[busy])[busy]
        nanny = psutil.Process(pid).ppid()
        victim = next(p for p in self.workers if p.pid == nanny)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        return processing[busy]

    def kill_worker_process(self, pid: int) -> None:
        """SIGKILL the worker whose process is `pid`, with its nanny."""
        nanny = psutil.Process(pid).ppid()
        victim = next(p for p in self.workers if p.pid == nanny)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()

    def alive_workers(self) -> int:
        with distributed.Client(self.address, timeout=10) as client:
            deadline = time.monotonic() + 10
            while len(client.scheduler_info()["workers"]) > sum(p.poll() is None for p in self.workers):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            return len(client.scheduler_info()["workers"])

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(2, tmp_path_factory.mktemp("dask-cwd"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("tiny") / "src")


def grid_args(source: Path, train: int = 600) -> list[str]:
    return ["mnist-grid", "--source", str(source), "--train", str(train), "--val", "40", "--test", "40"]


def local_build(tmp_path: Path, args: list[str]) -> Path:
    out = tmp_path / "local"
    assert main(["build", *args, "--out", str(out), "--jobs", "1"]) == 0
    return out


def test_dask_build_matches_local_build(
    cluster: Cluster,
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = [*grid_args(source), "--shard-size", "100"]
    planned = segshards.writer.build.job.plan_tasks_partitioned
    partitioned: list[str] = []

    def spy(*a: Any, **kw: Any) -> Iterator[Any]:
        partitioned.append(kw["scheduler"])
        return planned(*a, **kw)

    monkeypatch.setattr(segshards.writer.build.job, "plan_tasks_partitioned", spy)
    monkeypatch.chdir(tmp_path)  # a relative --out: the workers, started elsewhere, must still find it
    assert (
        main(["build", *args, "--out", "dask-out", "--backend", "dask", "--scheduler", cluster.address]) == 0
    )
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    assert captured.out.startswith("dask-out: train 600, val 40, test 40 samples; ")
    assert folder_bytes(tmp_path / "dask-out") == folder_bytes(local_build(tmp_path, args))
    assert not (tmp_path / "dask-out" / ".segshards-work").exists()
    assert partitioned == [cluster.address], "the dedup index was partitioned over the workers"


def test_worker_killed_mid_build_still_gives_identical_bytes(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Cluster(2, tmp_path)
    monitor = distributed.Client(own.address, timeout=10)
    try:
        run_on_dask = segshards.writer.build.dask_backend.run_on_dask
        killed: list[int] = []
        # On a thread, so the build goes on submitting tasks: blocked, its few in flight could all finish
        # before a busy worker is found (at most two a worker thread are in flight).
        killer = threading.Thread(target=lambda: killed.append(own.kill_busy_worker(monitor)))

        def kill_after_first_result(*a: Any) -> Iterator[Any]:
            results = run_on_dask(*a)
            yield next(results)  # the build is under way: more tasks queued and running
            killer.start()
            yield from results

        monkeypatch.setattr(segshards.writer.build.job, "run_on_dask", kill_after_first_result)
        args = [*grid_args(source, 3000), "--shard-size", "50"]
        out = tmp_path / "dask-out"
        assert main(["build", *args, "--out", str(out), "--backend", "dask", "--scheduler", own.address]) == 0
        killer.join(timeout=30)
        assert len(killed) == 1 and killed[0] > 0, "the killed worker was running tasks"
        assert own.alive_workers() == 1
    finally:
        monitor.close()
        own.close()
    capsys.readouterr()
    assert folder_bytes(out) == folder_bytes(local_build(tmp_path, args))


def test_worker_killed_mid_plan_rebuilds_its_partitions_and_gives_identical_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker holding partition 0 dies between two rounds of planning: the plan is made again on the
    worker left, from the seed, and the set (duplicates rejected across partitions) is a local build's."""
    source = tiny_source(tmp_path / "dups", duplicates=[("train", 0, "train", 1), ("train", 2, "train", 3)])
    own = Cluster(2, tmp_path)
    try:
        probe = segshards.writer.build.partition_plan.PartitionedIndex.probe
        rounds: list[int] = []

        def kill_on_third_round(index: Any, words: Any) -> Any:
            rounds.append(len(words))
            if len(rounds) == 3:
                pid = index.actors[0].stats().result()[2]
                own.kill_worker_process(pid)
            return probe(index, words)

        monkeypatch.setattr(
            segshards.writer.build.partition_plan.PartitionedIndex, "probe", kill_on_third_round
        )
        monkeypatch.setattr(segshards.writer.build.partition_plan, "ROUND", 2048)  # train: several rounds
        args = [*grid_args(source, 12_000), "--shard-size", "500"]
        out = tmp_path / "dask-out"
        assert main(["build", *args, "--out", str(out), "--backend", "dask", "--scheduler", own.address]) == 0
        assert own.alive_workers() == 1
    finally:
        own.close()
    err = capsys.readouterr().err
    assert "segshards: warning: a worker holding part of the plan was lost" in err
    assert len(rounds) > 6, "the plan was made again after the third round"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["duplicates_rejected"] > 0
    assert folder_bytes(out) == folder_bytes(local_build(tmp_path, args))


def test_dask_build_to_s3(s3: S3, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Workers upload straight to the store with their own AWS settings and read the source themselves."""
    args = [*grid_args(source, 200), "--shard-size", "100"]
    own = Cluster(1, tmp_path)  # started after the fixture exported the AWS settings: workers inherit them
    try:
        assert (
            main(["build", *args, "--out", s3.url("grid"), "--backend", "dask", "--scheduler", own.address])
            == 0
        )
    finally:
        own.close()
    capsys.readouterr()
    remote = comparable(
        {k: v for k, v in s3.objects("grid").items() if k != "build-log.json"}, s3.url("grid")
    )
    assert remote == folder_bytes(local_build(tmp_path, args))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--backend", "dask"],
            "--backend dask needs --scheduler tcp://HOST:PORT (the dask scheduler's address)",
        ),
        (
            ["--backend", "dask", "--scheduler", "127.0.0.1:8786"],
            "--scheduler 127.0.0.1:8786: expected tcp://HOST:PORT",
        ),
        (
            ["--scheduler", "tcp://127.0.0.1:8786"],
            "--scheduler tcp://127.0.0.1:8786: only used with --backend dask",
        ),
    ],
)
def test_scheduler_options_are_checked(
    extra: list[str], message: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", *grid_args(source), "--out", str(tmp_path / "o"), *extra]) == 1
    assert error_lines(capsys.readouterr().err) == [f"segshards: error: {message}"]
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segshards.writer.build.dask_backend, "CONNECT_TIMEOUT_S", 1)
    address = f"tcp://127.0.0.1:{free_port()}"
    assert (
        main(
            [
                "build",
                *grid_args(source),
                "--out",
                str(tmp_path / "o"),
                "--backend",
                "dask",
                "--scheduler",
                address,
            ]
        )
        == 1
    )
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        f"segshards: error: --scheduler {address}: cannot connect ("
    )
