"""One build per output folder: a second claimant is refused naming the owner; a dead owner's lock is taken."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segshards.writer.errors import OutputError
from segshards.writer.storage.lock import LOCK, claim_folder, release_folder

HOLD = "import sys, time; from pathlib import Path; from segshards.writer.storage.lock import claim_folder\n"


def holder(folder: Path) -> subprocess.Popen[str]:
    """A process that claims `folder`, says so, then sleeps holding it."""
    code = HOLD + f"claim_folder(Path({str(folder)!r})); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_live_owner_keeps_the_folder(tmp_path: Path) -> None:
    proc = holder(tmp_path)
    try:
        message = rf"^--out {tmp_path}: another build is writing this folder \(pid {proc.pid} on host "
        with pytest.raises(OutputError, match=message + rf"{socket.gethostname()}\); wait for it to end$"):
            claim_folder(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_owners_lock_is_taken_over(tmp_path: Path) -> None:
    proc = holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == proc.pid  # left behind, stale
    claim_folder(tmp_path)
    try:
        assert json.loads((tmp_path / LOCK).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        claim_folder(tmp_path)  # re-entrant in the owning process
    finally:
        release_folder(tmp_path)
    assert not (tmp_path / LOCK).exists()


def test_racing_claimants_one_wins(tmp_path: Path) -> None:
    """The winner holds the folder until told to stop, however slowly the others start."""
    stop = tmp_path / "stop"
    code = HOLD + (
        "from segshards.writer.errors import OutputError\n"
        "try:\n    claim_folder(Path(sys.argv[1]))\nexcept OutputError:\n    sys.exit(3)\n"
        "while not Path(sys.argv[2]).exists():\n    time.sleep(0.02)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(stop)]) for _ in range(4)]
    deadline = time.monotonic() + 60
    while sum(p.poll() is not None for p in procs) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.touch()
    assert sorted(p.wait(timeout=60) for p in procs) == [0, 3, 3, 3]


def test_cli_build_into_a_held_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segshards.writer.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    proc = holder(out)
    try:
        assert (
            main(
                ["build", "mnist-foreground", "--out", str(out), "--train", "10", "--val", "0", "--test", "0"]
            )
            == 1
        )
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"another build is writing this folder (pid {proc.pid}" in err
