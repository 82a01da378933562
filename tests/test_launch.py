"""The entry point starts a build's workers before the heavy imports, and only when a build wants them."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import segshards.writer.build.pool
import segshards.writer.cli.jobs
from segshards.writer.cli import main as cli
from segshards.writer.cli.jobs import INTERRUPTED, capped_jobs, interrupted_line
from segshards.writer.cli.launch import early_workers, option, planned_shards
from segshards.writer.process_pool import executor, sigint_held


def test_option_reads_both_spellings_and_the_last_wins() -> None:
    argv = ["build", "mnist-grid", "--jobs", "3", "--out", "x", "--jobs=5"]
    assert option(argv, "--jobs", "0") == "5"
    assert option(["build"], "--jobs", "0") == "0"
    assert option(["build", "--jobs"], "--jobs", "0") == "0"  # no value: the parser reports it


@pytest.mark.parametrize(
    ("argv", "started"),
    [
        (["build", "mnist-grid", "--out", "x", "--jobs", "3"], 2),
        (["build", "mnist-grid", "--out", "x", "--jobs", "1"], None),
        (["build", "mnist-grid", "--out", "x", "--jobs", "3", "--backend", "dask"], None),
        (["build", "mnist-grid", "--out", "x", "--jobs", "three"], None),
        (["build", "mnist-grid", "--out", "x", "--jobs", "99"], 7),  # capped at the 8 cores
        (
            [
                "build",
                "mnist-grid",
                "--out",
                "x",
                "--jobs",
                "99",
                "--train",
                "5",
                "--val",
                "0",
                "--test",
                "1",
                "--shard-size",
                "100",
            ],
            1,
        ),
        (["build", "--help"], None),
        (["verify", "x"], None),
        ([], None),
    ],
)
def test_early_workers_start_only_for_a_local_parallel_build(
    argv: list[str], started: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segshards.writer.cli.jobs, "cores", lambda: 8)
    calls: list[int] = []
    monkeypatch.setattr(
        segshards.writer.build.pool, "start_workers", lambda n, warm_up: calls.append(n) or []
    )
    early_workers(argv)
    assert calls == ([] if started is None else [started])


def test_abbreviated_options_are_refused_since_the_launcher_reads_them_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segshards.writer.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["build", "mnist-grid", "--out", str(tmp_path / "x"), "--job", "1"])
    assert exit_info.value.code == 2
    assert "unknown option --job: did you mean '--jobs'?" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """The signal lands while the command's imports run (OpenCV, NumPy: well over 50 ms). The timer starts
    once the entry point itself is imported: on a loaded machine that import alone can take 50 ms."""
    child = (
        "import os, signal, sys, threading\n"
        f"sys.argv = ['segshards', 'verify', {str(tmp_path)!r}]\n"
        "from segshards.writer.cli.launch import run\n"
        "threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "segshards: interrupted\n")  # verify has nothing to resume


def test_interrupt_while_parsing_is_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(recipe_name: str | None, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["build", "mnist-grid", "--out", "x"]) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["build", "mnist-grid"], "segshards: interrupted; run the same command again to resume"),
        (["publish", "set", "s3://b/p"], "segshards: interrupted; run the same command again to resume"),
        (["train", "--data", "set"], "segshards: interrupted"),  # before its run has a checkpoint
        (["verify", "set"], "segshards: interrupted"),
        ([], "segshards: interrupted"),
    ],
)
def test_only_commands_that_resume_say_so_on_ctrl_c(argv: list[str], line: str) -> None:
    assert interrupted_line(argv) == line


@pytest.mark.parametrize(
    ("jobs", "shards", "expected"),
    [
        (1, None, (1, None)),
        (8, None, (8, None)),
        (99, None, (8, "--jobs 99: capped at 8 (the cores on this machine)")),
        (6, 3, (3, "--jobs 6: capped at 3 (the shards to write)")),
        (99, 0, (1, "--jobs 99: capped at 1 (the shards to write)")),
        (0, None, (0, None)),  # all cores, no note
        (0, 2, (2, None)),  # all cores, but no more than the shards
    ],
)
def test_capped_jobs(
    jobs: int, shards: int | None, expected: tuple[int, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segshards.writer.cli.jobs, "cores", lambda: 8)
    assert capped_jobs(jobs, shards) == expected


def test_planned_shards_only_when_every_count_is_given() -> None:
    argv = ["build", "mnist-grid", "--train", "250", "--val", "10", "--test", "0", "--shard-size", "100"]
    assert planned_shards(argv) == 4
    assert planned_shards(["build", "mnist-grid", "--train", "250"]) is None
    assert planned_shards(argv[:-2]) is None  # the default shard size is the recipe's
    assert planned_shards([*argv, "--shard-size", "zero"]) is None


def test_a_reader_that_leaves_early_gets_no_traceback(grid_set: Path) -> None:
    """`segshards info --json SET | head -1`: the pipe closes while the command still writes."""
    done = subprocess.run(
        f"{sys.executable} -m segshards info --json {grid_set} | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.stdout, done.stderr) == ("{", "")


def test_a_process_started_while_sigint_is_held_has_it_blocked_from_its_start() -> None:
    """How the build's workers keep out of a terminal's Ctrl-C while they import: the signal mask is
    inherited through fork and exec, before the child runs any Python."""
    probe = [
        sys.executable,
        "-c",
        "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))",
    ]
    with sigint_held():
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    outside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    assert (inside, outside) == ("True\n", "False\n")


def test_a_ctrl_c_while_sigint_is_held_reaches_this_process_once_released() -> None:
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the signal is raised where the block ends
        with sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # held: nothing raised here
        time.sleep(1)  # raised before this ends


def test_build_workers_ignore_sigint() -> None:
    pool = executor(1)
    pid = pool.submit(os.getpid).result(timeout=60)
    ignored = re.search(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())
    blocked = re.search(r"SigBlk:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())
    assert ignored is not None and blocked is not None
    bit = 1 << (signal.SIGINT - 1)
    assert (int(ignored.group(1), 16) & bit, int(blocked.group(1), 16) & bit) == (bit, 0)


@pytest.mark.parametrize("delay_s", [0.3, 0.5, 0.8, 1.5])
def test_ctrl_c_to_the_whole_group_during_a_parallel_build_is_one_line(
    tmp_path: Path, delay_s: float
) -> None:
    """A terminal's Ctrl-C reaches the build and its workers alike; a worker still importing printed its own
    traceback, or "Fatal Python error: init_import_site", beside the build's line."""
    command = [
        str(Path(sys.executable).with_name("segshards")), "build", "mnist-grid", "--out", str(tmp_path / "set"),
        "--train", "40000", "--val", "0", "--test", "0", "--shard-size", "5000", "--jobs", "2",
    ]  # fmt: skip
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # fmt: skip
    time.sleep(delay_s)
    os.killpg(build.pid, signal.SIGINT)
    output, _ = build.communicate(timeout=60)
    if build.returncode == 0:
        pytest.skip(f"the build ended within {delay_s} s, before the signal")
    assert (build.returncode, output) == (130, INTERRUPTED + "\n")
