"""The entry point starts a build's workers before the heavy imports, and only when a build wants them."""

import subprocess
import sys
from pathlib import Path

import pytest
import segshards.writer.local_pool
from segshards.writer import cli
from segshards.writer.launch import INTERRUPTED, early_workers, option


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
        (["build", "--help"], None),
        (["verify", "x"], None),
        ([], None),
    ],
)
def test_early_workers_start_only_for_a_local_parallel_build(
    argv: list[str], started: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(segshards.writer.local_pool, "start_workers", lambda n: calls.append(n) or [])
    early_workers(argv)
    assert calls == ([] if started is None else [started])


def test_abbreviated_options_are_refused_since_the_launcher_reads_them_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segshards.writer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["build", "mnist-grid", "--out", str(tmp_path / "x"), "--job", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --job" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """The signal lands while the command's imports run (OpenCV, NumPy: well over 50 ms)."""
    child = (
        "import os, signal, sys, threading\n"
        "threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        f"sys.argv = ['segshards', 'verify', {str(tmp_path)!r}]\n"
        "from segshards.writer.launch import run\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, INTERRUPTED + "\n")


def test_interrupt_while_parsing_is_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(recipe_name: str | None, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["verify", "x"]) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"
